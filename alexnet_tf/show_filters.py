"""Figure 3: the conv1 kernels as one image, each tower's kernels in a block of their own.

    python -m alexnet_tf.show_filters --model_dir=MODEL_DIR --output=filters.png [--columns=16]

MODEL_DIR is a training run's model directory or its SavedModel. Every kernel is
contrast-stretched on its own, its smallest weight to 0 and its largest to 255 in every
channel together, so that its colours keep their balance. Tower 0's kernels (the
paper's GPU 1, Figure 3's top half) come first, each tower's block below the one before,
apart by a wider gap; `--columns` wraps a tower's kernels into rows of that many.
"""

import math
import sys

import numpy as np

from alexnet_tf import inference

SPACING = 1  # background pixels around and between kernels, before zooming
TOWER_GAP = 4  # background rows between two towers' blocks, before zooming
BACKGROUND = 255
DISPLAY_SIDE = 48  # the default zoom makes a kernel about this many pixels wide


def stretch(kernel):
    """uint8 [k, k, 3]: one kernel's weights mapped linearly onto 0..255."""
    kernel = np.asarray(kernel, np.float64)
    low, high = kernel.min(), kernel.max()
    scaled = (kernel - low) / (high - low) if high > low else np.zeros_like(kernel)
    return np.round(scaled * 255).astype(np.uint8)


def tile_origin(index, columns, side):
    """(y, x) of the index-th kernel in its tower's block, before zooming."""
    row, column = divmod(index, columns)
    return SPACING + row * (side + SPACING), SPACING + column * (side + SPACING)


def filter_figure(tower_kernels, columns=None, zoom=None):
    """uint8 [H, W, 3]: the kernels of each tower ([k, k, 3, filters] arrays, tower 0
    first) stretched and laid out in rows of `columns` (default: a tower per row), each
    pixel enlarged to zoom x zoom (default: about DISPLAY_SIDE pixels a kernel)."""
    side = tower_kernels[0].shape[0]
    columns = columns or max(k.shape[-1] for k in tower_kernels)
    zoom = zoom or max(1, DISPLAY_SIDE // side)
    width = SPACING + columns * (side + SPACING)
    blocks = []
    for kernels in tower_kernels:
        count = kernels.shape[-1]
        block = np.full((SPACING + math.ceil(count / columns) * (side + SPACING), width, 3),
                        BACKGROUND, np.uint8)
        for index in range(count):
            y, x = tile_origin(index, columns, side)
            block[y:y + side, x:x + side] = stretch(kernels[..., index])
        blocks.extend([block, np.full((TOWER_GAP, width, 3), BACKGROUND, np.uint8)])
    figure = np.concatenate(blocks[:-1])
    return figure.repeat(zoom, axis=0).repeat(zoom, axis=1)


def main(values):
    """The command, given its flags' values by name."""
    try:
        model = inference.load_model(values["model_dir"])
        figure = filter_figure(model.conv1_kernels, values["columns"], values["zoom"])
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
                                     f"{DISPLAY_SIDE} pixels a kernel).", lower_bound=1),
    }
    flags.adopt_module_key_flags(inference)  # --help lists the shared flags too
    inference.run_command(main, holders)
