"""Trains AlexNet with the paper's recipe, evaluates it, and exports a SavedModel.

    python -m alexnet_tf.train --flagfile=configs/paper.flags [--flag=value ...]

Flags after the flagfile override it; they are the fields of `config.TrainConfig`.
The settings in effect are written to MODEL_DIR/flags.txt (a flagfile that reruns
the run) and MODEL_DIR/config.json; rerunning with the same --model_dir resumes from
the newest intact checkpoint. TensorBoard: `tensorboard --logdir MODEL_DIR`.

Exit status: 0 when the run finished (trained, evaluated and exported); 1 for an
error, with a one-line message; 75 (EX_TEMPFAIL) when SIGTERM or Ctrl-C stopped it
after saving a checkpoint: the run is resumable by rerunning the same command.
"""

import time

STARTED = time.perf_counter()  # the training command's wall time counts from here

import dataclasses  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

# Reuse large CPU buffers instead of mapping fresh pages for every tensor
# (see BENCHMARKS.md); must be set before TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
# TensorFlow's C++ log from warnings on: the run's own messages say what matters.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags, logging  # noqa: E402

from alexnet_tf import config as config_lib, settings  # noqa: E402



def network_of_init_source(config):
    """With --init_from, the network settings not given on the command line (nor in a
    flagfile) are the source model's."""
    if not config.init_from:
        return config
    from alexnet_tf import model_dir

    try:
        source = model_dir.load_config(config.init_from)
    except model_dir.TrainingError as e:
        raise ValueError(f"--init_from: {e}") from e
    inherited = {name: getattr(source, name) for name in config_lib.NETWORK_FIELDS
                 if not flags.FLAGS[name].present}
    return dataclasses.replace(config, **inherited)


def main(values):
    """The training command; its flags are the schema's (`config.define_flags`), read
    from absl's FLAGS, so `values` holds nothing."""
    del values
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines (saving, assets)
    try:
        config, workdir = config_lib.config_from_flag_values(flags.FLAGS)
        config = network_of_init_source(config)
    except ValueError as e:
        sys.exit(f"error: {e}")
    from alexnet_tf import trainer

    try:
        trainer.train_and_evaluate(config, workdir, started=STARTED)
    except trainer.Interrupted as e:
        print(f"{e}", file=sys.stderr)
        sys.exit(settings.EXIT_INTERRUPTED)
    except trainer.TrainingError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from alexnet_tf import command

    config_lib.define_flags()
    command.run(main)
