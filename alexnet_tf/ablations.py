"""The paper's design choices, each switched off in turn, on the small variant, with seeds.

    python -m alexnet_tf.ablations --data_dir=data/fashion_mnist --workdir=runs/ablations \
        --recipe=configs/ablations.flags

Trains the small variant with a recipe (--recipe; by default configs/small.flags,
the README's main run; configs/ablations.flags is the same with a shorter budget) as
the baseline and once per changed setting (--ablations; by default all but tanh,
which alexnet_tf.figure1 compares with its own learning rate), each with every seed
of --seeds, each in its own model directory (WORKDIR/ARM/seedS). Every run's learning-rate
schedule looks at its validation split only; the table reports the test split's
error with ten crops (the data's test/ folder; its val/ where there is none). For
each pair it gives each arm's mean and standard deviation over the seeds, the
difference of the means (the paper's choice minus the changed setting), its
standard error sqrt(s1^2 / n1 + s2^2 / n2), and whether the difference exceeds twice
that: a difference within it is not evidence either way. The paper's figure stands
beside each pair:

| pair | paper (its choice minus the other) |
|---|---|
| ReLU vs tanh | about 6x fewer steps to 25% training error (Figure 1; see alexnet_tf.figure1) |
| LRN on vs off | -1.4 top-1 / -1.2 top-5 points (Section 3.3) |
| overlapping vs 2x2 pooling | -0.4 / -0.3 points (Section 3.4) |
| two towers vs one tower with half the kernels | -1.7 / -1.2 points (Section 3.2) |
| PCA lighting on vs off | over 1 point top-1 (Section 4.1) |

The dataset statistics are computed once into WORKDIR/dataset_stats.npz and shared.
Rerunning the command skips finished runs and resumes the others from their last
checkpoint. The table is written to --output (Markdown) and JSON beside it; each
run's settings and final errors are also logged for TensorBoard's HParams plugin, so
that `tensorboard --logdir WORKDIR` sets the arms side by side.
"""

import dataclasses
import json
import math
import os
import statistics
import sys
import time

# As in train.py: reuse large CPU buffers (see BENCHMARKS.md); must be set before
# TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from alexnet_tf import config as config_lib  # noqa: E402
from alexnet_tf import files, model_dir, preprocessing, trainer  # noqa: E402

DEFAULT_RECIPE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "small.flags"
)
BASELINE = "baseline"
STATS_FILE = "dataset_stats.npz"
HPARAMS_DIR = "hparams"
# A difference of the means beyond this many of its standard errors counts as more
# than the seeds' spread.
SIGNIFICANT_STANDARD_ERRORS = 2.0


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One of the paper's choices and the setting it was compared with.

    paper_top1 and paper_top5 are the reported changes of error in percentage points,
    the paper's choice minus the other; paper_text is what the table shows.
    """

    name: str
    pair: str
    changed_setting: str
    overrides: dict
    paper_text: str
    paper_top1: float = None
    paper_top5: float = None


ABLATIONS = (
    Ablation("tanh", "ReLU vs tanh", "tanh", {"activation": "tanh"},
             "about 6x fewer steps to 25% training error (Figure 1; alexnet_tf.figure1)"),
    Ablation("no_lrn", "LRN on vs off", "no LRN", {"lrn": False},
             "-1.4 / -1.2 (Section 3.3)", -1.4, -1.2),
    Ablation("no_overlap", "overlapping vs non-overlapping pooling", "2x2 pools, stride 2",
             {"overlapping_pooling": False}, "-0.4 / -0.3 (Section 3.4)", -0.4, -0.3),
    Ablation("one_tower", "two towers vs one tower, half the kernels", "one tower",
             {"towers": 1}, "-1.7 / -1.2 (Section 3.2)", -1.7, -1.2),
    Ablation("no_lighting", "PCA lighting on vs off", "no lighting",
             {"lighting": preprocessing.LIGHTING_NONE}, "over 1% top-1 (Section 4.1)", -1.0),
)
ABLATIONS_BY_NAME = {a.name: a for a in ABLATIONS}
# ReLU against tanh is Figure 1's question, answered with each activation's own
# learning rate (alexnet_tf.figure1); at the ReLU recipe's rate a tanh arm measures
# that rate, so it runs only when asked for.
DEFAULT_ABLATIONS = tuple(a.name for a in ABLATIONS if a.name != "tanh")


def config_from_flagfile(path, **overrides):
    """A training flagfile (the training command's flags) as a TrainConfig, with
    `overrides` applied after it."""
    return config_lib.load_flagfile(path, **overrides)[0]


def _read_metrics(run_dir):
    return model_dir.read_metrics(run_dir)


def _finished(metrics):
    return metrics is not None and metrics.get("finished", False)


def train_once(config, run_dir):
    """Trains unless run_dir holds a finished run of this config; returns its
    metrics.json. A finished run of other settings (another recipe or budget) is
    refused, never mixed into the table."""
    metrics = _read_metrics(run_dir)
    if _finished(metrics):
        previous = model_dir.load_config(run_dir)
        differences = [f"--{name}={getattr(previous, name)!r} there, {getattr(config, name)!r} now"
                       for name in config_lib.FIELDS
                       if getattr(previous, name) != getattr(config, name)]
        if differences:
            raise trainer.TrainingError(
                f"{run_dir} holds a finished run with other settings ({'; '.join(differences)});"
                " use another --workdir for these settings.")
        print(f"{run_dir}: finished earlier, skipped.")
        return metrics
    trainer.train_and_evaluate(config, run_dir)
    return _read_metrics(run_dir)


def shared_stats_file(config, workdir):
    """Computes the training set's statistics once into workdir for every run."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, STATS_FILE)
    if not os.path.exists(path):
        source = trainer.load_source(config)
        stats_config = dataclasses.replace(config, stats_file="")
        trainer.load_or_compute_stats(stats_config, source, workdir)
    return path


def run_dir_of(workdir, arm, seed):
    return os.path.join(workdir, arm, f"seed{seed}")


def run_ablations(base_config, workdir, ablations=ABLATIONS, seeds=(0,)):
    """Trains the baseline and each ablation with each seed under workdir, a seed at a
    time (so a table of every arm exists after the first). Returns {(arm, seed): run_dir}."""
    base_config = dataclasses.replace(
        base_config, stats_file=shared_stats_file(base_config, workdir))
    arms = [(BASELINE, {})] + [(a.name, a.overrides) for a in ablations]
    run_dirs = {}
    for seed in seeds:
        for name, overrides in arms:
            run_dir = run_dir_of(workdir, name, seed)
            started = time.perf_counter()
            config = dataclasses.replace(base_config, seed=seed, **overrides)
            metrics = train_once(config, run_dir)
            log_hparams(run_dir, name, config, metrics)
            errors = _errors(metrics)
            print(f"{name} seed {seed}: {errors['split']} top-1 error {errors['top1']:.4f}, "
                  f"top-5 {errors['top5']:.4f} ({time.perf_counter() - started:.0f} s)")
            run_dirs[(name, seed)] = run_dir
    return run_dirs


# ----------------------------------------------------------------------------------
# TensorBoard's HParams plugin.

HPARAM_FIELDS = ("activation", "lrn", "overlapping_pooling", "towers", "lighting", "seed",
                 "learning_rate", "train_steps", "batch_size")


def log_hparams(run_dir, arm, config, metrics):
    """The run's settings and final errors as an HParams session in run_dir/hparams."""
    from tensorboard.plugins.hparams import api as hp

    errors = _errors(metrics)
    writer = tf.summary.create_file_writer(os.path.join(run_dir, HPARAMS_DIR))
    with writer.as_default():
        hp.hparams({"arm": arm, **{name: getattr(config, name) for name in HPARAM_FIELDS}},
                   trial_id=os.path.relpath(run_dir, os.path.dirname(os.path.dirname(run_dir))))
        for k in (1, 5):
            tf.summary.scalar(f"final/top{k}_error", errors[f"top{k}"], step=metrics["step"])
    writer.close()


def log_hparams_config(workdir):
    """The experiment's columns for the HParams plugin, at the root of workdir."""
    from tensorboard.plugins.hparams import api as hp

    with tf.summary.create_file_writer(workdir).as_default():
        hp.hparams_config(
            hparams=[hp.HParam("arm")] + [hp.HParam(name) for name in HPARAM_FIELDS],
            metrics=[hp.Metric(f"final/top{k}_error", group=HPARAMS_DIR) for k in (1, 5)])


# ----------------------------------------------------------------------------------
# The table.


def _errors(metrics):
    """The run's reported errors: the test split's with ten crops where it has them."""
    split = "test" if "test" in metrics else "validation"
    values = metrics[split]
    prefix = "ten_crop_" if "ten_crop_top1_error" in values else ""
    return {"split": split, "crops": "ten crops" if prefix else "centre crop",
            "top1": values[f"{prefix}top1_error"], "top5": values[f"{prefix}top5_error"]}


def _percent(error):
    return 100.0 * error


def arm_statistics(values):
    """(mean, sample standard deviation or 0 for one value, count)."""
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0,
            len(values))


def compare(ours, theirs):
    """The difference of two arms' means, its standard error, and whether it exceeds
    SIGNIFICANT_STANDARD_ERRORS of them (never with fewer than two seeds each)."""
    (m1, s1, n1), (m2, s2, n2) = arm_statistics(ours), arm_statistics(theirs)
    standard_error = math.sqrt(s1 * s1 / n1 + s2 * s2 / n2)
    exceeds = (n1 > 1 and n2 > 1
               and abs(m1 - m2) > SIGNIFICANT_STANDARD_ERRORS * standard_error)
    return m1 - m2, standard_error, exceeds


def table_rows(run_dirs, ablations, seeds):
    """One row per pair and measure; errors in percent."""
    def errors(arm, k):
        return [_percent(_errors(_read_metrics(run_dirs[(arm, s)]))[f"top{k}"]) for s in seeds]

    first = _errors(_read_metrics(run_dirs[(BASELINE, seeds[0])]))
    rows = []
    for ablation in ablations:
        for k, paper in ((1, ablation.paper_top1), (5, ablation.paper_top5)):
            ours, theirs = errors(BASELINE, k), errors(ablation.name, k)
            difference, standard_error, exceeds = compare(ours, theirs)
            rows.append(dict(
                pair=ablation.pair, changed_setting=ablation.changed_setting,
                measure=f"{first['split']} top-{k} error (%, {first['crops']})",
                paper_choice=arm_statistics(ours), changed=arm_statistics(theirs),
                paper_choice_runs=ours, changed_runs=theirs,
                difference=difference, standard_error=standard_error, exceeds_spread=exceeds,
                paper_reports=ablation.paper_text if k == 1 else "", paper_difference=paper))
    return rows


def format_markdown(rows, budget):
    lines = [
        budget, "",
        "| pair | measure | paper's choice, mean ± sd | changed, mean ± sd | difference "
        "(paper's choice - changed) ± its standard error | beyond the seeds' spread? | "
        "paper reports |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        (m1, s1, _), (m2, s2, _) = row["paper_choice"], row["changed"]
        lines.append(
            f"| {row['pair']} ({row['changed_setting']}) | {row['measure']} | "
            f"{m1:.2f} ± {s1:.2f} | {m2:.2f} ± {s2:.2f} | {row['difference']:+.2f} ± "
            f"{row['standard_error']:.2f} | {'yes' if row['exceeds_spread'] else 'no'} | "
            f"{row['paper_reports']} |")
    return "\n".join(lines) + "\n"


def describe_budget(base_config, run_dirs, seeds, recipe=DEFAULT_RECIPE):
    baseline = _read_metrics(run_dirs[(BASELINE, seeds[0])])
    errors = _errors(baseline)
    return (
        f"Per run: the {os.path.basename(recipe)} recipe, {baseline['step']} steps at "
        f"batch {base_config.batch_size}, the schedule deciding on the validation split; "
        f"errors on the {errors['split']} split ({baseline[errors['split']]['examples']} "
        f"images, {errors['crops']}); seeds {', '.join(str(s) for s in seeds)}; "
        f"model_size={base_config.model_size}. Errors in percent, mean ± sample standard "
        "deviation over the seeds; a difference is beyond the seeds' spread when it exceeds "
        f"{SIGNIFICANT_STANDARD_ERRORS:g} standard errors."
    )


def write_table(rows, budget, output):
    """Writes the Markdown table to output and the rows as JSON beside it."""
    markdown = format_markdown(rows, budget)
    files.write_text_atomically(output, markdown)
    files.write_text_atomically(os.path.splitext(output)[0] + ".json",
                                json.dumps({"budget": budget, "rows": rows}, indent=2))
    return markdown


def _define_flags():
    from absl import flags

    flags.DEFINE_string("data_dir", None, "The image folder (train/, val/, test/).",
                        required=True)
    flags.DEFINE_string("workdir", None, "One model directory per run goes here; rerunning "
                        "skips finished runs and resumes the others.", required=True)
    flags.DEFINE_string("output", None, "The table as Markdown (and JSON beside it, .json). "
                        "Default: WORKDIR/table.md.")
    flags.DEFINE_string("recipe", DEFAULT_RECIPE, "The training flagfile every run starts from.")
    flags.DEFINE_list("ablations", list(DEFAULT_ABLATIONS), "Which changed settings to run "
                      f"(known: {', '.join(ABLATIONS_BY_NAME)}).")
    flags.DEFINE_list("seeds", ["0", "1", "2"], "The seeds of every arm.")
    flags.DEFINE_integer("train_steps", 0, "Steps per run (0: the recipe's budget).")


def main(argv):
    from absl import flags

    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]} (flags are --name=value).")
    values = flags.FLAGS
    unknown = [name for name in values.ablations if name not in ABLATIONS_BY_NAME]
    if unknown:
        sys.exit(f"error: unknown --ablations {unknown}; known: {list(ABLATIONS_BY_NAME)}.")
    ablations = [ABLATIONS_BY_NAME[name] for name in values.ablations]
    started = time.perf_counter()
    try:
        seeds = [int(seed) for seed in values.seeds]
        overrides = dict(data_dir=values.data_dir, export=False, eval_ten_crop=True)
        if values.train_steps:
            overrides["train_steps"] = values.train_steps
        base_config = config_from_flagfile(values.recipe, **overrides)
        log_hparams_config(values.workdir)
        run_dirs = run_ablations(base_config, values.workdir, ablations, seeds)
    except trainer.Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(75)
    except (OSError, ValueError, trainer.TrainingError) as e:
        sys.exit(f"error: {e}")
    rows = table_rows(run_dirs, ablations, seeds)
    output = values.output or os.path.join(values.workdir, "table.md")
    print(write_table(rows, describe_budget(base_config, run_dirs, seeds, values.recipe), output))
    print(f"Wrote {output} and its .json; {time.perf_counter() - started:.0f} s in all.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
