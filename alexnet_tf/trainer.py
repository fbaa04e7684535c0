"""Training and evaluation: the paper's recipe (Section 5) as a custom loop.

`train_and_evaluate(config, workdir)` is the whole job: data, statistics, model,
the paper's update, evaluation every epoch, checkpoints, TensorBoard, and a
SavedModel at the end. Resuming is the default: run it again with the same
workdir and it continues from the last checkpoint.

It runs on one device, on the paper's two towers, or data-parallel over several
devices or machines (`distribute`); in float32, or in mixed bfloat16 or float16,
the latter with dynamic loss scaling (`optim.DynamicLossScale`).
"""

import dataclasses
import json
import math
import os
import signal
import time

import keras
import tensorflow as tf
from tqdm import tqdm

from alexnet_tf import data, dataset_stats, distribute, export, input_pipeline
from alexnet_tf import model as model_lib, optim, prepare_data

CONFIG_FILE = "config.json"
CLASSES_FILE = "classes.json"
STATS_FILE = "dataset_stats.npz"
CHECKPOINT_DIR = "checkpoints"
EXPORT_DIR = "export"

# Fields of the config that change the network or what its outputs mean: a
# model directory written with other values cannot be resumed.
ARCHITECTURE_FIELDS = (
    "dataset", "model_size", "image_size", "crop_size", "towers", "activation", "lrn",
    "overlapping_pooling", "conv6",
)

# What --mixed_precision means to the model builder: variables stay float32 in every
# policy, the layers compute in the named type.
MIXED_PRECISION_POLICIES = {
    "none": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16",
}

# What a collective operation raises when another worker has died or stopped
# answering (TensorFlow's coordination service reports a lost heartbeat as
# Unavailable; a collective past its timeout is DeadlineExceeded).
WORKER_LOST_ERRORS = (
    tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
    tf.errors.AbortedError,
)


@dataclasses.dataclass
class TrainConfig:
    """Everything a run needs; the training command builds it from its flags."""

    dataset: str = "imagenet2012"
    data_dir: str = ""
    manual_dir: str = ""
    val_fraction: float = 0.0
    # Model.
    model_size: str = "paper"
    towers: int = model_lib.PAPER_TOWERS
    tower_devices: tuple = ()
    activation: str = "relu"
    lrn: bool = True
    overlapping_pooling: bool = True
    conv6: bool = False
    dropout_rate: float = model_lib.PAPER_DROPOUT_RATE
    # Placement and precision.
    strategy: str = distribute.AUTO
    devices: tuple = ()
    collective_timeout_s: float = 600.0
    mixed_precision: str = "none"
    loss_scale_initial: float = optim.LOSS_SCALE_INITIAL
    loss_scale_growth_steps: int = optim.LOSS_SCALE_GROWTH_STEPS
    # Data and augmentation.
    image_size: int = 256
    crop_size: int = 224
    lighting: str = input_pipeline.LIGHTING_SQRT_EIGENVALUE
    lighting_stddev: float = input_pipeline.PAPER_LIGHTING_STDDEV
    stats_file: str = ""
    stats_examples: int = 0
    # Learning.
    batch_size: int = 128
    epochs: int = 90
    steps_per_epoch: int = 0
    learning_rate: float = optim.PAPER_LEARNING_RATE
    momentum: float = optim.PAPER_MOMENTUM
    weight_decay: float = optim.PAPER_WEIGHT_DECAY
    decay_biases: bool = False
    schedule: str = "plateau"
    plateau_patience: int = 3
    plateau_min_delta: float = 0.001
    lr_reductions: int = optim.PAPER_LR_REDUCTIONS
    step_boundaries: tuple = (30, 60, 80)
    # Evaluation, checkpoints, logging, export.
    eval_ten_crop: bool = True
    eval_batch_size: int = 128
    eval_steps: int = 0
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    log_every_steps: int = 50
    export: bool = True
    export_ten_crop: bool = False
    seed: int = 0

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


def check_workdir(workdir):
    """Creates the model directory and makes sure it is writable, before any work."""
    try:
        os.makedirs(workdir, exist_ok=True)
        # One name per process: the workers of a multi-worker run probe at once.
        probe = os.path.join(workdir, f".write_test.{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise TrainingError(f"The model directory {workdir} is not writable: {e}") from e


def check_compatible_config(config, workdir):
    """Refuses a model directory written by a run with another architecture or data."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return
    with open(path) as f:
        previous = json.load(f)
    current = dataclasses.asdict(config)
    differing = [
        f"{field}: {previous.get(field)!r} in the directory, {current[field]!r} now"
        for field in ARCHITECTURE_FIELDS
        if field in previous and previous[field] != current[field]
    ]
    if differing:
        raise TrainingError(
            f"{workdir} holds a run with another configuration ({'; '.join(differing)}). "
            "Use a new --model_dir, or the flags of that run."
        )


def _write_json_atomically(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def write_config(config, class_names, workdir):
    _write_json_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json())
    _write_json_atomically(os.path.join(workdir, CLASSES_FILE), json.dumps(list(class_names)))


def load_config(workdir):
    """The TrainConfig a model directory was trained with."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise TrainingError(f"{workdir} is not a model directory: {path} is missing.")
    with open(path) as f:
        values = json.load(f)
    if "dtype_policy" in values and "mixed_precision" not in values:  # written before it
        named = {policy: name for name, policy in MIXED_PRECISION_POLICIES.items()}
        values["mixed_precision"] = named.get(values["dtype_policy"], "none")
    known = {field.name: field for field in dataclasses.fields(TrainConfig)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return TrainConfig(**kwargs)


def load_source(config):
    """The configured data source; `synthetic` writes its tiny image folder first."""
    dataset = config.dataset
    if dataset == "synthetic":
        prepare_data.ensure_synthetic(config.data_dir)
        dataset = "image_folder"
    try:
        return data.load_source(
            dataset, config.data_dir, manual_dir=config.manual_dir or None,
            val_fraction=config.val_fraction, seed=config.seed,
        )
    except (FileNotFoundError, ValueError) as e:
        raise TrainingError(str(e)) from e


def load_or_compute_stats(config, source, workdir, save=True):
    """The mean image and RGB PCA of the training split: from --stats_file, else from
    the model directory, else computed in one pass (and saved there if `save`)."""
    path = config.stats_file or os.path.join(workdir, STATS_FILE)
    if config.stats_file or os.path.exists(path):
        try:
            return dataset_stats.load_stats(path)
        except (OSError, ValueError) as e:
            raise TrainingError(f"Cannot use the dataset statistics in {path}: {e}") from e
    stats = dataset_stats.compute_stats(
        source.encoded_train,
        image_size=config.image_size,
        max_examples=config.stats_examples or None,
        seed=config.seed,
        corrupt_counter=source.corrupt_counter,
        total=source.num_train_examples,
    )
    if save:
        dataset_stats.save_stats(stats, path)
    return stats


def create_model(config, num_classes, **overrides):
    """The one builder used for training, evaluation and export."""
    kwargs = dict(
        size=config.model_size,
        input_shape=(config.crop_size, config.crop_size, 3),
        towers=config.towers,
        tower_devices=tuple(config.tower_devices) or None,
        activation=config.activation,
        lrn=config.lrn,
        overlapping_pooling=config.overlapping_pooling,
        conv6=config.conv6,
        dropout_rate=config.dropout_rate,
        dtype_policy=MIXED_PRECISION_POLICIES[config.mixed_precision],
        seed=config.seed,
    )
    kwargs.update(overrides)
    return model_lib.build_alexnet(num_classes, **kwargs)


def create_schedule(config):
    if config.schedule == "plateau":
        return optim.PlateauSchedule(
            config.learning_rate,
            patience=config.plateau_patience,
            min_delta=config.plateau_min_delta,
            max_reductions=config.lr_reductions,
        )
    return optim.StepSchedule(config.learning_rate, boundaries=config.step_boundaries)


def create_distribution(config):
    """The configured strategy (created first: multi_worker needs that)."""
    try:
        return distribute.create_distribution(
            config.strategy, devices=tuple(config.devices),
            tower_devices=tuple(config.tower_devices), towers=config.towers,
            collective_timeout_s=config.collective_timeout_s,
        )
    except distribute.DistributionError as e:
        raise TrainingError(str(e)) from e


def make_train_step(model, optimizer, strategy, batch_size, loss_scale=None):
    """One step of the paper's update on a global batch of `batch_size` examples split
    between the strategy's replicas: (images, labels) are the strategy's per-replica
    values, `stop` a float that is 1 where this worker was asked to stop.

    Returns (loss, top-1 error, top-5 error) over the global batch, whether any worker
    asked to stop, and whether the update was applied (False: a loss-scaled step whose
    gradients overflowed, skipped). Every worker gets the same values.
    """
    variables = model.trainable_variables
    sum_ = tf.distribute.ReduceOp.SUM

    def replica_step(images, labels, learning_rate, stop):
        labels = tf.cast(labels, tf.int32)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(images, training=True), tf.float32)
            # The multinomial logistic regression objective (Section 5). Each replica
            # sums its share and divides by the global batch, so that the sum over the
            # replicas is the mean over the global batch whatever their number.
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=labels, logits=logits)) / batch_size
            scaled_loss = loss_scale.scale_loss(loss) if loss_scale else loss
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce(sum_, tape.gradient(scaled_loss, variables))
        applied = True
        if loss_scale is not None:
            gradients = loss_scale.unscale(gradients)
            applied = optim.all_finite(gradients)
            loss_scale.update(applied)
        optimizer.apply(gradients, variables, learning_rate, apply_update=applied)
        totals = context.all_reduce(sum_, tf.stack([
            loss, optim.top_k_misses(logits, labels, 1) / batch_size,
            optim.top_k_misses(logits, labels, 5) / batch_size,
            stop,
        ]))
        return totals, tf.convert_to_tensor(applied)

    @tf.function
    def train_step(images, labels, learning_rate, stop):
        totals, applied = strategy.run(replica_step, args=(images, labels, learning_rate, stop))
        # All-reduced already: every replica holds the same values.
        totals = strategy.experimental_local_results(totals)[0]
        applied = strategy.experimental_local_results(applied)[0]
        return totals[0], totals[1], totals[2], totals[3] > 0, applied

    return train_step


def make_eval_step(model, strategy):
    """(top-1 misses, top-5 misses, examples) of one evaluation batch, summed over the
    strategy's replicas. A replica's images are [B, H, W, 3], or [B, 10, H, W, 3]: the
    softmax averaged over ten crops."""

    def replica_step(images, labels):
        if images.shape.rank == 5:
            crops = tf.shape(images)[1]
            flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))
            probabilities = tf.nn.softmax(tf.cast(model(flat, training=False), tf.float32))
            probabilities = tf.reduce_mean(
                tf.reshape(probabilities, [-1, crops, tf.shape(probabilities)[-1]]), axis=1
            )
        else:
            probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        count = tf.cast(tf.size(labels), tf.float32)
        return (optim.top_k_misses(probabilities, labels, 1),
                optim.top_k_misses(probabilities, labels, 5), count)

    @tf.function
    def eval_step(images, labels):
        sums = strategy.run(replica_step, args=(images, labels))
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None) for value in sums]

    return eval_step


def _replicas_per_pipeline(context):
    return context.num_replicas_in_sync // context.num_input_pipelines


def train_dataset_fn(source, stats, config, epoch, steps_per_epoch, step_in_epoch):
    """The `dataset_fn` of the epoch's batches from `step_in_epoch` on, for
    `tf.distribute.Strategy.distribute_datasets_from_function`: given an InputContext,
    this worker's input pipeline, whose consecutive batches go to its replicas in turn.

    Each worker's pipeline shuffles the whole epoch the same way and keeps its share of
    it (`input_pipeline.shard_keeping_stream_index`). So a step's global batch holds the
    examples one device would train on at that step, augmented alike, whatever the
    strategy, and a resumed epoch skips the steps already taken.
    """

    def dataset_fn(context):
        replicas = _replicas_per_pipeline(context)
        per_replica = context.get_per_replica_batch_size(config.batch_size)
        return input_pipeline.make_train_dataset(
            source.train_for_epoch(epoch), stats, per_replica,
            image_size=config.image_size, crop_size=config.crop_size, lighting=config.lighting,
            lighting_stddev=config.lighting_stddev, seed=config.seed + epoch, num_epochs=1,
            corrupt_counter=source.corrupt_counter, dct_method=source.dct_method,
            num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id,
        ).take(steps_per_epoch * replicas).skip(step_in_epoch * replicas)

    return dataset_fn


def make_eval_input(distribution, source, stats, config, ten_crop):
    """The validation split (or its first eval_steps batches of about eval_batch_size
    examples) as the strategy's per-replica values, each worker evaluating its share."""

    def dataset_fn(context):
        replicas = _replicas_per_pipeline(context)
        per_replica = -(-config.eval_batch_size // context.num_replicas_in_sync)
        dataset = input_pipeline.make_eval_dataset(
            source.encoded_validation, stats, per_replica,
            image_size=config.image_size, crop_size=config.crop_size, ten_crop=ten_crop,
            corrupt_counter=source.corrupt_counter, dct_method=source.dct_method,
            num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id,
        )
        return dataset.take(config.eval_steps * replicas) if config.eval_steps else dataset

    return distribution.strategy.distribute_datasets_from_function(dataset_fn)


def evaluate(distribution, eval_step, source, stats, config, ten_crop):
    """Top-1 and top-5 error over the validation split (or its first eval_steps batches),
    counted over every replica of every worker."""
    misses_1 = misses_5 = count = 0
    for images, labels in make_eval_input(distribution, source, stats, config, ten_crop):
        m1, m5, n = eval_step(images, labels)
        misses_1, misses_5, count = misses_1 + float(m1), misses_5 + float(m5), count + int(n)
    if count == 0:
        raise TrainingError("The validation split is empty: nothing to evaluate.")
    return {"top1_error": misses_1 / count, "top5_error": misses_5 / count, "examples": count}


def filter_grid(kernel, towers):
    """conv1's kernels as one image (Figure 3): each contrast-stretched to 0..1, one row
    of the grid per tower. kernel: [k, k, 3, filters] -> [1, H, W, 3]."""
    k = kernel.shape[0]
    filters = kernel.shape[-1]
    low = tf.reduce_min(kernel, axis=[0, 1, 2], keepdims=True)
    high = tf.reduce_max(kernel, axis=[0, 1, 2], keepdims=True)
    stretched = (kernel - low) / tf.maximum(high - low, 1e-12)
    tiles = tf.pad(tf.transpose(stretched, [3, 0, 1, 2]), [[0, 0], [1, 1], [1, 1], [0, 0]])
    per_row = filters // towers
    rows = [tf.concat(tf.unstack(tiles[t * per_row:(t + 1) * per_row]), axis=1) for t in range(towers)]
    gap = tf.ones([4, per_row * (k + 2), 3])
    grid = rows[0]
    for row in rows[1:]:
        grid = tf.concat([grid, gap, row], axis=0)
    return grid[None]


def conv1_kernel(model):
    """conv1's kernels of all towers, [k, k, 3, 96], tower 0's first."""
    kernels = [w for w in model.get_layer("conv1").trainable_weights if len(w.shape) == 4]
    return tf.concat([tf.convert_to_tensor(k) for k in kernels], axis=-1)


class _StopRequest:
    """SIGTERM (and SIGINT) ask the loop to save a checkpoint and stop after the step."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with the caller
                pass
        return self

    def _handle(self, signum, frame):
        del frame
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def save_checkpoint(manager, step):
    """Saves; a failure (a full disk) is an error that leaves the previous checkpoint
    untouched: TensorFlow writes the new files first and the index that names the
    latest checkpoint last."""
    try:
        return manager.save(checkpoint_number=step)
    except (tf.errors.OpError, OSError) as e:
        raise TrainingError(
            f"Could not write a checkpoint to {manager.directory} ({e}). The previous "
            f"checkpoint, {manager.latest_checkpoint}, is intact; free space and rerun "
            "the same command to resume from it."
        ) from e


def save_worker_checkpoint(checkpoint, temp_dir):
    """A worker other than the chief saves as TensorFlow's multi-worker guide has every
    worker do, into a directory of its own, which it then deletes: only the chief's
    checkpoint is kept."""
    try:
        checkpoint.write(os.path.join(temp_dir, "ckpt"))
    except (tf.errors.OpError, OSError) as e:
        raise TrainingError(f"Could not write this worker's checkpoint to {temp_dir}: {e}") from e
    finally:
        if tf.io.gfile.exists(temp_dir):
            tf.io.gfile.rmtree(temp_dir)


def _overflow_skipped(loss_scale, applied):
    """A float16 step that loss scaling took care of: its update was skipped and the
    scale lowered, and the scale can still go lower."""
    return (loss_scale is not None and not bool(applied)
            and float(loss_scale.scale.numpy()) > loss_scale.min_scale)


def _first_replica(strategy, value):
    return strategy.experimental_local_results(value)[0]


def train_and_evaluate(config, workdir):
    """Trains, evaluates each epoch, checkpoints, and exports a SavedModel. Returns the
    last validation metrics.

    Under multi_worker every worker runs this with the same config and a workdir they
    all see; the chief writes the checkpoints, logs, statistics and export.
    """
    distribution = create_distribution(config)
    print(f"Strategy: {distribution.description}")
    strategy, chief = distribution.strategy, distribution.is_chief
    check_workdir(workdir)
    check_compatible_config(config, workdir)
    compute_dtype = keras.dtype_policies.get(
        MIXED_PRECISION_POLICIES[config.mixed_precision]).compute_dtype
    try:
        distribute.check_batch_split(config.batch_size, distribution.num_replicas)
        distribute.check_compute_dtype(compute_dtype, distribution.devices)
    except distribute.DistributionError as e:
        raise TrainingError(str(e)) from e
    source = load_source(config)
    if chief:
        write_config(config, source.class_names, workdir)
    stats = load_or_compute_stats(config, source, workdir, save=chief)

    # In the strategy's scope the network, its velocities and the loss scale are
    # mirrored: one copy per replica, which every replica updates alike.
    with strategy.scope():
        model = create_model(config, source.num_classes, tower_devices=distribution.tower_devices)
        optimizer = optim.PaperMomentumSGD(
            model.trainable_variables, momentum=config.momentum,
            weight_decay=config.weight_decay, decay_biases=config.decay_biases,
        )
        loss_scale = None
        if config.mixed_precision == "float16":
            loss_scale = optim.DynamicLossScale(
                config.loss_scale_initial, growth_steps=config.loss_scale_growth_steps)
    distribute.decorrelate_dropout(model, strategy)
    schedule = create_schedule(config)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    state = dict(model=model, optimizer=optimizer, schedule=schedule, step=step, epoch=epoch_var,
                 step_in_epoch=step_in_epoch)
    if loss_scale is not None:
        state["loss_scale"] = loss_scale
    checkpoint = tf.train.Checkpoint(**state)
    checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints
    )
    if manager.latest_checkpoint:
        # A float16 run resumed from a checkpoint without a loss scale starts a new one.
        latest = manager.latest_checkpoint
        saved = {name.split("/")[0] for name, _ in tf.train.list_variables(latest)}
        restored = {name: value for name, value in state.items()
                    if name in saved or name != "loss_scale"}
        tf.train.Checkpoint(**restored).restore(latest).assert_existing_objects_matched()
        print(f"Resumed from {manager.latest_checkpoint}: epoch {int(epoch_var)}, "
              f"step {int(step)}.")

    def save():
        if chief:
            return save_checkpoint(manager, int(step))
        temp_dir = distribute.worker_temp_dir(workdir, distribution.task_id)
        save_worker_checkpoint(checkpoint, temp_dir)
        return f"{os.path.join(checkpoint_dir, 'ckpt')}-{int(step)} (written by the chief)"

    steps_per_epoch = config.steps_per_epoch or max(1, source.num_train_examples // config.batch_size)
    train_step = make_train_step(model, optimizer, strategy, config.batch_size, loss_scale)
    eval_step = make_eval_step(model, strategy)
    if chief:
        train_writer = tf.summary.create_file_writer(os.path.join(workdir, "train"))
        val_writer = tf.summary.create_file_writer(os.path.join(workdir, "validation"))
    else:
        train_writer = val_writer = tf.summary.create_noop_writer()
    metrics = {}

    try:
        with _StopRequest() as stop:
            while int(epoch_var) < config.epochs:
                epoch = int(epoch_var)
                dataset = strategy.distribute_datasets_from_function(train_dataset_fn(
                    source, stats, config, epoch, steps_per_epoch, int(step_in_epoch)))
                progress = tqdm(
                    total=steps_per_epoch, initial=int(step_in_epoch), unit="step",
                    desc=f"epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True,
                    mininterval=1.0, disable=not chief,
                )
                window_start, window_images = time.perf_counter(), 0
                for images, labels in dataset:
                    learning_rate = schedule.learning_rate
                    asked = tf.constant(1.0 if stop.signal else 0.0)
                    loss, top1, top5, stop_requested, applied = train_step(
                        images, labels, learning_rate, asked)
                    # float() waits for the step: a host-device sync point, once per step.
                    loss_value = float(loss)
                    if (not math.isfinite(loss_value)
                            and not _overflow_skipped(loss_scale, applied)):
                        raise TrainingError(
                            f"The loss became {loss_value} at step {int(step) + 1} (epoch "
                            f"{epoch + 1}); training stopped without saving. The last good "
                            f"checkpoint is {manager.latest_checkpoint}. Try a lower "
                            "--learning_rate."
                        )
                    if int(step) == 0 or int(step_in_epoch) == 0:
                        with train_writer.as_default(step=int(step)):
                            tf.summary.image("augmented_inputs",
                                             _visible(_first_replica(strategy, images)[:4]),
                                             max_outputs=4)
                    step.assign_add(1)
                    step_in_epoch.assign_add(1)
                    window_images += config.batch_size
                    progress.update(1)
                    if (int(step) % config.log_every_steps == 0
                            or int(step_in_epoch) == steps_per_epoch):
                        elapsed = time.perf_counter() - window_start
                        images_per_second = window_images / max(elapsed, 1e-9)
                        progress.set_postfix(loss=f"{loss_value:.3f}",
                                             lr=f"{float(learning_rate):.2g}",
                                             img_s=f"{images_per_second:.0f}")
                        with train_writer.as_default(step=int(step)):
                            tf.summary.scalar("loss", loss_value)
                            tf.summary.scalar("top1_error", float(top1))
                            tf.summary.scalar("top5_error", float(top5))
                            tf.summary.scalar("learning_rate", float(learning_rate))
                            tf.summary.scalar("images_per_second", images_per_second)
                            if loss_scale is not None:
                                tf.summary.scalar("loss_scale", float(loss_scale.scale.numpy()))
                        window_start, window_images = time.perf_counter(), 0
                    if int(step) % config.checkpoint_every_steps == 0:
                        save()
                    if bool(stop_requested):
                        progress.close()
                        path = save()
                        print(f"{stop.signal or 'Another worker was asked to stop'}: saved "
                              f"{path} at step {int(step)}; rerun the same command to resume.")
                        return metrics
                progress.close()

                metrics = evaluate(distribution, eval_step, source, stats, config, ten_crop=False)
                if config.eval_ten_crop:
                    ten = evaluate(distribution, eval_step, source, stats, config, ten_crop=True)
                    metrics.update({f"ten_crop_{k}": v for k, v in ten.items() if k != "examples"})
                with val_writer.as_default(step=int(step)):
                    for name, value in metrics.items():
                        if name != "examples":
                            tf.summary.scalar(name, value)
                if chief:
                    with train_writer.as_default(step=int(step)):
                        tf.summary.image("conv1_filters",
                                         filter_grid(conv1_kernel(model), config.towers))
                        for variable in model.trainable_variables:
                            tf.summary.histogram(variable.path, variable)
                reduced = schedule.end_epoch(epoch, metrics["top1_error"])
                print(_epoch_line(epoch, config.epochs, metrics, source.corrupt_count(), reduced,
                                  float(schedule.learning_rate)))
                epoch_var.assign_add(1)
                step_in_epoch.assign(0)
                save()
                if chief:
                    with open(os.path.join(workdir, "metrics.json"), "w") as f:
                        json.dump({"epoch": int(epoch_var), "step": int(step), **metrics}, f,
                                  indent=2)

            if not metrics:  # resumed a finished run: report it
                metrics = evaluate(distribution, eval_step, source, stats, config, ten_crop=False)
    except WORKER_LOST_ERRORS as e:
        if distribution.name != distribute.MULTI_WORKER:
            raise
        raise TrainingError(
            f"Lost another worker at step {int(step)}: {_cause(e.message)} Restart every "
            "worker with the same command and TF_CONFIG to resume from the last checkpoint, "
            f"{tf.train.latest_checkpoint(checkpoint_dir)}."
        ) from e

    if config.export and chief:
        path = export.export_saved_model(
            model_config=config, num_classes=source.num_classes, weights=model.get_weights(),
            stats=stats, class_names=source.class_names,
            export_dir=os.path.join(workdir, EXPORT_DIR), ten_crop=config.export_ten_crop,
        )
        print(f"Exported the SavedModel to {path}")
    return metrics


def _cause(message):
    """The line of a TensorFlow error that says what went wrong, without the "Graph
    execution error" heading, the Python frames and the node names around it."""
    noise = ("Graph execution error", "Detected at node", "File ", "[[", "Additional GRPC")
    lines = [line.strip() for line in message.splitlines()]
    causes = [line for line in lines if line and not line.startswith(noise)]
    return causes[0] if causes else message.strip()


def _visible(images):
    """Mean-subtracted inputs stretched to 0..1 for TensorBoard."""
    images = tf.cast(images, tf.float32)
    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    high = tf.reduce_max(images, axis=[1, 2, 3], keepdims=True)
    return (images - low) / tf.maximum(high - low, 1e-6)


def _epoch_line(epoch, epochs, metrics, corrupt, reduced, learning_rate):
    line = (f"epoch {epoch + 1}/{epochs}: validation top-1 error {metrics['top1_error']:.4f}, "
            f"top-5 {metrics['top5_error']:.4f}")
    if "ten_crop_top1_error" in metrics:
        line += (f"; ten-crop top-1 {metrics['ten_crop_top1_error']:.4f}, "
                 f"top-5 {metrics['ten_crop_top5_error']:.4f}")
    if corrupt:
        line += f"; {corrupt} corrupt images skipped so far"
    if reduced:
        line += f"; learning rate divided by 10, now {learning_rate:.2g}"
    return line
