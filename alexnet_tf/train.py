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

import os
import sys

# Reuse large CPU buffers instead of mapping fresh pages for every tensor
# (see BENCHMARKS.md); must be set before TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags  # noqa: E402

from alexnet_tf import config as config_lib  # noqa: E402

EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: a temporary failure, try again


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]} (flags are --name=value).")
    try:
        config, workdir = config_lib.config_from_flag_values(flags.FLAGS)
    except ValueError as e:
        sys.exit(f"error: {e}")
    from alexnet_tf import distribute

    errors = config_lib.validate(config, os.environ.get(distribute.TF_CONFIG))
    if errors:
        sys.exit("error: " + "\n       ".join(errors))

    from alexnet_tf import trainer

    try:
        trainer.train_and_evaluate(config, workdir)
    except trainer.Interrupted as e:
        print(f"{e}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except trainer.TrainingError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    config_lib.define_flags()
    app.run(main)
