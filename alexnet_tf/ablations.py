"""The paper's design choices, each switched off in turn, on the small variant.

    python -m alexnet_tf.ablations --data_dir=data/fashion_mnist --workdir=runs/ablations \\
        --output=runs/ablations/table.md

Trains the small variant with the recipe of configs/small.flags once as the
baseline (the paper's choices) and once per changed setting, each in its own
model directory under --workdir, and prints one table that sets each pair
beside the figure the paper reports:

| pair | measure | paper |
|---|---|---|
| ReLU vs tanh | training steps to 25% training error, and the training error at the end | about 6x fewer steps with ReLU (Figure 1) |
| LRN on vs off | validation top-1 / top-5 error | -1.4 / -1.2 points (Section 3.3) |
| overlapping vs 2x2 pooling | validation top-1 / top-5 error | -0.4 / -0.3 points (Section 3.4) |
| two towers vs one tower, half the kernels | validation top-1 / top-5 error | -1.7 / -1.2 points (Section 3.2) |
| PCA lighting on vs off | validation top-1 / top-5 error | over 1 point top-1 (Section 4.1) |

Budget: every run gets the same fixed budget, by default 1 epoch (on
Fashion-MNIST: 60,000 images at batch 128, 468 steps) and a centre-crop
evaluation of the whole validation split (10,000 images), with no ten-crop
evaluation and no export, one seed. The six runs took 24 minutes on 2 CPU
cores shared with other jobs (BENCHMARKS.md), within a 45-minute budget. The
dataset statistics (mean image and RGB principal components) are computed once
into WORKDIR/dataset_stats.npz and shared by every run.

Rerunning the same command skips the runs that have finished and resumes the
others from their last checkpoint. The table is also written to --output, as
Markdown there and as JSON beside it (same name, .json).
"""

import dataclasses
import json
import os
import sys
import time

# As in train.py: reuse large CPU buffers (see BENCHMARKS.md); must be set before
# TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import tensorflow as tf  # noqa: E402

from alexnet_tf import config as config_lib  # noqa: E402
from alexnet_tf import model_dir, preprocessing, trainer  # noqa: E402

DEFAULT_RECIPE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "small.flags"
)
BASELINE = "baseline"
STATS_FILE = "dataset_stats.npz"

# Figure 1 (Section 3.1): iterations of a four-layer CNN on CIFAR-10 to reach 25%
# training error, about six times fewer with ReLUs than with tanh units.
PAPER_TARGET_TRAINING_ERROR = 0.25
PAPER_RELU_SPEEDUP = 6.0
# Training error is logged per batch; the running mean over this many steps is
# what is compared with the target, so that one lucky batch does not count.
DEFAULT_SMOOTHING_STEPS = 50


@dataclasses.dataclass(frozen=True)
class Ablation:
    """One of the paper's choices and the setting it was compared with.

    paper_top1 and paper_top5 are the reported changes of error (in percentage
    points, the paper's choice minus the other) where the pair is judged by
    validation error; paper_text is what the table shows in the paper column.
    """

    name: str
    pair: str
    changed_setting: str
    overrides: dict
    paper_text: str
    paper_top1: float = None
    paper_top5: float = None
    by_training_steps: bool = False


ABLATIONS = (
    Ablation("tanh", "ReLU vs tanh", "tanh", {"activation": "tanh"},
             "about 6x fewer steps with ReLU (Figure 1, CIFAR-10)", by_training_steps=True),
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


def config_from_flagfile(path, **overrides):
    """A training flagfile (the training command's flags) as a TrainConfig, with
    `overrides` applied after it."""
    return config_lib.load_flagfile(path, **overrides)[0]


def read_scalars(event_dir, tag):
    """A TensorBoard scalar as [(step, value)] by step. A step written twice (a
    resumed run repeats the steps after its last checkpoint) keeps its last value."""
    written = []
    for name in sorted(os.listdir(event_dir)):
        if "tfevents" not in name:
            continue
        for record in tf.data.TFRecordDataset(os.path.join(event_dir, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                if value.tag != tag:
                    continue
                number = (float(tf.make_ndarray(value.tensor)) if value.HasField("tensor")
                          else value.simple_value)
                written.append((event.wall_time, event.step, number))
    latest = {step: number for _, step, number in sorted(written)}
    return sorted(latest.items())


def running_mean(series, window_steps):
    """[(step, mean of the values logged at steps in (step - window_steps, step])]."""
    means = []
    for step, _ in series:
        window = [v for s, v in series if step - window_steps < s <= step]
        means.append((step, sum(window) / len(window)))
    return means


def steps_to_reach(series, target, window_steps=DEFAULT_SMOOTHING_STEPS):
    """The first logged step, from step window_steps on (where the window is full,
    so that the first few batches alone cannot count), whose running mean is at or
    below target; None if there is none."""
    for step, mean in running_mean(series, window_steps):
        if step >= window_steps and mean <= target:
            return step
    return None


def _read_metrics(run_dir):
    return model_dir.read_metrics(run_dir)


def _finished(metrics):
    return metrics is not None and metrics.get("finished", False)


def train_once(config, run_dir):
    """Trains unless run_dir holds a finished run; returns its metrics.json."""
    metrics = _read_metrics(run_dir)
    if _finished(metrics):
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


def run_ablations(base_config, workdir, ablations=ABLATIONS):
    """Trains the baseline and each ablation under workdir. Returns {run name: run_dir}."""
    base_config = dataclasses.replace(
        base_config, stats_file=shared_stats_file(base_config, workdir)
    )
    run_dirs = {}
    for name, overrides in [(BASELINE, {})] + [(a.name, a.overrides) for a in ablations]:
        run_dir = os.path.join(workdir, name)
        started = time.perf_counter()
        metrics = train_once(dataclasses.replace(base_config, **overrides), run_dir)
        print(f"{name}: top-1 error {metrics['validation']['top1_error']:.4f}, top-5 {metrics['validation']['top5_error']:.4f} "
              f"({time.perf_counter() - started:.0f} s)")
        run_dirs[name] = run_dir
    return run_dirs


def _percent(error):
    return round(100.0 * error, 2)


def _error_row(ablation, measure, ours, theirs, paper_reports="", paper_difference=None):
    return dict(
        pair=ablation.pair, changed_setting=ablation.changed_setting, measure=measure,
        with_paper_choice=ours, with_change=theirs, difference=round(ours - theirs, 2),
        paper_reports=paper_reports, paper_difference=paper_difference,
    )


def _training_speed_rows(ablation, run_dirs, target_error, smoothing_steps):
    """Steps to the target training error, and the training error the budget ended at
    (which still says something when a run never reaches the target)."""
    names = (BASELINE, ablation.name)
    series = [read_scalars(os.path.join(run_dirs[n], "train"), "top1_error") for n in names]
    steps = [steps_to_reach(s, target_error, smoothing_steps) for s in series]
    final = [_percent(running_mean(s, smoothing_steps)[-1][1]) for s in series]
    reached = None not in steps
    return [
        dict(
            pair=ablation.pair, changed_setting=ablation.changed_setting,
            measure=f"training steps to {100 * target_error:g}% training error "
                    f"(running mean of {smoothing_steps} steps)",
            with_paper_choice=steps[0], with_change=steps[1],
            steps_trained=[_read_metrics(run_dirs[n])["step"] for n in names],
            difference=steps[0] - steps[1] if reached else None,
            ratio=steps[1] / steps[0] if reached else None,
            paper_reports=ablation.paper_text, paper_ratio=PAPER_RELU_SPEEDUP,
        ),
        _error_row(ablation, f"training top-1 error at the last step (%, running mean of "
                   f"{smoothing_steps} steps)", *final),
    ]


def table_rows(run_dirs, ablations, target_error, smoothing_steps):
    """The table as a list of dicts; errors and their differences in percent,
    differences as the paper's choice minus the changed setting."""
    baseline = _read_metrics(run_dirs[BASELINE])
    rows = []
    for ablation in ablations:
        if ablation.by_training_steps:
            rows += _training_speed_rows(ablation, run_dirs, target_error, smoothing_steps)
            continue
        changed = _read_metrics(run_dirs[ablation.name])
        for k, paper in ((1, ablation.paper_top1), (5, ablation.paper_top5)):
            rows.append(_error_row(
                ablation, f"validation top-{k} error (%)", _percent(baseline["validation"][f"top{k}_error"]),
                _percent(changed["validation"][f"top{k}_error"]), ablation.paper_text if k == 1 else "", paper,
            ))
    return rows


def _steps_cell(steps, trained):
    return f"not reached in {trained}" if steps is None else str(steps)


def _difference_cell(row):
    if "ratio" not in row:
        return f"{row['difference']:+.2f}"
    if row["difference"] is not None:
        return f"{row['difference']:+d} steps (changed needs {row['ratio']:.2f}x)"
    ours, theirs = row["with_paper_choice"], row["with_change"]
    trained_ours, trained_theirs = row["steps_trained"]
    # A run that never got there would have needed more than the steps it trained.
    if ours is not None:
        return (f"below {ours - trained_theirs:+d} steps (changed needs over "
                f"{trained_theirs / ours:.2f}x)")
    if theirs is not None:
        return f"above {trained_ours - theirs:+d} steps"
    return "neither reached it"


def format_markdown(rows, budget):
    lines = [
        budget, "",
        "| pair | measure | paper's choice | changed | difference (paper's choice - changed) "
        "| paper reports |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "ratio" in row:
            ours = _steps_cell(row["with_paper_choice"], row["steps_trained"][0])
            theirs = _steps_cell(row["with_change"], row["steps_trained"][1])
        else:
            ours, theirs = f"{row['with_paper_choice']:.2f}", f"{row['with_change']:.2f}"
        lines.append(f"| {row['pair']} ({row['changed_setting']}) | {row['measure']} | {ours} "
                     f"| {theirs} | {_difference_cell(row)} | {row['paper_reports']} |")
    return "\n".join(lines) + "\n"


def describe_budget(base_config, run_dirs):
    baseline = _read_metrics(run_dirs[BASELINE])
    return (
        f"Budget per run: {base_config.epochs} epoch{'s' * (base_config.epochs != 1)} at batch "
        f"{base_config.batch_size} "
        f"({baseline['step']} steps), centre-crop evaluation of {baseline['validation']['examples']} "
        f"validation images, seed {base_config.seed}; model_size={base_config.model_size}. "
        "Errors in percent; differences are the paper's choice minus the changed setting."
    )


def write_table(rows, budget, output):
    """Writes the Markdown table to output and the rows as JSON beside it."""
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    markdown = format_markdown(rows, budget)
    with open(output, "w") as f:
        f.write(markdown)
    with open(os.path.splitext(output)[0] + ".json", "w") as f:
        json.dump({"budget": budget, "rows": rows}, f, indent=2)
    return markdown


def _define_flags():
    from absl import flags

    flags.DEFINE_string("data_dir", None, "The image folder (train/ and val/).", required=True)
    flags.DEFINE_string("workdir", None, "One model directory per run goes here; rerunning "
                        "skips finished runs and resumes the others.", required=True)
    flags.DEFINE_string("output", None, "The table as Markdown (and JSON beside it, .json). "
                        "Default: WORKDIR/table.md.")
    flags.DEFINE_string("recipe", DEFAULT_RECIPE, "The training flagfile every run starts from.")
    flags.DEFINE_list("ablations", [a.name for a in ABLATIONS], "Which changed settings to run.")
    flags.DEFINE_integer("epochs", 1, "Epochs per run.")
    flags.DEFINE_integer("steps_per_epoch", 0, "0: the whole training split each epoch.")
    flags.DEFINE_integer("log_every_steps", 1, "Training error is logged every N steps.")
    flags.DEFINE_integer("smoothing_steps", DEFAULT_SMOOTHING_STEPS,
                         "Running-mean window of the training error, in steps.")
    flags.DEFINE_float("target_error", PAPER_TARGET_TRAINING_ERROR,
                       "The training error whose first crossing is counted (Figure 1).")
    flags.DEFINE_integer("seed", 0, "Seed of every run.")


def main(argv):
    from absl import flags

    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]} (flags are --name=value).")
    values = flags.FLAGS
    unknown = [name for name in values.ablations if name not in ABLATIONS_BY_NAME]
    if unknown:
        sys.exit(f"error: unknown --ablations {unknown}; known: {list(ABLATIONS_BY_NAME)}.")
    for name in ("epochs", "log_every_steps", "smoothing_steps"):
        if values[name].value < 1:
            sys.exit(f"error: --{name}={values[name].value} must be at least 1.")
    ablations = [ABLATIONS_BY_NAME[name] for name in values.ablations]
    started = time.perf_counter()
    try:
        base_config = config_from_flagfile(
            values.recipe, data_dir=values.data_dir, epochs=values.epochs,
            steps_per_epoch=values.steps_per_epoch, log_every_steps=values.log_every_steps,
            seed=values.seed, eval_ten_crop=False, export=False,
        )
        run_dirs = run_ablations(base_config, values.workdir, ablations)
    except (OSError, ValueError, trainer.TrainingError) as e:
        sys.exit(f"error: {e}")
    rows = table_rows(run_dirs, ablations, values.target_error, values.smoothing_steps)
    output = values.output or os.path.join(values.workdir, "table.md")
    print(write_table(rows, describe_budget(base_config, run_dirs), output))
    print(f"Wrote {output} and its .json; {time.perf_counter() - started:.0f} s in all.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
