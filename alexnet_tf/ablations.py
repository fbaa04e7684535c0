"""The paper's design choices, each switched off in turn, on the small variant, with seeds.

    python -m alexnet_tf.ablations --data_dir=data/fashion_mnist --workdir=runs/ablations \
        --recipe=configs/ablations.flags

Trains the small variant with a recipe (--recipe; by default configs/small.flags,
the README's main run; configs/ablations.flags is the same with a budget at which the
baseline converges, and the training error measured) as the baseline and once per
changed setting (--ablations; by default all but tanh, which alexnet_tf.figure1
compares with its own learning rate), each with every seed of --seeds, each in its own
model directory (WORKDIR/ARM/seedS), a seed at a time. Every run's learning-rate
schedule looks at its validation split only; the table reports the test split's error
with ten crops (the data's test/ folder; its val/ where there is none).

After each run it prints whether the run converged: its rate was cut at least once and
its validation error moved less than CONVERGED_POINTS over the last fifth of its steps
(`convergence`). The tables then give:

- per arm: how many runs converged and where their rates were cut; the test error; with
  --train_error_examples in the recipe, the error of those fixed training images
  (inference mode, centre crop), the gap between test and training error (the
  overfitting the paper names), and the steps each run took to reach the baseline's
  mean final training error (how much longer a regularised net takes to converge);
- per pair (the paper's choice against the changed setting) and measure: each arm's
  mean and standard deviation over the seeds, the difference of the means, its
  standard error sqrt(s1^2 / n1 + s2^2 / n2), and the verdict: "not resolved" when the
  difference is within twice that, with the seeds per arm that would resolve it at the
  measured spread, else which way it goes;
- the baseline's seeds as an ensemble (Table 2's "averaging the predictions of
  several CNNs"): their softmax averaged image by image, through alexnet_tf.evaluate,
  beside the single runs' mean.

The paper's figure stands beside each pair:

| pair | paper (its choice minus the other) |
|---|---|
| ReLU vs tanh | about 6x fewer steps to 25% training error (Figure 1; see alexnet_tf.figure1) |
| LRN on vs off | -1.4 top-1 / -1.2 top-5 points (Section 3.3) |
| overlapping vs 2x2 pooling | -0.4 / -0.3 points (Section 3.4) |
| two towers vs one tower with half the kernels | -1.7 / -1.2 points (Section 3.2) |
| PCA lighting on vs off | over 1 point top-1 (Section 4.1) |
| dropout vs none | "substantial overfitting" without; about 2x the iterations to converge with it (4.2) |
| crops and mirrors vs the centre crop | "substantial overfitting" without them (Section 4.1) |
| one net vs an ensemble | 18.2% -> 16.4% top-5 for five CNNs (Table 2) |

The dataset statistics are computed once into WORKDIR/dataset_stats.npz and shared.
Rerunning the command skips finished runs and resumes the others from their last
checkpoint; a run stopped by SIGTERM or Ctrl-C exits with status 75, resumable. The
tables are written to --output (Markdown) and JSON beside it; each run's settings and
final errors are also logged for TensorBoard's HParams plugin, so that
`tensorboard --logdir WORKDIR` sets the arms side by side.

One job: the ablation experiment, from its runs to its tables; the training, the
evaluation and the statistics' inputs are other modules'.
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
from alexnet_tf import files, model_dir, preprocessing, settings, trainer  # noqa: E402

DEFAULT_RECIPE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "small.flags"
)
BASELINE = "baseline"
STATS_FILE = "dataset_stats.npz"
HPARAMS_DIR = "hparams"
# A difference of the means beyond this many of its standard errors counts as more
# than the seeds' spread.
SIGNIFICANT_STANDARD_ERRORS = 2.0
# A run converged when its rate was cut and its validation error moved less than this
# many points over the last fifth of its steps (`convergence`).
CONVERGED_POINTS = 0.3


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
    Ablation("no_dropout", "dropout vs none", "no dropout", {"dropout_rate": 0.0},
             "without it \"substantial overfitting\"; it \"roughly doubles the number of "
             "iterations required to converge\" (Section 4.2)"),
    Ablation("no_crops_mirrors", "random crops and mirrors vs the centre crop",
             "centre crop, no mirrors", {"crops_and_mirrors": False},
             "without them \"substantial overfitting\" (Section 4.1)"),
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


def arm_configs(base_config, ablations, seed):
    """[(arm, its config)] for one seed: the baseline, then each ablation, which changes
    only its own settings."""
    base = dataclasses.replace(base_config, seed=seed)
    return [(BASELINE, base)] + [(a.name, dataclasses.replace(base, **a.overrides))
                                 for a in ablations]


def run_ablations(base_config, workdir, ablations=ABLATIONS, seeds=(0,)):
    """Trains the baseline and each ablation with each seed under workdir, a seed at a
    time (so a table of every arm exists after the first). Returns {(arm, seed): run_dir}."""
    base_config = dataclasses.replace(
        base_config, stats_file=shared_stats_file(base_config, workdir))
    run_dirs, total = {}, len(seeds) * (len(ablations) + 1)
    for seed in seeds:
        for name, config in arm_configs(base_config, ablations, seed):
            run_dir = run_dir_of(workdir, name, seed)
            started = time.perf_counter()
            print(f"run {len(run_dirs) + 1} of {total}: {name} seed {seed} in {run_dir}")
            metrics = train_once(config, run_dir)
            log_hparams(run_dir, name, config, metrics)
            print(f"{describe_run(name, seed, run_record(run_dir, config))} "
                  f"({time.perf_counter() - started:.0f} s)")
            run_dirs[(name, seed)] = run_dir
    return run_dirs


def records_of(run_dirs, base_config, ablations, seeds):
    """{(arm, seed): run_record} of every run."""
    records = {}
    for seed in seeds:
        for name, config in arm_configs(base_config, ablations, seed):
            records[(name, seed)] = run_record(run_dirs[(name, seed)], config)
    return records


# ----------------------------------------------------------------------------------
# TensorBoard's HParams plugin.

HPARAM_FIELDS = ("activation", "lrn", "overlapping_pooling", "towers", "lighting",
                 "dropout_rate", "crops_and_mirrors", "seed", "learning_rate", "train_steps",
                 "batch_size")


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
# Each run's record: its errors, whether it converged, its training-sample curve.


def convergence(validation_curve, rates, initial_rate, total_steps):
    """Whether a run ended converged: its rate was cut at least once, and its validation
    top-1 error (centre crop, the schedule's measure) moved less than CONVERGED_POINTS
    over the last fifth of its steps (the largest minus the smallest of the evaluations
    at steps >= 4/5 of total_steps; None, not converged, with fewer than two).

    validation_curve and rates are [(step, value)]: the errors (fractions) and the rate
    set at each evaluation. Returns {"rate_cuts_at": [steps], "last_fifth_points",
    "converged"}.
    """
    cuts, previous = [], initial_rate
    for step, rate in rates:
        if rate < previous * (1 - 1e-6):
            cuts.append(step)
        previous = rate
    last_fifth = [error for step, error in validation_curve if step >= 0.8 * total_steps]
    points = (_percent(max(last_fifth) - min(last_fifth)) if len(last_fifth) > 1
              else None)
    return {"rate_cuts_at": cuts, "last_fifth_points": points,
            "converged": bool(cuts) and points is not None and points < CONVERGED_POINTS}


def steps_to_reach(curve, target):
    """The first step of [(step, error)] at or below target, or None."""
    return next((step for step, error in curve if error <= target), None)


def run_record(run_dir, config):
    """What the table reads of a finished run, from its metrics.json and TensorBoard
    events."""
    metrics = _read_metrics(run_dir)
    validation = model_dir.read_scalars(run_dir, model_dir.VALIDATION_LOGS, "top1_error")
    rates = model_dir.read_scalars(run_dir, model_dir.VALIDATION_LOGS, trainer.LEARNING_RATE)
    record = {"errors": _errors(metrics), "step": metrics["step"],
              **convergence(validation, rates, config.learning_rate, metrics["step"])}
    if trainer.TRAIN_SAMPLE in metrics:
        record["train_top1"] = metrics[trainer.TRAIN_SAMPLE]["top1_error"]
        record["centre_top1"] = metrics[record["errors"]["split"]]["top1_error"]
        record["train_curve"] = model_dir.read_scalars(
            run_dir, model_dir.TRAIN_SAMPLE_LOGS, "top1_error")
    return record


def describe_run(arm, seed, record):
    """One line: the run's error and its convergence."""
    errors = record["errors"]
    cuts = ", ".join(str(step) for step in record["rate_cuts_at"]) or "never"
    points = record["last_fifth_points"]
    moved = ("fewer than two evaluations in the last fifth" if points is None else
             f"validation error moved {points:.2f} points over the last fifth")
    line = (f"{arm} seed {seed}: {errors['split']} top-1 error {errors['top1']:.4f}, "
            f"top-5 {errors['top5']:.4f}; rate cut at {cuts}; {moved}: "
            + ("converged" if record["converged"] else "NOT converged"))
    if "train_top1" in record:
        line += f"; training sample top-1 error {record['train_top1']:.4f}"
    return line


# ----------------------------------------------------------------------------------
# The tables.


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


def seeds_to_resolve(ours, theirs):
    """Seeds per arm at which the measured difference of the means would exceed
    SIGNIFICANT_STANDARD_ERRORS standard errors, at the measured spreads: the smallest
    n with |d| > k sqrt((s1^2 + s2^2) / n). None for no difference (or no spread)."""
    (m1, s1, _), (m2, s2, _) = arm_statistics(ours), arm_statistics(theirs)
    difference = abs(m1 - m2)
    if difference == 0 or s1 + s2 == 0:
        return None
    n = SIGNIFICANT_STANDARD_ERRORS ** 2 * (s1 * s1 + s2 * s2) / difference ** 2
    return math.floor(n) + 1


def verdict(difference, exceeds):
    if not exceeds:
        return "not resolved"
    return "lower with the paper's choice" if difference < 0 else "higher with the paper's choice"


def _measures(records, arm, seeds):
    """{measure name: [values in percent per seed]} of an arm."""
    runs = [records[(arm, seed)] for seed in seeds]
    first = runs[0]["errors"]
    measures = {f"{first['split']} top-{k} error (%, {first['crops']})":
                [_percent(run["errors"][f"top{k}"]) for run in runs] for k in (1, 5)}
    if all("train_top1" in run for run in runs):
        measures[gap_measure(first["split"])] = [
            _percent(run["centre_top1"] - run["train_top1"]) for run in runs]
    return measures


def gap_measure(split):
    return f"gap: {split} minus training top-1 error (points, centre crop)"


def table_rows(records, ablations, seeds):
    """One row per pair and measure; errors in percent. records: {(arm, seed): run_record}."""
    baseline = _measures(records, BASELINE, seeds)
    rows = []
    for ablation in ablations:
        changed = _measures(records, ablation.name, seeds)
        for i, (measure, ours) in enumerate(baseline.items()):
            theirs = changed[measure]
            difference, standard_error, exceeds = compare(ours, theirs)
            paper = (ablation.paper_top1, ablation.paper_top5, None)[i]
            rows.append(dict(
                pair=ablation.pair, changed_setting=ablation.changed_setting, measure=measure,
                paper_choice=arm_statistics(ours), changed=arm_statistics(theirs),
                paper_choice_runs=ours, changed_runs=theirs,
                difference=difference, standard_error=standard_error, exceeds_spread=exceeds,
                verdict=verdict(difference, exceeds),
                seeds_to_resolve=None if exceeds else seeds_to_resolve(ours, theirs),
                paper_reports=ablation.paper_text if i == 0 else "", paper_difference=paper))
    return rows


def arm_rows(records, arms, seeds):
    """One row per arm: its errors, training error, gap, convergence and the steps its
    runs took to reach the baseline's mean final training error."""
    baseline_train = [records[(BASELINE, s)].get("train_top1") for s in seeds]
    target = None if None in baseline_train else statistics.mean(baseline_train)
    rows = []
    for arm in arms:
        runs = [records[(arm, seed)] for seed in seeds]
        measures = _measures(records, arm, seeds)
        row = dict(arm=arm, measures={name: arm_statistics(values)
                                      for name, values in measures.items()},
                   converged=sum(run["converged"] for run in runs), runs=len(runs),
                   steps=[run["step"] for run in runs],
                   rate_cuts_at=[run["rate_cuts_at"] for run in runs],
                   last_fifth_points=[run["last_fifth_points"] for run in runs])
        if target is not None:
            row["train_top1"] = arm_statistics([_percent(run["train_top1"]) for run in runs])
            row["target_train_top1"] = _percent(target)
            row["steps_to_target"] = [steps_to_reach(run["train_curve"], target)
                                      for run in runs]
        rows.append(row)
    return rows


def _mean_sd(statistic):
    mean, sd, _ = statistic
    return f"{mean:.2f} ± {sd:.2f}"


def _steps_text(steps):
    reached = [s for s in steps if s is not None]
    text = f"{statistics.mean(reached):.0f}" if reached else "-"
    if len(reached) < len(steps):
        text += f" ({len(steps) - len(reached)} of {len(steps)} never)"
    return text


def format_arms(rows):
    measure = next(iter(rows[0]["measures"]))
    has_train = "train_top1" in rows[0]
    head = (f"| arm | runs converged | steps run (per seed) | rate cut at (steps, per seed) | "
            f"{measure} |")
    if has_train:
        split = measure.split()[0]
        head += (f" training sample top-1 % (centre) | gap: {split} minus training top-1 "
                 "(points, centre) | steps to the baseline's final training error "
                 f"({rows[0]['target_train_top1']:.2f}%) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        cuts = "; ".join(", ".join(str(s) for s in run) or "none" for run in row["rate_cuts_at"])
        steps = ", ".join(str(s) for s in row["steps"])
        line = (f"| {row['arm']} | {row['converged']} of {row['runs']} | {steps} | {cuts} | "
                f"{_mean_sd(row['measures'][measure])} |")
        if has_train:
            gap = next(name for name in row["measures"] if name.startswith("gap:"))
            line += (f" {_mean_sd(row['train_top1'])} | {_mean_sd(row['measures'][gap])}"
                     f" | {_steps_text(row['steps_to_target'])} |")
        lines.append(line)
    return "\n".join(lines) + "\n"


def format_pairs(rows):
    lines = [
        "| pair | measure | paper's choice, mean ± sd | changed, mean ± sd | difference "
        "(paper's choice - changed) ± its standard error | verdict (beyond "
        f"{SIGNIFICANT_STANDARD_ERRORS:g} standard errors?) | seeds per arm to resolve it at "
        "this spread | paper reports |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        needed = row["seeds_to_resolve"]
        lines.append(
            f"| {row['pair']} ({row['changed_setting']}) | {row['measure']} | "
            f"{_mean_sd(row['paper_choice'])} | {_mean_sd(row['changed'])} | "
            f"{row['difference']:+.2f} ± {row['standard_error']:.2f} | {row['verdict']} | "
            f"{'' if row['exceeds_spread'] else needed or '-'} | {row['paper_reports']} |")
    return "\n".join(lines) + "\n"


def format_ensemble(ensemble):
    split = ensemble["split"]
    lines = [f"| baseline's seeds | crops | single runs' {split} top-1 %, mean ± sd | their "
             f"softmax average's {split} top-1 % | top-5: single mean / average |",
             "|---|---|---|---|---|"]
    for mode, row in ensemble["modes"].items():
        lines.append(
            f"| {', '.join(str(s) for s in ensemble['seeds'])} | {mode} | "
            f"{_mean_sd(row['single_top1'])} | {row['ensemble_top1']:.2f} | "
            f"{row['single_top5'][0]:.2f} / {row['ensemble_top5']:.2f} |")
    return "\n".join(lines) + "\n"


def format_markdown(rows, budget, arms=None, ensemble=None):
    parts = [budget, ""]
    if arms:
        parts += [format_arms(arms)]
    parts += [format_pairs(rows)]
    if ensemble:
        parts += [format_ensemble(ensemble)]
    return "\n".join(parts)


def describe_budget(base_config, records, seeds, recipe=DEFAULT_RECIPE):
    baseline = records[(BASELINE, seeds[0])]
    errors = baseline["errors"]
    steps = (f"at most {base_config.train_steps} steps, each run ending where its validation "
             f"error stopped improving after the last of {base_config.lr_reductions} "
             "divisions of the rate (--end_at_last_plateau)" if base_config.end_at_last_plateau
             else f"{baseline['step']} steps")
    text = (
        f"Per run: the {os.path.basename(recipe)} recipe, {steps} at "
        f"batch {base_config.batch_size}, the schedule deciding on the validation split; "
        f"errors on the {errors['split']} split ({errors['crops']}); seeds "
        f"{', '.join(str(s) for s in seeds)}; model_size={base_config.model_size}. "
        "Errors in percent, mean ± sample standard deviation over the seeds; a difference "
        f"is resolved when it exceeds {SIGNIFICANT_STANDARD_ERRORS:g} standard errors. A "
        "run converged when its rate was cut at least once and its validation top-1 error "
        f"moved less than {CONVERGED_POINTS:g} points over the last fifth of its steps.")
    if base_config.train_error_examples:
        text += (f" Training error: {base_config.train_error_examples} fixed training "
                 "images, centre crop, inference mode.")
    return text


# ----------------------------------------------------------------------------------
# Table 2's ensemble: the baseline's seeds, their softmax averaged.


def ensemble_of_seeds(run_dirs, seeds, data_dir, split):
    """The test errors of the baseline's seeds and of their softmax average, through
    alexnet_tf.evaluate; {"seeds", "modes": {crop mode: {...}}} in percent."""
    from alexnet_tf import evaluate, inference

    models = [inference.load_model(run_dirs[(BASELINE, seed)]) for seed in seeds]
    source, _ = inference.load_data_source(models, data_dir=data_dir)
    result = evaluate.evaluate(models, source, split)
    modes = {}
    for mode in result[evaluate.ENSEMBLE]:
        single = {k: [_percent(member[mode][f"top{k}_error"]) for member in result["models"]]
                  for k in (1, 5)}
        modes[mode] = dict(
            single_top1=arm_statistics(single[1]), single_top5=arm_statistics(single[5]),
            ensemble_top1=_percent(result[evaluate.ENSEMBLE][mode]["top1_error"]),
            ensemble_top5=_percent(result[evaluate.ENSEMBLE][mode]["top5_error"]))
    return {"seeds": list(seeds), "split": split, "examples": result["examples"],
            "modes": modes}


def write_table(rows, budget, output, arms=None, ensemble=None):
    """Writes the Markdown tables to output and their rows as JSON beside it."""
    markdown = format_markdown(rows, budget, arms, ensemble)
    files.write_text_atomically(output, markdown)
    files.write_text_atomically(
        os.path.splitext(output)[0] + ".json",
        json.dumps({"budget": budget, "rows": rows, "arms": arms, "ensemble": ensemble},
                   indent=2))
    return markdown


def _define_flags():
    from absl import flags

    known = "; ".join(f"{a.name}: {a.changed_setting}" for a in ABLATIONS)
    holders = [
        flags.DEFINE_string("data_dir", None, "The image folder (train/, val/, test/).",
                            required=True),
        flags.DEFINE_string("workdir", None, "One model directory per run goes here; "
                            "rerunning skips finished runs and resumes the others.",
                            required=True),
        flags.DEFINE_string("output", None, "The table as Markdown (and JSON beside it, "
                            ".json). Default: WORKDIR/table.md."),
        flags.DEFINE_string("recipe", DEFAULT_RECIPE,
                            "The training flagfile every run starts from."),
        flags.DEFINE_list("ablations", list(DEFAULT_ABLATIONS), "Which changed settings to "
                          f"run, each one of the paper's choices changed, nothing else ({known})."),
        flags.DEFINE_list("seeds", ["0", "1", "2"], "The seeds of every arm."),
        flags.DEFINE_integer("train_steps", 0, "Steps per run (0: the recipe's budget)."),
        flags.DEFINE_boolean("ensemble", True, "Also evaluate the softmax average of the "
                             "baseline's seeds (Table 2's ensembles) through alexnet_tf.evaluate."),
        flags.DEFINE_boolean("report_only", False, "Train nothing: the tables of the seeds "
                             "whose every arm has finished so far."),
    ]
    return {holder.name: holder for holder in holders}


def finished_runs(base_config, workdir, ablations, seeds):
    """({(arm, seed): run_dir}, the seeds whose every arm has a finished run of these
    settings): what the tables can be built from without training."""
    run_dirs, complete = {}, []
    for seed in seeds:
        dirs = {(name, seed): run_dir_of(workdir, name, seed)
                for name, _ in arm_configs(base_config, ablations, seed)}
        if all(_finished(_read_metrics(d)) for d in dirs.values()):
            run_dirs.update(dirs)
            complete.append(seed)
    return run_dirs, complete


def write_tables(values, base_config, run_dirs, ablations, seeds):
    """The tables of the finished runs, written to --output; returns the Markdown."""
    records = records_of(run_dirs, base_config, ablations, seeds)
    rows = table_rows(records, ablations, seeds)
    arms = arm_rows(records, [BASELINE] + [a.name for a in ablations], seeds)
    ensemble = None
    if values["ensemble"] and len(seeds) > 1:
        ensemble = ensemble_of_seeds(run_dirs, seeds, values["data_dir"],
                                     records[(BASELINE, seeds[0])]["errors"]["split"])
    output = values["output"] or os.path.join(values["workdir"], "table.md")
    budget = describe_budget(base_config, records, seeds, values["recipe"])
    return write_table(rows, budget, output, arms, ensemble), output


def main(values):
    from alexnet_tf import inference

    unknown = [name for name in values["ablations"] if name not in ABLATIONS_BY_NAME]
    if unknown:
        sys.exit(f"error: unknown --ablations {unknown}; known: {list(ABLATIONS_BY_NAME)}.")
    ablations = [ABLATIONS_BY_NAME[name] for name in values["ablations"]]
    started = time.perf_counter()
    try:
        seeds = [int(seed) for seed in values["seeds"]]
        overrides = dict(data_dir=values["data_dir"], export=False, eval_ten_crop=True)
        if values["train_steps"]:
            overrides["train_steps"] = values["train_steps"]
        base_config = config_from_flagfile(values["recipe"], **overrides)
        if values["report_only"]:
            base_config = dataclasses.replace(
                base_config, stats_file=os.path.join(values["workdir"], STATS_FILE))
            run_dirs, seeds = finished_runs(base_config, values["workdir"], ablations, seeds)
            if not seeds:
                sys.exit(f"error: no seed has a finished run of every arm in "
                         f"{values['workdir']} yet.")
            print(f"Tables of seeds {seeds}, whose every arm has finished.")
        else:
            log_hparams_config(values["workdir"])
            run_dirs = run_ablations(base_config, values["workdir"], ablations, seeds)
        markdown, output = write_tables(values, base_config, run_dirs, ablations, seeds)
    except trainer.Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(settings.EXIT_INTERRUPTED)
    except (ValueError, *inference.USER_ERRORS) as e:
        sys.exit(f"error: {e}")
    print(markdown)
    print(f"Wrote {output} and its .json; {time.perf_counter() - started:.0f} s in all.")


if __name__ == "__main__":
    from alexnet_tf import command

    command.run(main, _define_flags())
