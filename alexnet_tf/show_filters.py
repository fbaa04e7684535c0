"""Figure 3: the conv1 kernels as one image, each tower's kernels in a block of their own.

    python -m alexnet_tf.show_filters --model_dir=MODEL_DIR --output=filters.png [--columns=16]

MODEL_DIR is a training run's model directory or its SavedModel. The figure is
`figures.filter_figure`'s; `--columns` wraps a tower's kernels into rows of that many.
"""

import sys

from alexnet_tf import command, figures, inference


def main(values):
    """The command, given its flags' values by name."""
    try:
        model = inference.load_model(values["model_dir"])
        figure = figures.filter_figure(model.conv1_kernels, values["columns"], values["zoom"])
        inference.write_png(figure, values["output"])
    except inference.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    counts = " + ".join(str(k.shape[-1]) for k in model.conv1_kernels)
    side = model.conv1_kernels[0].shape[0]
    print(f"wrote {values['output']}: {counts} conv1 kernels of {side}x{side}x3, "
          f"{figure.shape[1]}x{figure.shape[0]} pixels")
    return figure


if __name__ == "__main__":
    from absl import flags

    holders = {
        **inference.define_model_flags(flags, "The PNG to write.", output_required=True),
        "columns": flags.DEFINE_integer("columns", None, "Kernels per row (default: each "
                                        "tower's in one row).", lower_bound=1),
        "zoom": flags.DEFINE_integer("zoom", None, "Pixels per weight (default: about "
                                     f"{figures.DISPLAY_SIDE} pixels a kernel).", lower_bound=1),
    }
    flags.adopt_module_key_flags(inference)  # --help lists the shared flags too
    command.run(main, holders)
