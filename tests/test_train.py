"""The training command end to end on the smoke configuration: what it leaves, resume
(exact, after SIGKILL), interruption, damaged checkpoints, the model directory's lock,
what may change on resume, and the refusals that must leave the directory as it was."""

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import config as config_lib
from alexnet_tf import export, inference, model_dir, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(REPO, "configs", "smoke.flags")
TWO_CPUS_DRIVER = os.path.join(REPO, "tests", "train_with_two_cpus.py")
EXIT_INTERRUPTED = 75


def smoke_config(tmp_path, **overrides):
    """configs/smoke.flags, read by the command's own loader, with its data under
    tmp_path and 2 epochs unless overridden."""
    overrides = {"data_dir": str(tmp_path / "data"), "epochs": 2, **overrides}
    config, _ = config_lib.load_flagfile(SMOKE, **overrides)
    return config


def train_command(*flags, driver=None):
    program = [driver] if driver else ["-m", "alexnet_tf.train"]
    return [sys.executable, *program, f"--flagfile={SMOKE}", *flags]


def run_train(*flags, timeout=240, driver=None):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(train_command(*flags, driver=driver), cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def scalar_tags(event_dir):
    tags = set()
    for name in os.listdir(event_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def checkpoint_tensors(checkpoint):
    """The run's state in a checkpoint; not the count of saves, which differs between a
    run that was interrupted and one that was not."""
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name not in ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter/.ATTRIBUTES/VARIABLE_VALUE")}


def latest_step(checkpoints):
    prefixes = model_dir.checkpoint_prefixes(str(checkpoints))
    return model_dir.checkpoint_step(prefixes[0]) if prefixes else 0


def directory_state(directory):
    """{relative path: bytes} of every file under directory."""
    state = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                state[os.path.relpath(path, directory)] = f.read()
    return state


def stated_smoke_error(text):
    """The smoke configuration's final validation top-1 error as a text states it."""
    found = re.search(r"ends at ([\d.]+)% validation top-1 error", text.replace("\n# ", " "))
    assert found, "the figure is not stated"
    return float(found.group(1)) / 100


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """configs/smoke.flags run as written, only its paths moved: a finished model dir."""
    tmp_path = tmp_path_factory.mktemp("smoke")
    config, _ = config_lib.load_flagfile(SMOKE, data_dir=str(tmp_path / "data"))
    workdir = str(tmp_path / "model")
    report = trainer.train_and_evaluate(config, workdir)
    return dict(config=config, workdir=workdir, report=report, tmp_path=tmp_path)


def test_smoke_config_trains_evaluates_checkpoints_and_exports(smoke_run):
    workdir, report = smoke_run["workdir"], smoke_run["report"]
    # 96 training images / 16 = 6 steps an epoch, 4 epochs; 32 validation images.
    validation = report["validation"]
    assert validation["examples"] == 32 and "test" not in report
    for key in ("top1_error", "top5_error", "ten_crop_top1_error", "ten_crop_top5_error"):
        assert 0.0 <= validation[key] <= 1.0
    assert validation["top5_error"] <= validation["top1_error"]
    assert model_dir.checkpoint_prefixes(os.path.join(workdir, "checkpoints"))[0].endswith("ckpt-24")
    with open(os.path.join(workdir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["step"] == 24 and metrics["finished"] and metrics["validation"] == validation
    assert os.path.exists(os.path.join(workdir, "export", "saved_model.pb"))
    assert os.path.exists(os.path.join(workdir, "dataset_stats.npz"))
    assert config_lib.load_flagfile(os.path.join(workdir, "flags.txt"))[0] == smoke_run["config"]

    train_tags = scalar_tags(os.path.join(workdir, "train"))
    assert {"loss", "top1_error", "top5_error", "learning_rate", "images_per_second",
            "conv1_filters", "augmented_inputs"} <= train_tags
    assert any(tag.startswith("conv1/") for tag in train_tags)  # weight histograms
    assert {"top1_error", "top5_error", "ten_crop_top1_error"} <= scalar_tags(
        os.path.join(workdir, "validation"))
    assert trainer.EPOCH_SECONDS_PER_STEP in train_tags
    assert trainer.EVALUATION_SECONDS in scalar_tags(os.path.join(workdir, "validation"))


def test_every_epoch_s_seconds_per_step_is_logged_for_the_stall_check(smoke_run):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import check_stalls

    readings = check_stalls.epoch_seconds_per_step(smoke_run["workdir"])
    # One reading per epoch at its last step; the first epoch without the first step.
    assert [step for step, _ in readings] == [6, 12, 18, 24]
    assert all(0 < seconds < 60 for _, seconds in readings)


@pytest.mark.parametrize("seconds,ok", [
    ([1.0, 1.1, 0.9, 1.0], True),
    ([1.0, 1.0, 1.36, 1.0, 1.0], False),  # 1.36x the median
    ([1.0, 1.34, 1.0], True),
    ([1.0, 2.0], False),  # too few epochs to judge
])
def test_the_stall_check_flags_an_epoch_over_the_limit(seconds, ok):
    sys.path.insert(0, os.path.join(REPO, "tools"))
    import check_stalls

    lines, passed = check_stalls.check(list(enumerate(seconds)), limit=1.35)
    assert passed == ok
    assert sum("STALL" in line for line in lines) == (0 if ok or len(seconds) < 3 else 1)


def test_the_wall_time_breakdown_adds_up_to_the_total():
    wall_time = trainer.WallTime(started=time.perf_counter() - 10.0)
    wall_time.seconds["steps"] = 6.0
    wall_time.seconds["evaluations"] = 1.5
    parts, total = wall_time.breakdown()
    assert list(parts) == list(trainer.WallTime.PARTS)
    assert 10.0 <= total < 11.0
    assert parts["start-up"] == pytest.approx(total - 7.5)
    assert sum(parts.values()) == pytest.approx(total)
    assert wall_time.line().startswith(f"Wall time {total:.0f} s: start-up ")


def test_the_smoke_figure_stated_in_the_readme_and_flagfile_is_the_one_reached(smoke_run):
    reached = smoke_run["report"]["validation"]["top1_error"]
    with open(SMOKE) as f:
        assert stated_smoke_error(f.read()) == pytest.approx(reached)
    with open(os.path.join(REPO, "README.md")) as f:
        assert stated_smoke_error(f.read()) == pytest.approx(reached)


# ----------------------------------------------------------------------------------
# Exact resume.


def kill_mid_epoch(flags, checkpoints, driver):
    """Starts the command, SIGKILLs it right after a checkpoint inside an epoch of 6
    steps (not at an epoch's end), and returns the step of that checkpoint."""
    process = subprocess.Popen(train_command(*flags, driver=driver), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None:
        if latest_step(checkpoints) % 6 in (2, 3, 4):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return latest_step(checkpoints)


@pytest.mark.parametrize("strategy", ["one_device", "towers"])
def test_a_run_killed_mid_epoch_and_resumed_ends_with_the_uninterrupted_weights(
        tmp_path, strategy):
    # Dropout on (the smoke config's 0.5): its masks must continue where they stopped.
    flags = [f"--data_dir={tmp_path / 'data'}", "--epochs=2", "--checkpoint_every_steps=1",
             "--export=false", "--eval_ten_crop=false", f"--strategy={strategy}"]
    if strategy == "towers":
        flags.append("--tower_devices=/cpu:0,/cpu:1")
    uninterrupted = run_train(f"--model_dir={tmp_path / 'a'}", *flags, driver=TWO_CPUS_DRIVER)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]

    resumed_dir = tmp_path / "b"
    killed_at = kill_mid_epoch([f"--model_dir={resumed_dir}", *flags],
                               resumed_dir / "checkpoints", TWO_CPUS_DRIVER)
    assert 0 < killed_at < 12 and killed_at % 6
    resumed = run_train(f"--model_dir={resumed_dir}", *flags, driver=TWO_CPUS_DRIVER)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resumed from {resumed_dir}/checkpoints/ckpt-" in resumed.stdout

    # Bit for bit: weights, velocities, schedule, step and the dropout generators.
    reference = checkpoint_tensors(str(tmp_path / "a" / "checkpoints" / "ckpt-12"))
    final = checkpoint_tensors(str(resumed_dir / "checkpoints" / "ckpt-12"))
    assert final.keys() == reference.keys()
    assert any(name.startswith("dropout/") for name in final)
    for name, value in reference.items():
        np.testing.assert_array_equal(final[name], value, err_msg=name)
    with open(tmp_path / "a" / "metrics.json") as f, open(resumed_dir / "metrics.json") as g:
        assert json.load(f)["validation"] == json.load(g)["validation"]


# ----------------------------------------------------------------------------------
# Stopping, failing, and what the directory is left holding.


def test_sigterm_checkpoints_and_exits_non_zero_saying_resumable(tmp_path):
    workdir = tmp_path / "model"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        train_command(f"--model_dir={workdir}", f"--data_dir={tmp_path / 'data'}",
                      "--epochs=50", "--checkpoint_every_steps=1000", "--export=false"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "train").exists():
        time.sleep(0.2)
    time.sleep(3)  # inside the first epochs
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED, output[-3000:]
    stopped = re.search(r"interrupted by SIGTERM at step (\d+) .*saved (\S+)\. The run is "
                        r"resumable: rerun the same command", output)
    assert stopped, output[-3000:]
    assert "final validation" not in output
    step = int(stopped.group(1))
    assert stopped.group(2) == str(workdir / "checkpoints" / f"ckpt-{step}")
    assert latest_step(workdir / "checkpoints") == step < 300
    assert not (workdir / "export").exists()


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    workdir = str(tmp_path / "model")
    with pytest.raises(trainer.TrainingError, match=r"loss became (nan|inf).*last good checkpoint"):
        trainer.train_and_evaluate(
            smoke_config(tmp_path, learning_rate=1e6, checkpoint_every_steps=1, epochs=5), workdir
        )
    for prefix in model_dir.checkpoint_prefixes(os.path.join(workdir, "checkpoints")):
        for name, value in checkpoint_tensors(prefix).items():  # every one holds finite weights
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


def damage(prefix, how):
    data_file = prefix + ".data-00000-of-00001"
    if how == "truncated data":
        with open(data_file, "r+b") as f:
            f.truncate(os.path.getsize(data_file) // 2)
    elif how == "flipped bit":
        with open(data_file, "r+b") as f:
            f.seek(os.path.getsize(data_file) // 3)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x10]))
    else:
        with open(prefix + ".index", "r+b") as f:
            f.truncate(os.path.getsize(prefix + ".index") // 2)


@pytest.fixture(scope="module")
def checkpointed(tmp_path_factory):
    """One epoch of the smoke run, checkpointed at steps 2, 4 and 6."""
    tmp_path = tmp_path_factory.mktemp("checkpointed")
    config = smoke_config(tmp_path, epochs=1, checkpoint_every_steps=2, export=False,
                          eval_ten_crop=False)
    workdir = str(tmp_path / "model")
    trainer.train_and_evaluate(config, workdir)
    return dict(config=config, workdir=workdir, tmp_path=tmp_path)


@pytest.mark.parametrize("how", ["truncated data", "flipped bit", "truncated index"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        checkpointed, tmp_path, how, capsys):
    workdir = str(tmp_path / "model")
    shutil.copytree(checkpointed["workdir"], workdir)
    checkpoints = os.path.join(workdir, "checkpoints")
    damaged = os.path.join(checkpoints, "ckpt-6")
    damage(damaged, how)
    damaged_bytes = directory_state(checkpoints)

    # The tools use the newest intact checkpoint too, and say which they passed over.
    exported = export.export_from_model_dir(workdir, str(tmp_path / "export"))
    assert inference.load_model(exported).num_classes == 4
    output = capsys.readouterr().out
    assert f"warning: checkpoint {damaged} is damaged (" in output
    assert f"Using {os.path.join(checkpoints, 'ckpt-4')}, the newest intact checkpoint." in output
    assert directory_state(checkpoints) == damaged_bytes  # tools move nothing

    trainer.train_and_evaluate(dataclasses_replace(checkpointed["config"], epochs=2), workdir)
    output = capsys.readouterr().out
    assert f"warning: checkpoint {damaged} is damaged (" in output
    assert f"moved to {os.path.join(checkpoints, 'damaged')}" in output
    assert f"Resumed from {os.path.join(checkpoints, 'ckpt-4')}: epoch 1, step 4." in output
    kept = os.path.join(checkpoints, "damaged")
    for name, contents in damaged_bytes.items():
        if name.startswith("ckpt-6."):
            with open(os.path.join(kept, name), "rb") as f:
                assert f.read() == contents  # set aside as it was, not deleted
    assert latest_step(checkpoints) == 12
    assert tf.train.latest_checkpoint(checkpoints).endswith("ckpt-12")


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


def test_no_intact_checkpoint_fails_in_one_line_naming_the_files(checkpointed, tmp_path):
    workdir = str(tmp_path / "model")
    shutil.copytree(checkpointed["workdir"], workdir)
    for prefix in model_dir.checkpoint_prefixes(os.path.join(workdir, "checkpoints")):
        damage(prefix, "truncated index")
    result = subprocess.run(
        [sys.executable, "-m", "alexnet_tf.export", f"--model_dir={workdir}"], cwd=REPO,
        capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 1
    assert f"error: No intact checkpoint in {workdir}/checkpoints" in result.stderr
    assert "Traceback" not in result.stderr
    for step in (2, 4, 6):
        assert f"checkpoint {workdir}/checkpoints/ckpt-{step} is damaged" in result.stdout


def test_batch_larger_than_the_training_set_is_refused_before_anything_is_written(tmp_path):
    workdir = tmp_path / "model"
    result = run_train(f"--model_dir={workdir}", f"--data_dir={tmp_path / 'data'}",
                       "--batch_size=97")
    assert result.returncode == 1
    assert ("error: --batch_size=97 is larger than the 96 training images of "
            f"{tmp_path / 'data'}: not one step could be taken") in result.stderr
    assert not workdir.exists()


def test_a_refused_start_leaves_the_model_directory_exactly_as_it_was(checkpointed, tmp_path):
    workdir = tmp_path / "model"
    shutil.copytree(checkpointed["workdir"], workdir)
    flagfile = workdir / "flags.txt"
    before = directory_state(workdir)
    # In the library, as the command calls it (the command's exit status 1 for a refusal
    # is the test above's).
    refusals = (
        (dict(towers=1), "--towers: 2 in the model directory, 1 now"),
        (dict(seed=3), "--seed: 0 in the model directory, 3 now"),
        (dict(data_dir=""), "--dataset=synthetic needs --data_dir"),
        (dict(batch_size=200), "--batch_size=200 is larger than the 96 training images"),
    )
    for overrides, message in refusals:
        config, _ = config_lib.load_flagfile(str(flagfile), **overrides)
        with pytest.raises(trainer.TrainingError, match=re.escape(message)):
            trainer.train_and_evaluate(config, str(workdir))
        assert directory_state(workdir) == before, overrides
    # The directory's own flagfile still reruns the run from the command line; the
    # copy's flags.txt names the directory it was copied from: --model_dir after it.
    rerun = run_train(f"--flagfile={flagfile}", f"--model_dir={workdir}", "--epochs=2")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from" in rerun.stdout


def test_changed_settings_on_resume_take_effect_and_are_recorded(checkpointed, tmp_path, capsys):
    workdir = str(tmp_path / "model")
    shutil.copytree(checkpointed["workdir"], workdir)
    config = dataclasses_replace(checkpointed["config"], epochs=2, learning_rate=0.004,
                                 log_every_steps=1)
    trainer.train_and_evaluate(config, workdir)
    output = capsys.readouterr().out
    assert "--learning_rate 0.01 -> 0.004" in output and "--epochs 1 -> 2" in output
    assert "The learning rate is now 0.004." in output
    series = {}
    for name in os.listdir(os.path.join(workdir, "train")):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, "train", name)):
            for value in event.summary.value:
                if value.tag == "learning_rate":
                    series[event.step] = float(tf.make_ndarray(value.tensor))
    assert [series[s] for s in (2, 4, 6)] == pytest.approx([0.01] * 3)
    assert [series[s] for s in range(7, 13)] == pytest.approx([0.004] * 6)
    assert model_dir.load_config(workdir) == config
    assert config_lib.load_flagfile(os.path.join(workdir, "flags.txt"))[0] == config


def test_a_second_run_on_a_locked_directory_is_refused_and_a_dead_holder_does_not_block(
        tmp_path):
    workdir = tmp_path / "model"
    flags = [f"--model_dir={workdir}", f"--data_dir={tmp_path / 'data'}", "--export=false"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    holder = subprocess.Popen(train_command(*flags, "--epochs=200"), cwd=REPO, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (workdir / "train").exists():
        time.sleep(0.2)
    second = run_train(*flags, "--epochs=200")
    assert second.returncode == 1
    assert re.search(rf"error: {workdir} is in use by process {holder.pid} on \S+ \(started ",
                     second.stderr), second.stderr[-2000:]
    assert len(second.stderr.strip().splitlines()) == 1 or "Traceback" not in second.stderr
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    third = run_train(*flags, "--epochs=1")
    assert third.returncode == 0, third.stderr[-3000:]


def test_model_dir_of_another_configuration_is_refused(checkpointed, tmp_path):
    workdir = str(tmp_path / "model")
    shutil.copytree(checkpointed["workdir"], workdir)
    with pytest.raises(trainer.TrainingError, match="crop_size: 32 in the model directory, 28 now"):
        trainer.train_and_evaluate(dataclasses_replace(checkpointed["config"], crop_size=28),
                                   workdir)


def test_unwritable_model_dir_and_missing_data_fail_at_start(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(trainer.TrainingError, match="not writable"):
        model_dir.check_writable(str(blocker / "model"))
    missing = tmp_path / "no_such_dir"
    with pytest.raises(trainer.TrainingError, match=str(missing)):
        trainer.train_and_evaluate(
            smoke_config(tmp_path, dataset="image_folder", data_dir=str(missing)),
            str(tmp_path / "model"),
        )
    assert not (tmp_path / "model").exists()


def test_bad_flags_fail_before_any_work(tmp_path):
    workdir = tmp_path / "model"
    unknown = run_train(f"--model_dir={workdir}", "--no_such_flag=1")
    assert unknown.returncode != 0 and "no_such_flag" in unknown.stderr
    contradictory = run_train(f"--model_dir={workdir}", "--crop_size=64")
    assert contradictory.returncode != 0
    assert "--crop_size=64 is larger than --image_size=36" in contradictory.stderr
    assert not workdir.exists()


def last_line_only(result):
    """The command's own stderr (TensorFlow's start-up lines apart) is one line."""
    ours = [line for line in result.stderr.splitlines() if not line.startswith(("I0000", "W0000",
                                                                                 "WARNING:"))]
    assert len(ours) == 1 and ours[0].startswith("error: "), result.stderr
    return ours[0]


def test_every_flag_error_is_one_line_with_exit_status_1(tmp_path):
    workdir = tmp_path / "model"
    latin = tmp_path / "latin.flags"
    latin.write_bytes(b"--epochs=3\n--model_size=caf\xe9\n")
    undecodable = run_train(f"--flagfile={latin}", f"--model_dir={workdir}")
    assert undecodable.returncode == 1
    assert last_line_only(undecodable) == (
        f"error: --flagfile={latin} is not UTF-8 text (byte 27: b'\\xe9'); a flagfile holds "
        "one --flag=value per line.")
    missing = run_train(f"--flagfile={tmp_path / 'none.flags'}", f"--model_dir={workdir}")
    assert missing.returncode == 1 and "none.flags" in last_line_only(missing)
    several = run_train(f"--model_dir={workdir}", "--epochs=-1", "--batch_size=0")
    assert several.returncode == 1
    line = last_line_only(several)
    assert "--batch_size=0 must be at least 1." in line and "--epochs=-1 must be at least 1" in line
    assert not workdir.exists()


# Decoded into memory (the default for small data), each training image is read once;
# from its file, by the statistics pass and by each of the two epochs. The validation
# split's centre crops in memory are made once; from the files, at each of the run's
# two evaluations (the first epoch's end and the final report).
def test_one_log_line_per_corrupt_file_naming_it_and_why(tmp_path):
    data_dir = tmp_path / "data"
    from alexnet_tf import data

    data.ensure_synthetic(str(data_dir))
    (data_dir / "train" / "class_0" / "garbage.png").write_bytes(b"not an image at all")
    good = (data_dir / "train" / "class_1" / "000024.png").read_bytes()
    (data_dir / "train" / "class_1" / "truncated.png").write_bytes(good[:120])
    (data_dir / "val" / "class_2" / "empty.png").write_bytes(b"")
    finals = []
    for cache_images_mb, passes, validation_passes in ((256, 1, 1), (0, 3, 2)):
        result = run_train(f"--model_dir={tmp_path / f'model_{cache_images_mb}'}",
                           f"--data_dir={data_dir}", "--epochs=2", "--export=false",
                           "--eval_ten_crop=false", f"--cache_images_mb={cache_images_mb}")
        assert result.returncode == 0, result.stderr[-3000:]
        for name, reason, count in (
                ("train/class_0/garbage.png", "Unknown image file format", passes),
                ("train/class_1/truncated.png", "PNG", passes),
                ("val/class_2/empty.png", "empty", validation_passes)):
            lines = [line for line in result.stderr.splitlines() if name in line]
            assert len(lines) == count, result.stderr[-3000:]
            for line in lines:
                assert re.search(rf"Skipped {name}: .*{reason}.*\(\d+ undecodable so far\)",
                                 line), line
        assert "ignore_errors" not in result.stderr and "Traceback" not in result.stderr
        finals.append(re.search(r"final validation: .*", result.stdout).group(0))
    # The run is the same either way, its final errors over the same 32 images too.
    assert finals[0] == finals[1] and finals[0].endswith("(32 images)"), finals


def test_the_test_split_never_reaches_a_decision_and_is_reported_at_the_end(tmp_path):
    from alexnet_tf import data, evaluate

    plain, with_test = tmp_path / "plain", tmp_path / "with_test"
    data.ensure_synthetic(str(plain))
    shutil.copytree(plain, with_test)
    # A test split whose labels are all wrong: were it to reach the schedule or any
    # choice, the runs would part.
    classes = sorted(os.listdir(plain / "val"))
    for k, name in enumerate(classes):
        shutil.copytree(plain / "val" / name, with_test / "test" / classes[(k + 1) % 4])
    runs = {}
    for name, data_dir in (("plain", plain), ("with_test", with_test)):
        config = smoke_config(tmp_path, data_dir=str(data_dir), epochs=3, plateau_patience=1,
                              eval_every_steps=3, checkpoint_every_steps=3)
        workdir = str(tmp_path / f"model_{name}")
        runs[name] = (trainer.train_and_evaluate(config, workdir), workdir)
    (plain_report, plain_dir), (report, workdir) = runs["plain"], runs["with_test"]
    final = model_dir.checkpoint_prefixes(os.path.join(workdir, "checkpoints"))[0]
    reference = checkpoint_tensors(model_dir.checkpoint_prefixes(
        os.path.join(plain_dir, "checkpoints"))[0])
    for name, value in checkpoint_tensors(final).items():
        np.testing.assert_array_equal(value, reference[name], err_msg=name)
    assert report["validation"] == plain_report["validation"] and "test" not in plain_report
    assert report["test"]["examples"] == 32 and report["test"]["top1_error"] >= 0.5

    # alexnet_tf.evaluate on the test split gives the same figures, from the model
    # directory (both crop modes) and from its export.
    source, _ = inference.load_data_source([inference.load_model(workdir)])
    result = evaluate.evaluate([inference.load_model(workdir),
                                inference.load_model(os.path.join(workdir, "export"))],
                               source, split="test")
    for errors in (result["models"][0]["center"], result["models"][1]["center"]):
        assert errors == pytest.approx({k: report["test"][k] for k in ("top1_error", "top5_error")})
    assert result["models"][0]["ten_crop"] == pytest.approx(
        {k: report["test"][f"ten_crop_{k}"] for k in ("top1_error", "top5_error")})


def test_the_training_sample_error_is_evaluate_s_on_the_first_images_of_the_first_epoch(
        tmp_path):
    from alexnet_tf import evaluate

    config = smoke_config(tmp_path, epochs=1, export=False, eval_ten_crop=False,
                          train_error_examples=40)
    workdir = str(tmp_path / "model")
    report = trainer.train_and_evaluate(config, workdir)
    assert report["train_sample"]["examples"] == 40
    assert model_dir.read_metrics(workdir)["train_sample"] == report["train_sample"]
    # alexnet_tf.evaluate, another pipeline, on the training split's first 40 images in
    # the seed's first-epoch order (read from their files, not the trainer's memory).
    source, _ = inference.load_data_source([inference.load_model(workdir)])
    result = evaluate.evaluate([inference.load_model(workdir)], source, split="train",
                               max_examples=40)
    assert result["examples"] == 40
    assert result["models"][0]["center"] == pytest.approx(
        {k: report["train_sample"][k] for k in ("top1_error", "top5_error")})
    logged = model_dir.read_scalars(workdir, model_dir.TRAIN_SAMPLE_LOGS, "top1_error")
    assert logged[-1] == (model_dir.read_metrics(workdir)["step"],
                          pytest.approx(report["train_sample"]["top1_error"]))


def test_end_at_last_plateau_ends_the_run_where_the_error_stops_improving_after_the_last_cut(
        tmp_path):
    config = smoke_config(tmp_path, epochs=20, eval_every_steps=2, plateau_patience=1,
                          lr_reductions=1, end_at_last_plateau=True, export=False,
                          eval_ten_crop=False, checkpoint_every_steps=2)
    budget = config.epochs * (96 // config.batch_size)  # the synthetic set's 96 images
    workdir = str(tmp_path / "model")
    trainer.train_and_evaluate(config, workdir)
    metrics = model_dir.read_metrics(workdir)
    ended = metrics["step"]
    assert metrics["finished"] and ended < budget
    # The schedule's record at its evaluations: one cut, then an evaluation that did not
    # improve on the best error by min_delta, at the last step.
    errors = dict(model_dir.read_scalars(workdir, "validation", "top1_error"))
    rates = model_dir.read_scalars(workdir, "validation", "learning_rate")
    assert rates[-1][0] == ended
    befores = [config.learning_rate] + [rate for _, rate in rates[:-1]]
    cut = [step for (step, rate), before in zip(rates, befores) if rate < 0.5 * before]
    assert len(cut) == 1 and cut[0] < ended
    best_before = min(e for step, e in errors.items() if step < ended)
    assert errors[ended] > best_before - config.plateau_min_delta
    # Run again: it is finished, and stays where it ended.
    trainer.train_and_evaluate(config, workdir)
    assert model_dir.read_metrics(workdir)["step"] == ended
    assert config_lib.validate(dataclasses.replace(config, schedule="step")) == [
        "--end_at_last_plateau needs --schedule=plateau, not step."]
