"""The ablation driver: its statistics by hand, and its table against the run
directories it wrote with two seeds, on the smoke configuration."""

import dataclasses
import json
import math
import os
import statistics

import numpy as np
import pytest
import tensorflow as tf
from test_train import smoke_config

from alexnet_tf import ablations, model_dir, trainer
from alexnet_tf import config as config_lib


def test_compare_by_hand():
    ours, theirs = [10.0, 12.0, 11.0], [14.0, 15.0, 16.0]
    difference, standard_error, exceeds = ablations.compare(ours, theirs)
    assert difference == pytest.approx(11.0 - 15.0)
    # sqrt(1/3 + 1/3): both samples have standard deviation 1.
    assert standard_error == pytest.approx(math.sqrt(2 / 3))
    assert exceeds  # 4 > 2 x 0.816
    close = ablations.compare([10.0, 12.0, 11.0], [11.5, 12.5, 10.5])
    assert close[0] == pytest.approx(-0.5) and not close[2]
    # One seed each: no spread to judge by, never "beyond" it.
    assert ablations.compare([10.0], [20.0]) == (-10.0, 0.0, False)
    assert ablations.arm_statistics([1.0, 2.0, 4.0]) == (
        pytest.approx(7 / 3), pytest.approx(statistics.stdev([1, 2, 4])), 3)


def hparams_sessions(event_dir):
    """The plugin names and scalar tags written into a run's hparams directory."""
    plugins, tags = set(), set()
    for name in os.listdir(event_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            for value in event.summary.value:
                plugins.add(value.metadata.plugin_data.plugin_name)
                tags.add(value.tag)
    return plugins, tags


def test_each_arm_changes_only_its_own_choice(tmp_path):
    base = smoke_config(tmp_path)
    arms = dict(ablations.arm_configs(base, ablations.ABLATIONS, seed=3))
    assert arms["baseline"] == dataclasses.replace(base, seed=3)
    changed = {
        name: {field: getattr(config, field) for field in config_lib.FIELDS
               if getattr(config, field) != getattr(arms["baseline"], field)}
        for name, config in arms.items() if name != "baseline"}
    assert changed == {
        "tanh": {"activation": "tanh"},
        "no_lrn": {"lrn": False},
        "no_overlap": {"overlapping_pooling": False},
        "one_tower": {"towers": 1},
        "no_lighting": {"lighting": "none"},
        "no_dropout": {"dropout_rate": 0.0},
        "no_crops_mirrors": {"crops_and_mirrors": False},
    }
    # The paper's choices are the baseline's.
    assert (base.activation, base.lrn, base.overlapping_pooling, base.towers) == (
        "relu", True, True, 2)
    assert base.lighting != "none" and base.dropout_rate == 0.5 and base.crops_and_mirrors
    assert set(ablations.DEFAULT_ABLATIONS) == set(ablations.ABLATIONS_BY_NAME) - {"tanh"}


def test_convergence_by_hand():
    # Evaluations every 100 steps of 1,000; the last fifth is steps 800 to 1,000.
    curve = [(100, 0.30), (200, 0.20), (700, 0.15), (800, 0.1210), (900, 0.1195),
             (1000, 0.1200)]
    rates = [(100, 0.02), (200, 0.02), (700, 0.002), (800, 0.002), (900, 0.0002)]
    record = ablations.convergence(curve, rates, 0.02, 1000)
    assert record["rate_cuts_at"] == [700, 900]
    assert record["last_fifth_points"] == pytest.approx(0.15)  # 12.10 - 11.95
    assert record["converged"]
    # Never cut: not converged, however flat.
    flat = ablations.convergence(curve, [(s, 0.02) for s, _ in curve], 0.02, 1000)
    assert flat["rate_cuts_at"] == [] and not flat["converged"]
    # Still falling by 0.4 points over the last fifth: not converged.
    falling = curve[:3] + [(800, 0.124), (900, 0.122), (1000, 0.120)]
    record = ablations.convergence(falling, rates, 0.02, 1000)
    assert record["last_fifth_points"] == pytest.approx(0.4) and not record["converged"]
    # One evaluation in the last fifth says nothing about its movement.
    sparse = ablations.convergence([(500, 0.2), (1000, 0.1)], [(500, 0.002)], 0.02, 1000)
    assert sparse["last_fifth_points"] is None and not sparse["converged"]


def test_steps_to_reach_and_seeds_to_resolve_by_hand():
    curve = [(100, 0.5), (200, 0.3), (300, 0.25), (400, 0.2)]
    assert ablations.steps_to_reach(curve, 0.25) == 300
    assert ablations.steps_to_reach(curve, 0.1) is None
    # sd 1 and 2, difference 1: n > 2^2 (1 + 4) / 1 = 20, so 21 seeds each.
    assert ablations.seeds_to_resolve([9.0, 10.0, 11.0], [8.0, 10.0, 12.0]) is None  # equal means
    ours, theirs = [9.0, 10.0, 11.0], [9.0, 11.0, 13.0]
    assert statistics.stdev(theirs) == 2.0
    assert ablations.seeds_to_resolve(ours, theirs) == 21
    # With 21 seeds each at these means and spreads the comparison resolves it; with 19
    # it does not (20 is the boundary, where rounding decides).
    def seeds(mean, sd, n):
        z = [i - (n - 1) / 2 for i in range(n)]
        scale = statistics.stdev(z)
        return [mean + sd * v / scale for v in z]

    assert ablations.compare(seeds(10.0, 1.0, 21), seeds(11.0, 2.0, 21))[2]
    assert not ablations.compare(seeds(10.0, 1.0, 19), seeds(11.0, 2.0, 19))[2]
    assert ablations.verdict(-1.0, True) == "lower with the paper's choice"
    assert ablations.verdict(1.0, True) == "higher with the paper's choice"
    assert ablations.verdict(-5.0, False) == "not resolved"


def test_driver_with_two_seeds_writes_a_table_equal_to_its_runs(tmp_path, monkeypatch):
    base = smoke_config(tmp_path, train_steps=6, eval_every_steps=2, export=False,
                        eval_ten_crop=True, train_error_examples=10, plateau_patience=1)
    chosen = [ablations.ABLATIONS_BY_NAME["no_lrn"]]
    workdir = str(tmp_path / "ablations")
    run_dirs = ablations.run_ablations(base, workdir, chosen, seeds=(0, 1))

    assert set(run_dirs) == {(arm, seed) for arm in ("baseline", "no_lrn")
                             for seed in (0, 1)}
    metrics, configs = {}, {}
    for key, run_dir in run_dirs.items():
        assert run_dir == os.path.join(workdir, key[0], f"seed{key[1]}")
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics[key] = json.load(f)
        with open(os.path.join(run_dir, "config.json")) as f:
            configs[key] = json.load(f)
        assert metrics[key]["step"] == 6 and metrics[key]["finished"]
        assert metrics[key]["train_sample"]["examples"] == 10
        assert configs[key]["seed"] == key[1]
        assert configs[key]["stats_file"] == os.path.join(workdir, "dataset_stats.npz")
        plugins, tags = hparams_sessions(os.path.join(run_dir, "hparams"))
        assert "hparams" in plugins and {"final/top1_error", "final/top5_error"} <= tags
    assert configs[("baseline", 1)]["lrn"] is True and configs[("no_lrn", 1)]["lrn"] is False

    records = ablations.records_of(run_dirs, base, chosen, (0, 1))
    for key, record in records.items():
        # The convergence record against the rates the schedule set at its evaluations,
        # steps 2 and 4 (the end's evaluation is the final report's).
        rates = dict(model_dir.read_scalars(run_dirs[key], "validation", "learning_rate"))
        assert sorted(rates) == [2, 4]
        expected_cuts = [s for s, previous in ((2, base.learning_rate), (4, rates[2]))
                         if rates[s] < 0.5 * previous]  # a cut divides by 10
        assert record["rate_cuts_at"] == expected_cuts
        assert record["train_top1"] == metrics[key]["train_sample"]["top1_error"]
        assert [s for s, _ in record["train_curve"]] == [2, 4, 6]
        assert record["train_curve"][-1][1] == pytest.approx(record["train_top1"])

    rows = ablations.table_rows(records, chosen, (0, 1))
    assert [r["measure"] for r in rows[:3]] == [
        "validation top-1 error (%, ten crops)", "validation top-5 error (%, ten crops)",
        "gap: validation minus training top-1 error (points, centre crop)"]
    measures = [("top1_error", "ten_crop_"), ("top5_error", "ten_crop_")]
    arm = "no_lrn"
    for j, (name, prefix) in enumerate(measures):
        row = rows[j]
        ours = [100 * metrics[("baseline", s)]["validation"][prefix + name] for s in (0, 1)]
        theirs = [100 * metrics[(arm, s)]["validation"][prefix + name] for s in (0, 1)]
        assert row["paper_choice_runs"] == pytest.approx(ours)
        assert row["changed_runs"] == pytest.approx(theirs)
        assert row["difference"] == pytest.approx(
            statistics.mean(ours) - statistics.mean(theirs))
    gap = rows[2]
    assert gap["changed_runs"] == pytest.approx(
        [100 * (metrics[(arm, s)]["validation"]["top1_error"]
                - metrics[(arm, s)]["train_sample"]["top1_error"]) for s in (0, 1)])
    assert (rows[0]["paper_difference"], rows[1]["paper_difference"]) == (-1.4, -1.2)

    arms = ablations.arm_rows(records, ["baseline", "no_lrn"], (0, 1))
    target = statistics.mean(metrics[("baseline", s)]["train_sample"]["top1_error"]
                             for s in (0, 1))
    assert arms[0]["target_train_top1"] == pytest.approx(100 * target)
    for row in arms:
        assert row["steps_to_target"] == [
            ablations.steps_to_reach(records[(row["arm"], s)]["train_curve"], target)
            for s in (0, 1)]
        assert row["converged"] == sum(records[(row["arm"], s)]["converged"] for s in (0, 1))

    output = str(tmp_path / "table.md")
    markdown = ablations.write_table(rows, "budget line", output, arms)
    with open(output) as f:
        assert f.read() == markdown
    row = rows[0]
    (m1, s1, _), (m2, s2, _) = row["paper_choice"], row["changed"]
    assert (f"| LRN on vs off (no LRN) | validation top-1 error (%, ten crops) | {m1:.2f} ± "
            f"{s1:.2f} | {m2:.2f} ± {s2:.2f} | {row['difference']:+.2f} ± "
            f"{row['standard_error']:.2f} | {row['verdict']} |") in markdown
    assert f"| no_lrn | {arms[1]['converged']} of 2 |" in markdown
    with open(str(tmp_path / "table.json")) as f:
        assert json.load(f)["budget"] == "budget line"

    ensemble = ablations.ensemble_of_seeds(run_dirs, (0, 1), base.data_dir, "validation")
    centre = ensemble["modes"]["center"]
    assert centre["single_top1"][0] == pytest.approx(statistics.mean(
        100 * metrics[("baseline", s)]["validation"]["top1_error"] for s in (0, 1)))
    # The ensemble's error by hand: the members' centre-crop softmax averaged in NumPy.
    from alexnet_tf import evaluate, inference

    members = [inference.load_model(run_dirs[("baseline", s)]) for s in (0, 1)]
    source, _ = inference.load_data_source(members)
    kept = evaluate.evaluate(members, source, "validation", keep_probabilities=True)
    average = (kept["probabilities"][(0, "center")] + kept["probabilities"][(1, "center")]) / 2
    by_hand = 100 * np.mean(np.argmax(average, axis=1) != kept["labels"])
    assert centre["ensemble_top1"] == pytest.approx(by_hand)

    def must_not_train(config, workdir):
        raise AssertionError(f"{workdir} was trained again")

    monkeypatch.setattr(trainer, "train_and_evaluate", must_not_train)
    assert ablations.run_ablations(base, workdir, chosen, seeds=(0, 1)) == run_dirs
    longer = dataclasses.replace(base, train_steps=8)
    with pytest.raises(trainer.TrainingError,
                       match=r"baseline/seed0 holds a finished run with other settings "
                             r"\(--train_steps=6 there, 8 now\)"):
        ablations.run_ablations(longer, workdir, chosen, seeds=(0, 1))


def test_a_run_stopped_before_its_end_stops_the_driver_resumably(tmp_path, monkeypatch):
    def interrupted(config, workdir):
        raise trainer.Interrupted("interrupted by SIGTERM at step 3")

    monkeypatch.setattr(trainer, "train_and_evaluate", interrupted)
    with pytest.raises(trainer.Interrupted, match="SIGTERM"):
        ablations.train_once(smoke_config(tmp_path), str(tmp_path / "run"))
    assert ablations._read_metrics(str(tmp_path / "run")) is None
