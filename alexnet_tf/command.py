"""How every command of the package is written, so that flags, `--help`, errors and
exit statuses behave the same in all of them:

    def main(values):              # the flags' values by name
        ...
        sys.exit(f"error: {e}")    # a problem the user can fix: one line, status 1

    if __name__ == "__main__":
        command.run(main, {"output": flags.DEFINE_string("output", None, "...")})

`run` parses the command line with `config.parse_flags` (an unknown flag, a bad value
or an unreadable flagfile is one line and exit status 1) and refuses positional
arguments unless the command takes them. A command whose run was interrupted and can
be resumed exits with settings.EXIT_INTERRUPTED (75). The training command's own flags
come from its schema (`config.define_flags`); they are read the same way.
"""

import sys

from absl import app

from alexnet_tf import config as config_lib
from alexnet_tf import settings


def data_flags(flags, default_help="", split_default=None, required=False):
    """--dataset, --data_dir and --manual_dir (and --split with split_default) as
    {name: FlagHolder}; default_help says what an absent one means."""
    suffix = f"; {default_help}" if default_help else ""
    holders = {
        "dataset": flags.DEFINE_enum(
            "dataset", None, list(settings.DATASETS), f"The data source{suffix}.",
            required=required),
        "data_dir": flags.DEFINE_string(
            "data_dir", None, f"TFDS data directory, or the image folder root{suffix}.",
            required=required),
        "manual_dir": flags.DEFINE_string(
            "manual_dir", None, "imagenet2012: where ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar are."),
    }
    if split_default:
        holders["split"] = flags.DEFINE_enum("split", split_default, list(settings.SPLITS),
                                             "Which split.")
    return holders


def run(main, holders=None, positional=None):
    """Runs main(values) under absl: `values` holds the FlagHolders' values by name and,
    if `positional` names it, the positional arguments; otherwise these are refused.
    What main returns is for callers in Python; the exit status is 0."""

    def run_main(argv):
        values = {name: holder.value for name, holder in (holders or {}).items()}
        if positional:
            values[positional] = argv[1:]
        elif len(argv) > 1:
            sys.exit(f"error: unexpected arguments {argv[1:]} (flags are --name=value).")
        main(values)

    app.run(run_main, flags_parser=config_lib.parse_flags)
