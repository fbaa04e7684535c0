"""Training and evaluation: the paper's recipe (Section 5) as a custom loop.

`train_and_evaluate(config, workdir)` is the whole job, a row of named steps:

    start_run             check everything, lock the model directory, load the data and
                          its statistics, build the network and its optimizer, resume
                          from the newest intact checkpoint
    train_epoch           one pass over the training split, or to the end of the budget;
                          at each evaluation point `evaluate_and_schedule` measures the
                          validation split and lets the schedule decide the rate
    final_report          validation and test errors, centre crop and ten crops
    export_model          the SavedModel

Resuming is the default: run it again with the same workdir and it continues from the
newest intact checkpoint, exactly as if it had not stopped (on one device and with
deterministic kernels, to the bit: the data order, every augmentation draw and every
dropout mask come from the seed and the step, and the dropout generators' state is in
the checkpoint).

It runs on one device, on the paper's two towers, or data-parallel over several
devices or machines (`distribute`); in float32, or in mixed bfloat16 or float16,
the latter with dynamic loss scaling (`optim.DynamicLossScale`).

One job: the run of one training job. Its parts share the run's state (`Run`: the
step, the network, the writers, the schedule) and are read top to bottom in the order
they happen; the network, its placement, the update, the data and the model directory
are other modules'.
"""

import collections
import contextlib
import dataclasses
import functools
import math
import os
import signal
import time

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from alexnet_tf import config as config_lib
from alexnet_tf import conv_gradients
from alexnet_tf import data, dataset_stats, distribute, export, figures, input_pipeline
from alexnet_tf import model_dir, optim, settings
from alexnet_tf import model as model_lib

TrainConfig = config_lib.TrainConfig
TrainingError = model_dir.TrainingError
Interrupted = model_dir.Interrupted

# What a collective operation raises when another worker has died or stopped
# answering (TensorFlow's coordination service reports a lost heartbeat as
# Unavailable; a collective past its timeout is DeadlineExceeded).
WORKER_LOST_ERRORS = (
    tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError,
    tf.errors.AbortedError,
)


def load_source(config):
    """The configured data source, with user errors as TrainingError."""
    try:
        return data.load_source(
            config.dataset, config.data_dir, manual_dir=config.manual_dir or None,
            val_fraction=config.val_fraction, seed=config.seed,
        )
    except (FileNotFoundError, ValueError) as e:
        raise TrainingError(str(e)) from e


def load_or_compute_stats(config, source, workdir, save=True):
    """The mean image and RGB PCA of the training split: from --stats_file, else from
    the model directory, else the --init_from model's with --keep_source_mean, else
    computed in one pass (and saved there if `save`)."""
    path = config.stats_file or os.path.join(workdir, model_dir.STATS_FILE)
    if config.stats_file or os.path.exists(path):
        return model_dir.load_stats(config, workdir)
    if config.keep_source_mean:
        stats = model_dir.load_stats(model_dir.load_config(config.init_from), config.init_from)
        if save:
            dataset_stats.save_stats(stats, path)
        return stats
    # Epoch 0's order, so that a --stats_examples subset is the same whether the
    # training images are in memory (decoded once for both) or read from their files.
    stats = dataset_stats.compute_stats(
        source.train_for_epoch(0),
        image_size=config.image_size,
        max_examples=config.stats_examples or None,
        seed=config.seed,
        corrupt_counter=source.corrupt_counter,
        total=source.num_train_examples,
    )
    if save:
        dataset_stats.save_stats(stats, path)
    return stats


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


# TensorBoard scalars of the run's own speed: each epoch's seconds per step (train/),
# each evaluation's seconds (validation/).
EPOCH_SECONDS_PER_STEP = "epoch_seconds_per_step"
EVALUATION_SECONDS = "evaluation_seconds"
LEARNING_RATE = "learning_rate"
# metrics.json's entry for the errors of --train_error_examples training images.
TRAIN_SAMPLE = "train_sample"


# ----------------------------------------------------------------------------------
# The step functions.


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
    softmax averaged over ten crops. The convolutions are traced without the custom
    gradients that training's step needs (`conv_gradients.forward_only`, as the
    export traces them): the same values, fewer ops."""

    def replica_step(images, labels):
        with conv_gradients.forward_only():
            if images.shape.rank == 5:
                probabilities = model_lib.crop_probabilities(
                    model(model_lib.flatten_crops(images), training=False), tf.shape(images)[1])
            else:
                probabilities = model_lib.crop_probabilities(model(images, training=False))
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
            crops_and_mirrors=config.crops_and_mirrors,
        ).take(steps_per_epoch * replicas).skip(step_in_epoch * replicas)

    return dataset_fn


def input_options(distribution):
    """How the strategy hands the input pipeline's batches to its devices.

    Fetching to the device overlaps the host-to-GPU copy of the next batch with the
    step. Where every device is a CPU there is no copy to hide, and the per-device
    iterator that does the fetching runs tf.data's autotuning thread whatever the
    pipeline's own options say: destroying it at the end of each epoch and evaluation
    waited on that thread (BENCHMARKS.md, "The training command at the speed of its
    step").
    """
    on_gpu = any("GPU" in device.upper() for device in distribution.devices)
    return tf.distribute.InputOptions(experimental_fetch_to_device=on_gpu)


def make_eval_input(distribution, examples, stats, config, ten_crop, corrupt_counter,
                    whole=False, in_memory=False):
    """A split's examples (or, unless `whole`, its first eval_steps batches of about
    eval_batch_size) as the strategy's per-replica values, each worker evaluating its
    share; with `in_memory`, its batches are made on the first pass and kept for the
    next ones."""

    def dataset_fn(context):
        replicas = _replicas_per_pipeline(context)
        per_replica = -(-config.eval_batch_size // context.num_replicas_in_sync)
        dataset = input_pipeline.make_eval_dataset(
            examples, stats, per_replica,
            image_size=config.image_size, crop_size=config.crop_size, ten_crop=ten_crop,
            corrupt_counter=corrupt_counter,
            num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id,
        )
        if config.eval_steps and not whole:
            dataset = dataset.take(config.eval_steps * replicas)
        return dataset.cache() if in_memory else dataset

    return distribution.strategy.distribute_datasets_from_function(
        dataset_fn, options=input_options(distribution))


# ----------------------------------------------------------------------------------
# The run's state.


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


class WallTime:
    """The run's wall time by what it went to, for the breakdown printed at its end.

    `part(name)` adds the seconds of a block to `name`; "steps" is what the training
    loop took besides its evaluations and checkpoints, and "start-up" whatever the
    other parts leave of the time since `started` (Python, TensorFlow, the data, the
    network, the trace of the step).
    """

    PARTS = ("start-up", "statistics", "steps", "evaluations", "checkpoints",
             "final evaluation", "export")

    def __init__(self, started=None):
        self.started = time.perf_counter() if started is None else started
        self.seconds = collections.Counter()

    @contextlib.contextmanager
    def part(self, name):
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - begin

    def breakdown(self):
        """{part: seconds} over PARTS, and the total."""
        total = time.perf_counter() - self.started
        parts = {name: self.seconds[name] for name in self.PARTS[1:]}
        return {"start-up": max(total - sum(parts.values()), 0.0), **parts}, total

    def line(self):
        parts, total = self.breakdown()
        return (f"Wall time {total:.0f} s: "
                + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in parts.items()))


@dataclasses.dataclass
class Run:
    """Everything a training run holds between its named steps.

    `step` is the number of optimizer steps taken, a Python integer; the checkpointed
    variable `step_variable` is set from it only when a checkpoint is written. The epoch
    and the step within it follow from it and `steps_per_epoch`.
    """

    config: TrainConfig
    workdir: str
    distribution: distribute.Distribution
    source: data.Source
    stats: dataset_stats.DatasetStats
    model: keras.Model
    optimizer: optim.PaperMomentumSGD
    loss_scale: optim.DynamicLossScale
    schedule: object
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager
    step_variable: tf.Variable
    step: int
    steps_per_epoch: int
    total_steps: int
    train_step: object = None
    eval_step: object = None
    write_histograms: object = None
    train_writer: object = None
    validation_writer: object = None
    train_sample_writer: object = None
    train_sample: object = None  # the cached dataset of --train_error_examples
    validation_input: object = None  # the validation split's centre crops, see _eval_input
    stop: _StopRequest = None
    wall_time: WallTime = dataclasses.field(default_factory=WallTime)
    traced: bool = False  # whether this process has run the step function once
    spent_iterators: list = dataclasses.field(default_factory=list)

    @property
    def chief(self):
        return self.distribution.is_chief

    @property
    def epoch(self):
        return self.step // self.steps_per_epoch

    @property
    def checkpoint_dir(self):
        return os.path.join(self.workdir, model_dir.CHECKPOINT_DIR)


def steps_per_epoch(config, source):
    return config.steps_per_epoch or source.num_train_examples // config.batch_size


def check_devices(config, distribution):
    """Refusals that need the devices: the batch split and the compute type."""
    compute_dtype = keras.dtype_policies.get(
        settings.MIXED_PRECISION_POLICIES[config.mixed_precision]).compute_dtype
    try:
        distribute.check_batch_split(config.batch_size, distribution.num_replicas)
        distribute.check_compute_dtype(compute_dtype, distribution.devices)
    except distribute.DistributionError as e:
        raise TrainingError(str(e)) from e


def check_data(config, workdir, source):
    """Refusals that need the data and the model directory's record, before anything is
    written there. Returns the changeable settings that differ from the run being
    resumed."""
    if source.num_train_examples < config.batch_size:
        raise TrainingError(
            f"--batch_size={config.batch_size} is larger than the {source.num_train_examples} "
            f"training images of {config.data_dir}: not one step could be taken. Use a "
            f"--batch_size of at most {source.num_train_examples}.")
    if source.num_validation_examples == 0:
        raise TrainingError(
            f"{config.data_dir} has no validation images: the schedule and the reported "
            "error need them. Add a val/ folder, or hold out part of train/ with "
            "--val_fraction.")
    return model_dir.check_resumable(config, workdir)


def _dropout_states(model):
    """The seed-generator states of the network's Dropout layers: the position of each
    layer's stream of masks, which a resumed run must continue from."""
    layers = [inner for layer in model.layers
              for stack in getattr(layer, "stacks", [[layer]]) for inner in stack]
    # A Dropout layer of rate 0 has no seed generator.
    return [layer.seed_generator.state for layer in layers
            if isinstance(layer, keras.layers.Dropout) and hasattr(layer, "seed_generator")]


def build_network(config, distribution, num_classes):
    """(network, optimizer, loss scale or None), as every run and benchmark builds them,
    in the strategy's scope: mirrored, one copy per replica, which every replica updates
    alike. Layers not in --train_layers are frozen before the optimizer sees the
    variables."""
    with distribution.strategy.scope():
        model = model_dir.create_model(config, num_classes,
                                       tower_devices=distribution.tower_devices)
        for name in config_lib.LAYERS:
            if config.train_layers and name not in config.train_layers and _has_layer(model, name):
                model.get_layer(name).trainable = False
        optimizer = optim.PaperMomentumSGD(
            model.trainable_variables, momentum=config.momentum,
            weight_decay=config.weight_decay, decay_biases=config.decay_biases,
        )
        loss_scale = None
        if config.mixed_precision == "float16":
            loss_scale = optim.DynamicLossScale(
                config.loss_scale_initial, growth_steps=config.loss_scale_growth_steps)
    return model, optimizer, loss_scale


def _has_layer(model, name):
    return any(layer.name == name for layer in model.layers)


def check_init_source(config):
    """Refuses an --init_from model whose network differs from this run's."""
    if not config.init_from:
        return
    init = model_dir.load_config(config.init_from)
    differences = config_lib.network_differences(init, config)
    if differences:
        raise TrainingError(
            f"--init_from={config.init_from} is another network ({'; '.join(differences)}); "
            "leave those settings out to take the source's.")


def _checked_source_weights(config, layer, source, checkpoint):
    """The --init_from model's weights for `layer`: every one there, of its shapes, finite."""
    values = [w.numpy() for w in source[layer.name].weights] if layer.name in source else []
    shapes = [tuple(w.shape) for w in layer.weights]
    if [v.shape for v in values] != shapes:
        raise TrainingError(
            f"--init_from={config.init_from}: its layer {layer.name} has weights of shapes "
            f"{[v.shape for v in values]}, this network's are {shapes}.")
    bad = sum(v.size - np.count_nonzero(np.isfinite(v)) for v in values)
    if bad:
        raise TrainingError(
            f"--init_from={config.init_from}: layer {layer.name} holds {bad} NaN or infinite "
            f"weights ({checkpoint} is damaged); nothing was trained.")
    return values


def init_from_source(config, model):
    """Copies every layer's weights but fc8's from the --init_from model directory."""
    restored = model_dir.restore(config.init_from)
    source = {layer.name: layer for layer in restored.network.layers}
    copied = []
    for layer in model.layers:
        if not layer.weights or layer.name == "fc8":
            continue
        values = _checked_source_weights(config, layer, source, restored.checkpoint)
        for target, value in zip(layer.weights, values):
            target.assign(value)
        copied.append(layer.name)
    print(f"Initialized from {restored.checkpoint}: {', '.join(copied)}; fc8 new for "
          f"{model.get_layer('fc8').weights[0].shape[-1]} classes.")


def _restore(state, checkpoint_dir, chief):
    """Restores the newest intact checkpoint into `state`; returns its path or None."""
    latest = model_dir.newest_intact_checkpoint(checkpoint_dir, set_damaged_aside=chief)
    if latest is None:
        return None
    # A checkpoint written before float16 (or before the dropout states were saved), or
    # by alexnet_tf.import_caffe (the weights alone), lacks some objects: they start
    # afresh.
    saved = {name.split("/")[0] for name, _ in tf.train.list_variables(latest)}
    if "model" not in saved:
        raise TrainingError(f"{latest} holds no network weights.")
    restored = {name: value for name, value in state.items() if name in saved}
    tf.train.Checkpoint(**restored).restore(latest).assert_existing_objects_matched()
    return latest


def start_run(config, workdir, distribution, source, changed, wall_time=None):
    """The run's state: statistics, network, optimizer, schedule, restored checkpoint."""
    chief = distribution.is_chief
    wall_time = wall_time or WallTime()
    if chief:
        model_dir.write_run_record(config, source.class_names, workdir)
    source = source.with_training_images_in_memory(config.cache_images_mb << 20)
    with wall_time.part("statistics"):
        stats = load_or_compute_stats(config, source, workdir, save=chief)
    model, optimizer, loss_scale = build_network(config, distribution, source.num_classes)
    schedule = create_schedule(config)
    step_variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    state = dict(model=model, optimizer=optimizer, schedule=schedule, step=step_variable,
                 dropout=_dropout_states(model))
    if loss_scale is not None:
        state["loss_scale"] = loss_scale
    checkpoint = tf.train.Checkpoint(**state)
    checkpoint_dir = os.path.join(workdir, model_dir.CHECKPOINT_DIR)
    latest = _restore(state, checkpoint_dir, chief)
    if latest is None and config.init_from:
        init_from_source(config, model)
    # After the restore, which gives every replica replica 0's dropout state.
    distribute.decorrelate_dropout(model, distribution.strategy)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=config.keep_checkpoints,
        checkpoint_name=model_dir.CHECKPOINT_NAME)
    per_epoch = steps_per_epoch(config, source)
    run = Run(config, workdir, distribution, source, stats, model, optimizer, loss_scale,
              schedule, checkpoint, manager, step_variable, int(step_variable), per_epoch,
              config.train_steps or config.epochs * per_epoch, wall_time=wall_time)
    if latest:
        print(f"Resumed from {latest}: epoch {run.epoch + 1}, step {run.step}.")
        _apply_changes(run, changed)
        if _ended(run):
            run.total_steps = run.step
    return run


def _ended(run):
    """Whether --end_at_last_plateau ends the run here."""
    return run.config.end_at_last_plateau and run.schedule.ended()


def _apply_changes(run, changed):
    """Logs the changeable settings that differ from the resumed run's, and applies the
    one the checkpoint also holds: the learning rate."""
    if not changed:
        return
    print("Changed since the run was last started: " + ", ".join(
        f"--{name} {old!r} -> {new!r}" for name, (old, new) in changed.items()))
    if "learning_rate" in changed:
        run.schedule.restart_from(run.config.learning_rate, run.epoch)
        print(f"The learning rate is now {float(run.schedule.learning_rate):.3g}.")


# ----------------------------------------------------------------------------------
# Checkpoints.


def save_checkpoint(run):
    with run.wall_time.part("checkpoints"):
        return _save_checkpoint(run)


def _save_checkpoint(run):
    """Writes a checkpoint of the run at its current step (the chief's; another worker's
    goes to its own directory and is deleted, as TensorFlow's multi-worker protocol has
    every worker save). A failure (a full disk) is an error that leaves the previous
    checkpoint untouched: TensorFlow writes the new files first and the index that names
    the latest checkpoint last."""
    run.step_variable.assign(run.step)
    if not run.chief:
        temp_dir = distribute.worker_temp_dir(run.workdir, run.distribution.task_id)
        try:
            run.checkpoint.write(os.path.join(temp_dir, model_dir.CHECKPOINT_NAME))
        except (tf.errors.OpError, OSError) as e:
            raise TrainingError(f"Could not write this worker's checkpoint to {temp_dir}: "
                                f"{e}") from e
        finally:
            if tf.io.gfile.exists(temp_dir):
                tf.io.gfile.rmtree(temp_dir)
        return f"{os.path.join(run.checkpoint_dir, model_dir.CHECKPOINT_NAME)}-{run.step} " \
               "(written by the chief)"
    try:
        return run.manager.save(checkpoint_number=run.step)
    except (tf.errors.OpError, OSError) as e:
        raise TrainingError(
            f"Could not write a checkpoint to {run.manager.directory} ({e}). The previous "
            f"checkpoint, {run.manager.latest_checkpoint}, is intact; free space and rerun "
            "the same command to resume from it."
        ) from e


# ----------------------------------------------------------------------------------
# Training.


def _overflow_skipped(loss_scale, applied):
    """A float16 step that loss scaling took care of: its update was skipped and the
    scale lowered, and the scale can still go lower."""
    return (loss_scale is not None and not bool(applied)
            and float(loss_scale.scale.numpy()) > loss_scale.min_scale)


def _first_replica(strategy, value):
    return strategy.experimental_local_results(value)[0]


def _is_evaluation_point(run):
    if run.config.eval_every_steps:
        return run.step % run.config.eval_every_steps == 0
    return run.step % run.steps_per_epoch == 0


class _Throughput:
    """Images per second since the last reading."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.start, self.images = time.perf_counter(), 0

    def rate(self):
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        self.reset()
        return rate


def _log_step(run, progress, throughput, learning_rate, loss_value, top1, top5):
    images_per_second = throughput.rate()
    progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{float(learning_rate):.2g}",
                         img_s=f"{images_per_second:.0f}")
    with run.train_writer.as_default(step=run.step):
        tf.summary.scalar("loss", loss_value)
        tf.summary.scalar("top1_error", float(top1))
        tf.summary.scalar("top5_error", float(top5))
        tf.summary.scalar(LEARNING_RATE, float(learning_rate))
        tf.summary.scalar("images_per_second", images_per_second)
        if run.loss_scale is not None:
            tf.summary.scalar("loss_scale", float(run.loss_scale.scale.numpy()))


def _check_finite(run, loss_value, applied):
    if not math.isfinite(loss_value) and not _overflow_skipped(run.loss_scale, applied):
        raise TrainingError(
            f"The loss became {loss_value} at step {run.step + 1} (epoch {run.epoch + 1}); "
            f"training stopped without saving. The last good checkpoint is "
            f"{run.manager.latest_checkpoint}. Try a lower --learning_rate.")


def _stop(run, progress):
    progress.close()
    path = save_checkpoint(run)
    who = run.stop.signal or "another worker's stop request"
    raise Interrupted(
        f"interrupted by {who} at step {run.step} (epoch {run.epoch + 1}); saved {path}. "
        "The run is resumable: rerun the same command to continue from there.")


def train_epoch(run):
    """Steps through the current epoch from where the run is, to its end or the end of
    the budget, evaluating at each evaluation point on the way."""
    epoch, config = run.epoch, run.config
    step_in_epoch = run.step - epoch * run.steps_per_epoch
    last = min(run.steps_per_epoch, run.total_steps - epoch * run.steps_per_epoch)
    strategy = run.distribution.strategy
    dataset = strategy.distribute_datasets_from_function(
        train_dataset_fn(run.source, run.stats, config, epoch, last, step_in_epoch),
        options=input_options(run.distribution))
    began, others = time.perf_counter(), _evaluation_and_checkpoint_seconds(run)
    untimed = 0
    progress = tqdm(total=last, initial=step_in_epoch, unit="step",
                    desc=f"epoch {epoch + 1}/{math.ceil(run.total_steps / run.steps_per_epoch)}",
                    dynamic_ncols=True, mininterval=1.0, disable=not run.chief)
    throughput = _Throughput()
    if run.schedule.begin_epoch(epoch):
        print(f"epoch {epoch + 1}: learning rate {float(run.schedule.learning_rate):.2g}")
    # Exactly the epoch's batches, never asking for the end of the sequence, and the
    # iterator kept until the run ends: ending and destroying a tf.data iterator waits
    # on its worker threads, which stalled epoch ends (BENCHMARKS.md, "The training
    # command at the speed of its step").
    iterator = iter(dataset)
    run.spent_iterators.append(iterator)
    for _ in range(last - step_in_epoch):
        try:
            images, labels = next(iterator)
        except StopIteration:  # fewer batches than counted: images dropped as corrupt
            break
        if run.step == epoch * run.steps_per_epoch:
            with run.train_writer.as_default(step=run.step):
                tf.summary.image("augmented_inputs",
                                 _visible(_first_replica(strategy, images)[:4]), max_outputs=4)
        learning_rate = run.schedule.learning_rate
        asked = tf.constant(1.0 if run.stop.signal else 0.0)
        loss, top1, top5, stop_requested, applied = run.train_step(
            images, labels, learning_rate, asked)
        loss_value = float(loss)  # waits for the step: the one host-device sync per step
        _check_finite(run, loss_value, applied)
        run.step += 1
        if not run.traced:  # the first step traces the step function: start-up's time
            run.traced, untimed = True, 1
            began, others = time.perf_counter(), _evaluation_and_checkpoint_seconds(run)
        throughput.images += config.batch_size
        progress.update(1)
        if run.step % config.log_every_steps == 0 or run.step == run.total_steps:
            _log_step(run, progress, throughput, learning_rate, loss_value, top1, top5)
        if bool(stop_requested):
            _stop(run, progress)
        if run.step < run.total_steps and _is_evaluation_point(run):
            progress.clear()
            evaluate_and_schedule(run)
            throughput.reset()  # images/s counts the steps' time only
            if _ended(run):
                print(f"step {run.step}: the validation error stopped improving after the "
                      f"last of {run.config.lr_reductions} divisions; the run ends here "
                      "(--end_at_last_plateau).")
                run.total_steps = run.step
                break
        elif run.step % config.checkpoint_every_steps == 0:
            save_checkpoint(run)
            throughput.reset()
    progress.close()
    _log_epoch_time(run, epoch + 1,
                    run.step - epoch * run.steps_per_epoch - step_in_epoch - untimed,
                    time.perf_counter() - began, _evaluation_and_checkpoint_seconds(run) - others)


def _evaluation_and_checkpoint_seconds(run):
    return run.wall_time.seconds["evaluations"] + run.wall_time.seconds["checkpoints"]


def _log_epoch_time(run, epoch_number, steps, seconds, besides):
    """The epoch's steps' seconds (its evaluations and checkpoints apart) in the log and
    in TensorBoard, where a stall shows as an epoch slower per step than the others."""
    if steps <= 0:
        return
    training = seconds - besides
    run.wall_time.seconds["steps"] += training
    print(f"epoch {epoch_number}: {steps} steps in "
          f"{training:.1f} s ({1000 * training / steps:.1f} ms a step); evaluations and "
          f"checkpoints {besides:.1f} s")
    with run.train_writer.as_default(step=run.step):
        tf.summary.scalar(EPOCH_SECONDS_PER_STEP, training / steps)


# ----------------------------------------------------------------------------------
# Evaluation.


def _examples_of(run, split):
    """A split's examples; for "train", the fixed sample of --train_error_examples,
    kept in memory after its first pass."""
    if split == data.TRAIN:
        if run.train_sample is None:
            run.train_sample = run.source.train_for_epoch(0).take(
                run.config.train_error_examples).cache()
        return run.train_sample
    return run.source.encoded_validation if split == data.VALIDATION else run.source.encoded_test


def _eval_input(run, split, ten_crop):
    """The split's evaluation batches. Every evaluation point reads the validation
    split's centre crops again, so they are made once and kept in memory where they fit
    in --cache_images_mb: an evaluation is then the network's forward pass alone. A
    corrupt validation image is then dropped and counted once, not at every evaluation."""
    build = functools.partial(make_eval_input, run.distribution, _examples_of(run, split),
                              run.stats, run.config, ten_crop, run.source.corrupt_counter,
                              whole=split == data.TRAIN)
    if split != data.VALIDATION or ten_crop:
        return build()
    if run.validation_input is None:
        crop_bytes = run.config.crop_size ** 2 * 3 * 4  # float32
        fits = run.source.num_validation_examples * crop_bytes <= run.config.cache_images_mb << 20
        run.validation_input = build(in_memory=fits)
    return run.validation_input


def evaluate(run, split, ten_crop):
    """Top-1 and top-5 error over a split (or its first eval_steps batches; the training
    sample is always whole), counted over every replica of every worker."""
    misses_1 = misses_5 = count = 0
    for images, labels in _eval_input(run, split, ten_crop):
        m1, m5, n = run.eval_step(images, labels)
        misses_1, misses_5, count = misses_1 + float(m1), misses_5 + float(m5), count + int(n)
    if count == 0:
        raise TrainingError(f"The {split} split is empty: nothing to evaluate.")
    return {"top1_error": misses_1 / count, "top5_error": misses_5 / count, "examples": count}


def evaluate_split(run, split, ten_crop):
    """The split's errors with the centre crop, and with ten crops if asked."""
    metrics = evaluate(run, split, ten_crop=False)
    if ten_crop:
        ten = evaluate(run, split, ten_crop=True)
        metrics.update({f"ten_crop_{k}": v for k, v in ten.items() if k != "examples"})
    return metrics


def _log_scalars(writer, step, metrics):
    with writer.as_default(step=step):
        for name, value in metrics.items():
            if name != "examples":
                tf.summary.scalar(name, value)


def _log_evaluation(run, metrics, seconds=None, train_sample=None):
    _log_scalars(run.validation_writer, run.step, metrics)
    if seconds is not None:
        with run.validation_writer.as_default(step=run.step):
            tf.summary.scalar(EVALUATION_SECONDS, seconds)
    if train_sample is not None:
        _log_scalars(run.train_sample_writer, run.step, train_sample)
    if run.chief:
        with run.train_writer.as_default(step=run.step):
            grid = figures.filter_figure(model_lib.conv1_kernels(run.model), zoom=2)
            tf.summary.image("conv1_filters", grid[None])
        run.write_histograms(tf.constant(run.step, tf.int64))


def evaluate_and_schedule(run):
    """An evaluation point: the validation error (the only data the schedule sees), the
    schedule's decision, the logs, metrics.json and a checkpoint."""
    with run.wall_time.part("evaluations"):
        began = time.perf_counter()
        metrics = evaluate_split(run, data.VALIDATION, run.config.ten_crop_each_evaluation)
        train_sample = _train_sample_errors(run)
        seconds = time.perf_counter() - began
        _log_evaluation(run, metrics, seconds, train_sample)
    reduced = run.schedule.record(metrics["top1_error"])
    with run.validation_writer.as_default(step=run.step):
        # The rate from this step on: where the schedule cut it is exact here.
        tf.summary.scalar(LEARNING_RATE, float(run.schedule.learning_rate))
    print(_evaluation_line(run, metrics, reduced, train_sample) + f" ({seconds:.1f} s)")
    save_checkpoint(run)
    if run.chief:
        model_dir.write_metrics(run.workdir, {"epoch": run.epoch, "step": run.step,
                                              "finished": False, "validation": metrics,
                                              **_train_sample_entry(train_sample)})
    return metrics


def _train_sample_errors(run):
    """The fixed training sample's errors (centre crop, inference mode), or None."""
    if not run.config.train_error_examples:
        return None
    return evaluate(run, data.TRAIN, ten_crop=False)


def _train_sample_entry(train_sample):
    return {} if train_sample is None else {TRAIN_SAMPLE: train_sample}


def final_report(run):
    """The finished run's errors on the validation split and, where the data has one, the
    test split: centre crop, and ten crops unless --eval_ten_crop=false."""
    with run.wall_time.part("final evaluation"):
        return _final_report(run)


def _final_report(run):
    report = {"validation": evaluate_split(run, data.VALIDATION, run.config.eval_ten_crop)}
    train_sample = _train_sample_errors(run)
    _log_evaluation(run, report["validation"], train_sample=train_sample)
    if run.source.num_test_examples:
        report["test"] = evaluate_split(run, data.TEST, run.config.eval_ten_crop)
    report.update(_train_sample_entry(train_sample))
    if run.chief:
        model_dir.write_metrics(run.workdir, {"epoch": run.epoch, "step": run.step,
                                              "finished": True, **report})
    return report


def export_model(run):
    if not (run.config.export and run.chief):
        return
    with run.wall_time.part("export"):
        _export_model(run)


def _export_model(run):
    path = export.export_saved_model(
        model_config=run.config, num_classes=run.source.num_classes,
        weights=run.model.get_weights(), stats=run.stats, class_names=run.source.class_names,
        export_dir=os.path.join(run.workdir, model_dir.EXPORT_DIR),
        ten_crop=run.config.export_ten_crop, replace=True,
    )
    print(f"Exported the SavedModel to {path}")


# ----------------------------------------------------------------------------------
# The whole job.


@contextlib.contextmanager
def _lost_workers_reported(run):
    try:
        yield
    except WORKER_LOST_ERRORS as e:
        if run.distribution.name != distribute.MULTI_WORKER:
            raise
        raise TrainingError(
            f"Lost another worker at step {run.step}: {_cause(e.message)} Restart every "
            "worker with the same command and TF_CONFIG to resume from the last checkpoint, "
            f"{tf.train.latest_checkpoint(run.checkpoint_dir)}."
        ) from e


def _open_writers(run):
    if run.chief:
        run.train_writer = tf.summary.create_file_writer(
            os.path.join(run.workdir, model_dir.TRAIN_LOGS))

        @tf.function
        def write_histograms(step):
            # One traced call for every variable, not each histogram's ops one by one.
            with run.train_writer.as_default(step=step):
                for variable in run.model.trainable_variables:
                    tf.summary.histogram(variable.path, variable)

        run.write_histograms = write_histograms
        run.validation_writer = tf.summary.create_file_writer(
            os.path.join(run.workdir, model_dir.VALIDATION_LOGS))
        run.train_sample_writer = (
            tf.summary.create_file_writer(os.path.join(run.workdir, model_dir.TRAIN_SAMPLE_LOGS))
            if run.config.train_error_examples else tf.summary.create_noop_writer())
    else:
        run.train_writer = run.validation_writer = run.train_sample_writer = (
            tf.summary.create_noop_writer())


def train_and_evaluate(config, workdir, started=None):
    """Trains to the budget, evaluating and letting the schedule decide at each evaluation
    point, checkpoints, reports the final errors and exports a SavedModel. Returns the
    final report: {"validation": {...}, "test": {...}} (test where the data has one).
    The wall time's breakdown, counted from `started` (a `time.perf_counter()` value;
    default now), is printed at the end.

    Raises:
      TrainingError: for anything that stops the run, with what to do; Interrupted
        (a TrainingError) after SIGTERM or Ctrl-C, once a checkpoint is saved.

    Under multi_worker every worker runs this with the same config and a workdir they
    all see; the chief writes the checkpoints, logs, statistics and export.
    """
    wall_time = WallTime(started)
    errors = config_lib.validate(config, os.environ.get(distribute.TF_CONFIG))
    if errors:
        raise TrainingError(" ".join(errors))
    distribution = create_distribution(config)
    print(f"Strategy: {distribution.description}")
    check_devices(config, distribution)
    source = load_source(config)
    changed = check_data(config, workdir, source)
    check_init_source(config)
    model_dir.check_writable(workdir)
    lock = model_dir.Lock(workdir) if distribution.is_chief else contextlib.nullcontext()
    with lock, _StopRequest() as stop:
        run = start_run(config, workdir, distribution, source, changed, wall_time)
        run.stop = stop
        run.train_step = make_train_step(run.model, run.optimizer, distribution.strategy,
                                         config.batch_size, run.loss_scale)
        run.eval_step = make_eval_step(run.model, distribution.strategy)
        _open_writers(run)
        with _lost_workers_reported(run):
            while run.step < run.total_steps:
                train_epoch(run)
            save_checkpoint(run)
            report = final_report(run)
        print(_report_line(report, source.corrupt_count()))
        export_model(run)
        if run.chief:
            print(wall_time.line())
    return report


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


def _errors_text(metrics):
    text = f"top-1 error {metrics['top1_error']:.4f}, top-5 {metrics['top5_error']:.4f}"
    if "ten_crop_top1_error" in metrics:
        text += (f"; ten-crop top-1 {metrics['ten_crop_top1_error']:.4f}, "
                 f"top-5 {metrics['ten_crop_top5_error']:.4f}")
    return text


def _evaluation_line(run, metrics, reduced, train_sample=None):
    line = (f"epoch {run.epoch + (run.step % run.steps_per_epoch > 0)}, step {run.step}: "
            f"validation {_errors_text(metrics)}")
    if train_sample is not None:
        line += f"; training sample top-1 error {train_sample['top1_error']:.4f}"
    corrupt = run.source.corrupt_count()
    if corrupt:
        line += f"; {corrupt} corrupt images skipped so far"
    if reduced:
        line += (f"; learning rate divided by 10, now "
                 f"{float(run.schedule.learning_rate):.2g}")
    return line


def _report_line(report, corrupt):
    lines = [f"final {split}: {_errors_text(metrics)} ({metrics['examples']} images)"
             for split, metrics in report.items()]
    if corrupt:
        lines.append(f"{corrupt} corrupt images were skipped")
    return "\n".join(lines)
