"""The ablation driver: its training-speed measure by hand, and its table against
the run directories it wrote, on the smoke configuration."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from test_train import smoke_config

from alexnet_tf import ablations, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Training error logged every 10 steps.
SERIES = [(10, 0.9), (20, 0.5), (30, 0.3), (40, 0.2), (50, 0.2), (60, 0.1)]


def test_running_mean_by_hand():
    # Window of 30 steps: the values logged at steps in (step - 30, step].
    expected = [0.9, (0.9 + 0.5) / 2, (0.9 + 0.5 + 0.3) / 3, (0.5 + 0.3 + 0.2) / 3,
                (0.3 + 0.2 + 0.2) / 3, (0.2 + 0.2 + 0.1) / 3]
    steps, means = zip(*ablations.running_mean(SERIES, 30))
    assert steps == (10, 20, 30, 40, 50, 60)
    np.testing.assert_allclose(means, expected, rtol=1e-12)


def test_steps_to_reach_by_hand():
    # Means from step 30 on: 0.567, 0.333, 0.233, 0.167.
    assert ablations.steps_to_reach(SERIES, 0.25, window_steps=30) == 50
    assert ablations.steps_to_reach(SERIES, 0.6, window_steps=30) == 30
    assert ablations.steps_to_reach(SERIES, 0.34, window_steps=30) == 40
    assert ablations.steps_to_reach(SERIES, 0.1, window_steps=30) is None
    assert ablations.steps_to_reach([], 0.25) is None
    # The window is full only from step 3 on: step 1's lucky batch does not count.
    lucky_start = [(1, 0.0), (2, 1.0), (3, 1.0), (4, 0.0), (5, 0.0)]
    assert ablations.steps_to_reach(lucky_start, 0.4, window_steps=3) == 5


def test_read_scalars_keeps_the_last_write_of_a_repeated_step(tmp_path):
    # A resumed run logs again the steps after its last checkpoint, in a new file.
    for values in ({1: 0.9, 2: 0.8, 3: 0.7}, {3: 0.6, 4: 0.5}):
        writer = tf.summary.create_file_writer(str(tmp_path))
        with writer.as_default():
            for step, value in values.items():
                tf.summary.scalar("top1_error", value, step=step)
                tf.summary.scalar("loss", 10.0, step=step)
        writer.close()
    series = ablations.read_scalars(str(tmp_path), "top1_error")
    assert [s for s, _ in series] == [1, 2, 3, 4]
    np.testing.assert_allclose([v for _, v in series], [0.9, 0.8, 0.6, 0.5], rtol=1e-6)


def _independent_steps_to_reach(event_dir, target, window):
    """The same measure from the raw event records, with NumPy."""
    values = {}
    for name in sorted(os.listdir(event_dir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            for value in event.summary.value:
                if value.tag == "top1_error":
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    steps = np.array(sorted(values))
    errors = np.array([values[s] for s in steps], np.float64)
    for i, step in enumerate(steps):
        mean = errors[(steps > step - window) & (steps <= step)].mean()
        if step >= window and mean <= target:
            return int(step), errors
    return None, errors


def test_driver_on_synthetic_data_writes_a_table_equal_to_its_runs(tmp_path, monkeypatch):
    base = smoke_config(tmp_path, epochs=1, steps_per_epoch=4, log_every_steps=1,
                        eval_ten_crop=False, export=False)
    chosen = [ablations.ABLATIONS_BY_NAME["tanh"], ablations.ABLATIONS_BY_NAME["no_lrn"]]
    workdir = str(tmp_path / "ablations")
    run_dirs = ablations.run_ablations(base, workdir, chosen)

    assert run_dirs == {name: os.path.join(workdir, name) for name in ("baseline", "tanh", "no_lrn")}
    metrics = {}
    for name, run_dir in run_dirs.items():
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics[name] = json.load(f)
        with open(os.path.join(run_dir, "config.json")) as f:
            config = json.load(f)
        assert metrics[name]["step"] == 4
        assert config["stats_file"] == os.path.join(workdir, "dataset_stats.npz")
    assert config["lrn"] is False and config["activation"] == "relu"

    target, window = 0.7, 2
    rows = ablations.table_rows(run_dirs, chosen, target, window)
    assert [r["measure"][:22] for r in rows] == [
        "training steps to 70% ", "training top-1 error a",
        "validation top-1 error", "validation top-5 error"]

    speed, final = rows[0], rows[1]
    for name, column in (("baseline", "with_paper_choice"), ("tanh", "with_change")):
        steps, errors = _independent_steps_to_reach(
            os.path.join(run_dirs[name], "train"), target, window)
        assert speed[column] == steps
        assert final[column] == round(100 * errors[-window:].mean(), 2)
    assert speed["steps_trained"] == [4, 4]
    assert final["difference"] == round(final["with_paper_choice"] - final["with_change"], 2)

    for row, k in ((rows[2], 1), (rows[3], 5)):
        assert row["with_paper_choice"] == round(
            100 * metrics["baseline"]["validation"][f"top{k}_error"], 2)
        assert row["with_change"] == round(100 * metrics["no_lrn"]["validation"][f"top{k}_error"], 2)
        assert row["difference"] == round(row["with_paper_choice"] - row["with_change"], 2)
    assert (rows[2]["paper_difference"], rows[3]["paper_difference"]) == (-1.4, -1.2)

    output = str(tmp_path / "table.md")
    markdown = ablations.write_table(rows, "budget line", output)
    with open(output) as f:
        assert f.read() == markdown
    assert f"| {rows[2]['with_paper_choice']:.2f} | {rows[2]['with_change']:.2f} | " \
           f"{rows[2]['difference']:+.2f} | -1.4 / -1.2 (Section 3.3) |" in markdown
    with open(str(tmp_path / "table.json")) as f:
        assert json.load(f) == {"budget": "budget line", "rows": rows}

    def must_not_train(config, workdir):
        raise AssertionError(f"{workdir} was trained again")

    monkeypatch.setattr(trainer, "train_and_evaluate", must_not_train)
    assert ablations.run_ablations(base, workdir, chosen) == run_dirs


def test_markdown_states_runs_that_never_reached_the_target():
    ablation = ablations.ABLATIONS_BY_NAME["tanh"]
    row = dict(pair=ablation.pair, changed_setting="tanh", measure="steps",
               with_paper_choice=120, with_change=None, steps_trained=[468, 468],
               difference=None, ratio=None, paper_reports=ablation.paper_text)
    line = ablations.format_markdown([row], "b").splitlines()[-1]
    # tanh needed more than 468 steps: ReLU - tanh < 120 - 468 = -348, a ratio over 3.9.
    assert "| 120 | not reached in 468 | below -348 steps (changed needs over 3.90x) |" in line


def test_a_run_stopped_before_its_end_stops_the_driver_resumably(tmp_path, monkeypatch):
    def interrupted(config, workdir):
        raise trainer.Interrupted("interrupted by SIGTERM at step 3")

    monkeypatch.setattr(trainer, "train_and_evaluate", interrupted)
    with pytest.raises(trainer.Interrupted, match="SIGTERM"):
        ablations.train_once(smoke_config(tmp_path), str(tmp_path / "run"))
    assert ablations._read_metrics(str(tmp_path / "run")) is None
