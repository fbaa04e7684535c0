"""Data parallelism and mixed precision, against one device and the paper's update.

The reference for every training step is the same network with no strategy: a plain
GradientTape on the whole global batch's mean loss and the paper's update written out
in float64 NumPy. Multi-worker runs are two processes on 127.0.0.1; MirroredStrategy
runs on the two logical CPUs of conftest.py.
"""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

import multi_worker_driver as driver
from alexnet_tf import dataset_stats, distribute, input_pipeline, optim, trainer
from alexnet_tf import model_dir
from test_export import in_memory_predictions
from test_train import SMOKE, smoke_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
TWO_CPUS = ("/cpu:0", "/cpu:1")


def reference_steps(steps, dtype_policy="float32", loss_scale=1.0):
    """(loss, top-1 error, weights after the step) of each step on `driver.fixed_batch`:
    gradients of the mean loss over the whole batch on a network with no strategy (of
    the loss times `loss_scale`, divided by it), then v <- 0.9 v - 0.0005 lr w - lr g
    (no decay on biases); w <- w + v in float64."""
    model = model_dir.create_model(driver.model_config(), driver.NUM_CLASSES,
                                 tower_devices=(None, None), dtype_policy=dtype_policy)
    variables = model.trainable_variables
    weights = [v.numpy().astype(np.float64) for v in variables]
    velocities = [np.zeros_like(w) for w in weights]
    lr = driver.LEARNING_RATE
    history = []
    for step in range(steps):
        images, labels = driver.fixed_batch(step)
        for variable, w in zip(variables, weights):
            variable.assign(w.astype(np.float32))
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
            scaled_loss = loss * loss_scale
        gradients = [g.numpy().astype(np.float64) / loss_scale
                     for g in tape.gradient(scaled_loss, variables)]
        top1 = float(np.mean(np.argmax(logits.numpy(), axis=1) != labels))
        for i, (w, g) in enumerate(zip(weights, gradients)):
            decay = 0.0005 if w.ndim > 1 else 0.0
            velocities[i] = 0.9 * velocities[i] - decay * lr * w - lr * g
            weights[i] = w + velocities[i]
        history.append((float(loss), top1, [w.copy() for w in weights]))
    return history


def strategy_steps(strategy, steps):
    """The same steps through the trainer's train step under `strategy`."""
    with strategy.scope():
        model = model_dir.create_model(driver.model_config(), driver.NUM_CLASSES,
                                     tower_devices=(None, None))
        optimizer = optim.PaperMomentumSGD(model.trainable_variables)
    train_step = trainer.make_train_step(model, optimizer, strategy, driver.GLOBAL_BATCH)
    learning_rate = tf.Variable(driver.LEARNING_RATE, trainable=False)
    history = []
    for step in range(steps):
        images, labels = distribute.split_global_batch(strategy, *driver.fixed_batch(step))
        loss, top1, _, _, applied = train_step(images, labels, learning_rate, tf.constant(0.0))
        assert bool(applied)
        history.append((float(loss), float(top1), [v.numpy() for v in model.trainable_variables]))
    return history


@pytest.fixture(scope="module")
def reference():
    return reference_steps(STEPS)


def assert_same_steps(history, reference):
    for (loss, top1, weights), (ref_loss, ref_top1, ref_weights) in zip(history, reference):
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
        assert top1 == pytest.approx(ref_top1)
        for w, ref_w in zip(weights, ref_weights):
            np.testing.assert_allclose(w, ref_w, rtol=1e-4, atol=2e-6)
    moved = max(np.abs(w - w0).max() for w, w0 in zip(reference[-1][2], reference[0][2]))
    assert moved > 1e-3  # the steps change the weights by far more than the tolerance


def test_mirrored_over_two_cpus_and_one_device_take_the_paper_steps(reference):
    mirrored = tf.distribute.MirroredStrategy(list(TWO_CPUS))
    assert mirrored.num_replicas_in_sync == 2
    assert_same_steps(strategy_steps(mirrored, STEPS), reference)
    assert_same_steps(strategy_steps(tf.distribute.OneDeviceStrategy("/cpu:0"), STEPS), reference)


def launch_workers(args, tf_configs, log_dir, tag):
    """A process `python args...` per worker of a TF_CONFIG cluster."""
    processes = {}
    for index, tf_config in enumerate(tf_configs):
        env = dict(os.environ, TF_CONFIG=tf_config, TF_CPP_MIN_LOG_LEVEL="2")
        with open(log_dir / f"{tag}{index}.log", "w") as log:
            processes[index] = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env,
                                                stdout=log, stderr=subprocess.STDOUT)
    return processes


def wait_all(processes, log_dir, tag, timeout=180):
    """The logs of the workers, once all have exited; no worker may hang."""
    deadline = time.time() + timeout
    for index, process in processes.items():
        try:
            process.wait(timeout=max(1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            for p in processes.values():
                p.kill()
            raise AssertionError(f"worker {index} still running: {read_log(log_dir, tag, index)}")
    return {index: read_log(log_dir, tag, index) for index in processes}


def read_log(log_dir, tag, index):
    return (log_dir / f"{tag}{index}.log").read_text()


def test_two_workers_keep_equal_weights_equal_to_one_process_on_the_whole_batch(
        tmp_path, reference):
    processes = launch_workers(
        [os.path.join(REPO, "tests", "multi_worker_driver.py"), str(tmp_path), str(STEPS)],
        distribute.local_cluster_tf_configs(2), tmp_path, "driver")
    logs = wait_all(processes, tmp_path, "driver")
    for index, process in processes.items():
        assert process.returncode == 0, logs[index][-3000:]

    for step, (ref_loss, _, ref_weights) in enumerate(reference):
        runs = [np.load(tmp_path / f"worker{w}_step{step}.npz") for w in (0, 1)]
        for i, ref_w in enumerate(ref_weights):
            np.testing.assert_array_equal(runs[0][f"w{i}"], runs[1][f"w{i}"])
            np.testing.assert_allclose(runs[0][f"w{i}"], ref_w, rtol=1e-4, atol=2e-6)
        np.testing.assert_allclose(float(runs[0]["loss"]), ref_loss, rtol=1e-5)


def test_sharded_input_splits_each_one_device_batch_between_replicas(tmp_path):
    config = smoke_config(tmp_path)
    source = trainer.load_source(config)
    stats = trainer.load_or_compute_stats(config, source, str(tmp_path / "model"))
    steps = 6  # 96 training images / 16
    one_device = [
        (images.numpy(), labels.numpy()) for images, labels in input_pipeline.make_train_dataset(
            source.train_for_epoch(1), stats, config.batch_size, image_size=config.image_size,
            crop_size=config.crop_size, seed=config.seed + 1, num_epochs=1,
            dct_method=source.dct_method)
    ]
    assert len(one_device) == steps

    def pipeline(pipelines, index, replicas, skip):
        context = tf.distribute.InputContext(pipelines, index, replicas)
        dataset_fn = trainer.train_dataset_fn(source, stats, config, 1, steps, skip)
        return [(i.numpy(), l.numpy()) for i, l in dataset_fn(context)]

    for skip in (0, 2):
        # One worker, two replicas: its batches go to replica 0, 1, 0, 1, ...
        batches = pipeline(1, 0, 2, skip)
        assert len(batches) == 2 * (steps - skip)
        for step in range(skip, steps):
            pair = batches[2 * (step - skip):2 * (step - skip) + 2]
            np.testing.assert_allclose(np.concatenate([b[0] for b in pair]), one_device[step][0],
                                       atol=1e-4)
            np.testing.assert_array_equal(np.concatenate([b[1] for b in pair]),
                                          one_device[step][1])
        # Two workers of one replica: worker k holds the examples at k, k + 2, ...
        for index in (0, 1):
            batches = pipeline(2, index, 2, skip)
            assert len(batches) == steps - skip
            for step in range(skip, steps):
                images, labels = batches[step - skip]
                np.testing.assert_allclose(images, one_device[step][0][index::2], atol=1e-4)
                np.testing.assert_array_equal(labels, one_device[step][1][index::2])

    # The same through MirroredStrategy over two devices.
    mirrored = tf.distribute.MirroredStrategy(list(TWO_CPUS))
    seen = 0
    for images, labels in mirrored.distribute_datasets_from_function(
            trainer.train_dataset_fn(source, stats, config, 1, steps, 0)):
        for value, expected in zip((images, labels), one_device[seen]):
            parts = [part.numpy() for part in mirrored.experimental_local_results(value)]
            np.testing.assert_allclose(np.concatenate(parts), expected, atol=1e-4)
        seen += 1
    assert seen == steps


def rewind(workdir, step):
    """What a kill right after checkpoint `step` leaves: the later checkpoints gone."""
    checkpoints = os.path.join(workdir, "checkpoints")
    keep = os.path.join(checkpoints, f"ckpt-{step}")
    for name in os.listdir(checkpoints):
        if name.startswith("ckpt-") and not name.startswith(f"ckpt-{step}."):
            os.remove(os.path.join(checkpoints, name))
    tf.compat.v1.train.update_checkpoint_state(checkpoints, keep,
                                               all_model_checkpoint_paths=[keep])


def model_tensors(checkpoint):
    reader = tf.train.load_checkpoint(checkpoint)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


# One epoch of 6 steps, checkpointed every 2, evaluated on one batch of 16, exported.
RUN = dict(epochs=1, dropout_rate=0.0, checkpoint_every_steps=2, eval_ten_crop=False,
           eval_steps=1)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """RUN on one device, start to end."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    config = smoke_config(tmp_path, strategy="one_device", **RUN)
    workdir = str(tmp_path / "model")
    metrics = trainer.train_and_evaluate(config, workdir)
    final = model_tensors(os.path.join(workdir, "checkpoints", "ckpt-6"))
    return dict(config=config, workdir=workdir, metrics=metrics, final=final)


def assert_same_model(tensors, reference, rtol=1e-4, atol=2e-6):
    assert tensors.keys() == reference.keys()
    for name, value in reference.items():
        np.testing.assert_allclose(tensors[name], value, rtol=rtol, atol=atol, err_msg=name)


@pytest.mark.parametrize("strategy", ["one_device", "mirrored", "towers"])
def test_resume_mid_epoch_reaches_the_uninterrupted_weights(uninterrupted, tmp_path, strategy,
                                                             capsys):
    workdir = str(tmp_path / "model")
    shutil.copytree(uninterrupted["workdir"], workdir)
    rewind(workdir, 4)
    devices = TWO_CPUS if strategy == "mirrored" else ()
    tower_devices = TWO_CPUS if strategy == "towers" else ()
    config = dataclasses.replace(uninterrupted["config"], strategy=strategy, devices=devices,
                                 tower_devices=tower_devices, export=False)
    metrics = trainer.train_and_evaluate(config, workdir)

    output = capsys.readouterr().out
    assert f"Resumed from {workdir}/checkpoints/ckpt-4: epoch 1, step 4." in output
    assert tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints")).endswith("ckpt-6")
    assert_same_model(model_tensors(os.path.join(workdir, "checkpoints", "ckpt-6")),
                      uninterrupted["final"])
    assert metrics == uninterrupted["metrics"]
    assert metrics["validation"]["examples"] == 16


def latest_step(checkpoints):
    latest = tf.train.latest_checkpoint(str(checkpoints)) if checkpoints.exists() else None
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def serve(export_dir, paths):
    loaded = tf.saved_model.load(str(export_dir))
    encoded = tf.constant([open(p, "rb").read() for p in paths])
    return loaded.signatures["serving_default"](images=encoded)["probabilities"].numpy()


def test_killing_a_worker_fails_the_run_and_restarting_both_resumes(tmp_path, uninterrupted):
    workdir, data_dir = tmp_path / "model", tmp_path / "data"
    command = ["-m", "alexnet_tf.train", f"--flagfile={SMOKE}", f"--model_dir={workdir}",
               f"--data_dir={data_dir}", "--strategy=multi_worker", "--collective_timeout_s=60"]
    command += [f"--{name}={value}" for name, value in RUN.items()]
    cluster = distribute.local_cluster_tf_configs(2)
    checkpoints = workdir / "checkpoints"

    first = launch_workers(command, cluster, tmp_path, "first")
    deadline = time.time() + 180
    while time.time() < deadline and first[1].poll() is None and latest_step(checkpoints) < 2:
        time.sleep(0.05)
    first[0].kill()  # the chief, right after its first checkpoint
    survivor_log = wait_all({1: first[1]}, tmp_path, "first", timeout=90)[1]
    killed_at = latest_step(checkpoints)
    assert first[1].returncode == 1, survivor_log[-3000:]
    lost_at = re.search(r"error: Lost another worker at step (\d+): ", survivor_log)
    assert lost_at, survivor_log[-3000:]
    assert 2 <= killed_at <= int(lost_at.group(1)) < 6

    second = launch_workers(command, cluster, tmp_path, "second")
    logs = wait_all(second, tmp_path, "second")
    for index, process in second.items():
        assert process.returncode == 0, logs[index][-3000:]
        assert f"Resumed from {checkpoints}/ckpt-{killed_at}: " in logs[index]
    assert "Strategy: multi_worker: 2 replica(s) on 2 workers, this one worker 0 (chief)" in (
        logs[0])
    assert sorted(os.listdir(workdir)) == [
        ".lock", "checkpoints", "classes.json", "config.json", "dataset_stats.npz", "export", "flags.txt",
        "metrics.json", "train", "validation"]  # no worker's temporary directory left

    # The same weights, validation figures and SavedModel as one device, uninterrupted.
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-6")
    assert_same_model(model_tensors(str(checkpoints / "ckpt-6")), uninterrupted["final"],
                      rtol=1e-3, atol=1e-5)
    with open(workdir / "metrics.json") as f:
        assert json.load(f) == dict(epoch=1, step=6, finished=True, **uninterrupted["metrics"])
    images = sorted(str(p) for p in (data_dir / "val").rglob("*.png"))[::8]
    np.testing.assert_allclose(serve(workdir / "export", images),
                               serve(os.path.join(uninterrupted["workdir"], "export"), images),
                               atol=1e-4)


def test_float16_step_skips_an_overflow_then_takes_the_loss_scaled_update():
    strategy = tf.distribute.MirroredStrategy(list(TWO_CPUS))
    with strategy.scope():
        model = model_dir.create_model(driver.model_config(), driver.NUM_CLASSES,
                                     tower_devices=(None, None), dtype_policy="mixed_float16")
        optimizer = optim.PaperMomentumSGD(model.trainable_variables)
        loss_scale = optim.DynamicLossScale(2.0**30)
    train_step = trainer.make_train_step(model, optimizer, strategy, driver.GLOBAL_BATCH,
                                         loss_scale)
    initial = [v.numpy() for v in model.trainable_variables]
    learning_rate = tf.Variable(driver.LEARNING_RATE, trainable=False)
    images, labels = distribute.split_global_batch(strategy, *driver.fixed_batch(0))

    # dL/dlogits is (softmax - one-hot) / 8, about 0.1; times 2^30 it is about 1e8,
    # beyond float16's largest 65504: fc8's float16 backward pass overflows.
    loss, _, _, _, applied = train_step(images, labels, learning_rate, tf.constant(0.0))
    assert np.isfinite(float(loss)) and not bool(applied)
    for variable, w0 in zip(model.trainable_variables, initial):
        np.testing.assert_array_equal(variable.numpy(), w0)
    assert all(not np.any(v.numpy()) for v in optimizer.velocities)
    for scale in strategy.experimental_local_results(loss_scale.scale):
        assert float(scale) == 2.0**29  # on both replicas
    assert int(loss_scale.good_steps.numpy()) == 0

    loss_scale.scale.assign(2.0**10)
    _, _, _, _, applied = train_step(images, labels, learning_rate, tf.constant(0.0))
    assert bool(applied)
    assert float(loss_scale.scale.numpy()) == 2.0**10 and int(loss_scale.good_steps.numpy()) == 1
    # The skipped step left the weights as they were: the update is the first one. The
    # replicas' float16 gradients of half the batch each round differently from those
    # of the whole batch: updates of about 1e-3 agree to about 1e-5.
    _, _, expected = reference_steps(1, "mixed_float16", loss_scale=2.0**10)[0]
    for variable, w in zip(model.trainable_variables, expected):
        np.testing.assert_allclose(variable.numpy(), w, rtol=1e-4, atol=3e-5)


def test_float16_training_survives_overflow_and_checkpoints_the_loss_scale(tmp_path):
    workdir = str(tmp_path / "model")
    # At 2^16 this net's float16 gradients overflow (2^15 is the default).
    config = smoke_config(tmp_path, epochs=1, steps_per_epoch=3, mixed_precision="float16",
                          loss_scale_initial=2.0**16, eval_ten_crop=False, strategy="mirrored",
                          devices=TWO_CPUS)
    metrics = trainer.train_and_evaluate(config, workdir)  # no "loss became nan" stop

    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    assert latest.endswith("ckpt-3")
    reader = tf.train.load_checkpoint(latest)
    names = reader.get_variable_to_shape_map()
    scale = reader.get_tensor("loss_scale/scale/.ATTRIBUTES/VARIABLE_VALUE")
    assert scale < 2.0**16 and np.log2(scale) == int(np.log2(scale))  # halved, maybe more
    # Velocities start at zero and skipped steps leave them so: some step was applied.
    velocities = [reader.get_tensor(n) for n in names if n.startswith("optimizer/velocities")]
    assert len(velocities) == 30 and any(np.any(v) for v in velocities)
    assert metrics["validation"]["examples"] == 32
    # The export is the float32 network with the trained weights.
    network = model_dir.create_model(config, 4, tower_devices=(None, None), dtype_policy="float32")
    tf.train.Checkpoint(model=network).read(latest).expect_partial()
    stats = dataset_stats.load_stats(os.path.join(workdir, model_dir.STATS_FILE))
    images = sorted(str(p) for p in (tmp_path / "data" / "val").rglob("*.png"))[::8]
    expected, _ = in_memory_predictions(dict(config=config, stats=stats, network=network,
                                             images=images))
    np.testing.assert_allclose(serve(os.path.join(workdir, "export"), images), expected,
                               rtol=1e-4, atol=1e-6)


def test_strategy_errors_are_found_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    cases = [
        (dict(strategy="multi_worker"), "needs the TF_CONFIG environment variable"),
        (dict(strategy="mirrored", tower_devices=TWO_CPUS),
         "--strategy=mirrored copies the whole network to each device; --tower_devices"),
        (dict(strategy="towers", towers=1), "--towers=1 has one"),
        (dict(strategy="one_device", devices=TWO_CPUS), "takes one device, not 2"),
        (dict(strategy="mirrored", devices=TWO_CPUS, batch_size=15),
         r"--batch_size=15 \(the global batch\) does not split evenly between 2 replicas"),
        (dict(strategy="mirrored", devices=("/cpu:0", "/gpu:7")),
         "device '/gpu:7' is not one of the visible devices"),
    ]
    for overrides, message in cases:
        with pytest.raises(trainer.TrainingError, match=message):
            trainer.train_and_evaluate(smoke_config(tmp_path, **overrides),
                                       str(tmp_path / "model"))
    assert not (tmp_path / "data").exists()  # stopped before the data was written

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}}')
    with pytest.raises(trainer.TrainingError, match="TF_CONFIG's \"task\" must name"):
        trainer.train_and_evaluate(smoke_config(tmp_path, strategy="multi_worker"),
                                   str(tmp_path / "model"))


def test_compute_dtype_check_runs_the_ops_where_they_will_run():
    soft = tf.config.get_soft_device_placement()
    distribute.check_compute_dtype("float16", TWO_CPUS)  # the CPU has float16 kernels
    with pytest.raises(distribute.DistributionError,
                       match=r"/gpu:99 cannot train in float16: .*--mixed_precision=none"):
        distribute.check_compute_dtype("float16", ["/cpu:0", "/gpu:99"])  # no such GPU
    assert tf.config.get_soft_device_placement() == soft


def test_auto_keeps_todays_placement_and_follows_tf_config():
    tf_config = '{"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 1}}'
    resolve = distribute.resolve_strategy
    assert resolve("auto", (), 2, num_gpus=0, tf_config=None) == "one_device"
    assert resolve("auto", (), 2, num_gpus=1, tf_config=None) == "one_device"
    assert resolve("auto", (), 2, num_gpus=2, tf_config=None) == "towers"
    assert resolve("auto", (), 1, num_gpus=2, tf_config=None) == "one_device"
    assert resolve("auto", TWO_CPUS, 2, num_gpus=0, tf_config=None) == "towers"
    assert resolve("auto", (), 2, num_gpus=2, tf_config=tf_config) == "multi_worker"
    assert resolve("mirrored", (), 2, num_gpus=0, tf_config=tf_config) == "mirrored"
    assert not distribute.is_chief_task(json.loads(tf_config))
    chief = json.loads(tf_config.replace('"index": 1', '"index": 0'))
    assert distribute.is_chief_task(chief)


def test_each_replica_draws_its_own_dropout_masks():
    config = dataclasses.replace(driver.model_config(), dropout_rate=0.5)
    images, labels = driver.fixed_batch(0)
    images, labels = images[:4], labels[:4]

    def replica_losses(strategy):
        with strategy.scope():
            model = model_dir.create_model(config, driver.NUM_CLASSES, tower_devices=(None, None))
        distribute.decorrelate_dropout(model, strategy)

        @tf.function
        def losses():
            def replica_loss():
                logits = model(tf.constant(images), training=True)
                return tf.reduce_sum(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

            return strategy.run(replica_loss)

        return [float(v) for v in strategy.experimental_local_results(losses())]

    first, second = replica_losses(tf.distribute.MirroredStrategy(list(TWO_CPUS)))
    (alone,) = replica_losses(tf.distribute.OneDeviceStrategy("/cpu:0"))
    # The same images on both replicas: only their dropout masks can tell them apart.
    assert abs(first - second) > 1e-3 * abs(first)
    # Replica 0 keeps the masks of a one-device run.
    np.testing.assert_allclose(first, alone, rtol=1e-5)
