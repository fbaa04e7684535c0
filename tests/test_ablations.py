"""The ablation driver: its statistics by hand, and its table against the run
directories it wrote with two seeds, on the smoke configuration."""

import dataclasses
import json
import math
import os
import statistics

import pytest
import tensorflow as tf
from test_train import smoke_config

from alexnet_tf import ablations, trainer


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


def test_driver_with_two_seeds_writes_a_table_equal_to_its_runs(tmp_path, monkeypatch):
    base = smoke_config(tmp_path, train_steps=3, eval_every_steps=3, export=False,
                        eval_ten_crop=True)
    chosen = [ablations.ABLATIONS_BY_NAME["tanh"], ablations.ABLATIONS_BY_NAME["no_lrn"]]
    workdir = str(tmp_path / "ablations")
    run_dirs = ablations.run_ablations(base, workdir, chosen, seeds=(0, 1))

    assert set(run_dirs) == {(arm, seed) for arm in ("baseline", "tanh", "no_lrn")
                             for seed in (0, 1)}
    metrics, configs = {}, {}
    for key, run_dir in run_dirs.items():
        assert run_dir == os.path.join(workdir, key[0], f"seed{key[1]}")
        with open(os.path.join(run_dir, "metrics.json")) as f:
            metrics[key] = json.load(f)
        with open(os.path.join(run_dir, "config.json")) as f:
            configs[key] = json.load(f)
        assert metrics[key]["step"] == 3 and metrics[key]["finished"]
        assert configs[key]["seed"] == key[1]
        assert configs[key]["stats_file"] == os.path.join(workdir, "dataset_stats.npz")
        plugins, tags = hparams_sessions(os.path.join(run_dir, "hparams"))
        assert "hparams" in plugins and {"final/top1_error", "final/top5_error"} <= tags
    assert configs[("tanh", 0)]["activation"] == "tanh" and configs[("no_lrn", 1)]["lrn"] is False

    rows = ablations.table_rows(run_dirs, chosen, (0, 1))
    assert [r["measure"] for r in rows[:2]] == [
        "validation top-1 error (%, ten crops)", "validation top-5 error (%, ten crops)"]
    for row, (arm, k) in zip(rows, [("tanh", 1), ("tanh", 5), ("no_lrn", 1), ("no_lrn", 5)]):
        ours = [100 * metrics[("baseline", s)]["validation"][f"ten_crop_top{k}_error"]
                for s in (0, 1)]
        theirs = [100 * metrics[(arm, s)]["validation"][f"ten_crop_top{k}_error"]
                  for s in (0, 1)]
        assert row["paper_choice_runs"] == pytest.approx(ours)
        assert row["changed_runs"] == pytest.approx(theirs)
        assert row["difference"] == pytest.approx(statistics.mean(ours) - statistics.mean(theirs))
    assert (rows[2]["paper_difference"], rows[3]["paper_difference"]) == (-1.4, -1.2)

    output = str(tmp_path / "table.md")
    markdown = ablations.write_table(rows, "budget line", output)
    with open(output) as f:
        assert f.read() == markdown
    row = rows[2]
    (m1, s1, _), (m2, s2, _) = row["paper_choice"], row["changed"]
    assert (f"| LRN on vs off (no LRN) | validation top-1 error (%, ten crops) | {m1:.2f} ± "
            f"{s1:.2f} | {m2:.2f} ± {s2:.2f} | {row['difference']:+.2f} ± "
            f"{row['standard_error']:.2f} |") in markdown
    with open(str(tmp_path / "table.json")) as f:
        assert json.load(f)["budget"] == "budget line"

    def must_not_train(config, workdir):
        raise AssertionError(f"{workdir} was trained again")

    monkeypatch.setattr(trainer, "train_and_evaluate", must_not_train)
    assert ablations.run_ablations(base, workdir, chosen, seeds=(0, 1)) == run_dirs
    longer = dataclasses.replace(base, train_steps=6)
    with pytest.raises(trainer.TrainingError,
                       match=r"baseline/seed0 holds a finished run with other settings "
                             r"\(--train_steps=3 there, 6 now\)"):
        ablations.run_ablations(longer, workdir, chosen, seeds=(0, 1))


def test_a_run_stopped_before_its_end_stops_the_driver_resumably(tmp_path, monkeypatch):
    def interrupted(config, workdir):
        raise trainer.Interrupted("interrupted by SIGTERM at step 3")

    monkeypatch.setattr(trainer, "train_and_evaluate", interrupted)
    with pytest.raises(trainer.Interrupted, match="SIGTERM"):
        ablations.train_once(smoke_config(tmp_path), str(tmp_path / "run"))
    assert ablations._read_metrics(str(tmp_path / "run")) is None
