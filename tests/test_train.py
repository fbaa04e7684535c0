"""The training command end to end on the smoke configuration, resume, and its errors."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.flags")


def smoke_config(tmp_path, **overrides):
    """configs/smoke.flags as a TrainConfig, with its data under tmp_path."""
    values = dict(
        dataset="synthetic", data_dir=str(tmp_path / "data"), model_size="small",
        image_size=36, crop_size=32, batch_size=16, epochs=2, eval_batch_size=16,
        checkpoint_every_steps=4, log_every_steps=2,
    )
    values.update(overrides)
    return trainer.TrainConfig(**values)


def run_train(*flags, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "alexnet_tf.train", f"--flagfile={SMOKE}", *flags],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def scalar_tags(event_dir):
    tags = set()
    for name in os.listdir(event_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_smoke_config_trains_evaluates_checkpoints_and_exports(tmp_path):
    workdir = str(tmp_path / "model")
    metrics = trainer.train_and_evaluate(smoke_config(tmp_path), workdir)

    # 96 training images / 16 = 6 steps an epoch, 2 epochs; 32 validation images.
    assert metrics["examples"] == 32
    for key in ("top1_error", "top5_error", "ten_crop_top1_error", "ten_crop_top5_error"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["top5_error"] <= metrics["top1_error"]
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert latest.endswith("ckpt-12")
    with open(os.path.join(workdir, "metrics.json")) as f:
        assert json.load(f)["step"] == 12
    assert os.path.exists(os.path.join(workdir, "export", "saved_model.pb"))
    assert os.path.exists(os.path.join(workdir, "dataset_stats.npz"))

    train_tags = scalar_tags(os.path.join(workdir, "train"))
    assert {"loss", "top1_error", "top5_error", "learning_rate", "images_per_second",
            "conv1_filters", "augmented_inputs"} <= train_tags
    assert any(tag.startswith("conv1/") for tag in train_tags)  # weight histograms
    assert {"top1_error", "top5_error", "ten_crop_top1_error"} <= scalar_tags(
        os.path.join(workdir, "validation"))


def test_sigkill_mid_run_then_rerun_resumes_to_the_same_step_count(tmp_path):
    workdir, data_dir = tmp_path / "model", tmp_path / "data"
    flags = [f"--model_dir={workdir}", f"--data_dir={data_dir}", "--epochs=3",
             "--checkpoint_every_steps=2", "--export=false"]
    process = subprocess.Popen(
        [sys.executable, "-m", "alexnet_tf.train", f"--flagfile={SMOKE}", *flags],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    checkpoints = workdir / "checkpoints"
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        latest = tf.train.latest_checkpoint(str(checkpoints)) if checkpoints.exists() else None
        if latest and int(latest.rsplit("-", 1)[1]) >= 4:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = int(tf.train.latest_checkpoint(str(checkpoints)).rsplit("-", 1)[1])
    assert killed_at < 18

    result = run_train(*flags)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from {checkpoints}/ckpt-{killed_at}" in result.stdout
    with open(workdir / "metrics.json") as f:
        assert json.load(f)["step"] == 18
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-18")


def test_sigterm_saves_a_checkpoint_and_stops(tmp_path):
    workdir = tmp_path / "model"
    process = subprocess.Popen(
        [sys.executable, "-m", "alexnet_tf.train", f"--flagfile={SMOKE}",
         f"--model_dir={workdir}", f"--data_dir={tmp_path / 'data'}", "--epochs=50",
         "--checkpoint_every_steps=1000", "--export=false"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "train").exists():
        time.sleep(0.2)
    time.sleep(3)  # inside the first epochs
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output[-3000:]
    assert "SIGTERM: saved" in output
    latest = tf.train.latest_checkpoint(str(workdir / "checkpoints"))
    assert latest is not None and int(latest.rsplit("-", 1)[1]) < 300


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "model")
    with pytest.raises(trainer.TrainingError, match=r"loss became (nan|inf).*last good checkpoint"):
        trainer.train_and_evaluate(
            smoke_config(tmp_path, learning_rate=1e6, checkpoint_every_steps=1, epochs=5), workdir
        )
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest is not None:  # every checkpoint written holds finite weights
        reader = tf.train.load_checkpoint(latest)
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.all(np.isfinite(value)), name


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path / "model")
    trainer.train_and_evaluate(smoke_config(tmp_path, epochs=1, export=False), workdir)
    before = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))

    def disk_full(self, checkpoint_number=None):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
    with pytest.raises(trainer.TrainingError, match=r"No space left.*ckpt-6, is intact"):
        trainer.train_and_evaluate(smoke_config(tmp_path, epochs=2, export=False), workdir)
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")) == before
    tf.train.load_checkpoint(before)  # still readable


def test_model_dir_of_another_configuration_is_refused(tmp_path):
    workdir = str(tmp_path / "model")
    trainer.train_and_evaluate(smoke_config(tmp_path, epochs=1, export=False), workdir)
    with pytest.raises(trainer.TrainingError, match="crop_size: 32 in the directory, 28 now"):
        trainer.train_and_evaluate(smoke_config(tmp_path, crop_size=28, export=False), workdir)


def test_unwritable_model_dir_and_missing_data_fail_at_start(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(trainer.TrainingError, match="not writable"):
        trainer.check_workdir(str(blocker / "model"))
    missing = tmp_path / "no_such_dir"
    with pytest.raises(trainer.TrainingError, match=str(missing)):
        trainer.train_and_evaluate(
            smoke_config(tmp_path, dataset="image_folder", data_dir=str(missing)),
            str(tmp_path / "model"),
        )


def test_bad_flags_fail_before_any_work(tmp_path):
    workdir = tmp_path / "model"
    unknown = run_train(f"--model_dir={workdir}", "--no_such_flag=1")
    assert unknown.returncode != 0 and "no_such_flag" in unknown.stderr
    contradictory = run_train(f"--model_dir={workdir}", "--crop_size=64")
    assert contradictory.returncode != 0
    assert "--crop_size=64 is larger than --image_size=36" in contradictory.stderr
    assert not workdir.exists()
