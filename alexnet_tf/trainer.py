"""Training and evaluation: the paper's recipe (Section 5) as a custom loop.

`train_and_evaluate(config, workdir)` is the whole job: data, statistics, model,
the paper's update, evaluation every epoch, checkpoints, TensorBoard, and a
SavedModel at the end. Resuming is the default: run it again with the same
workdir and it continues from the last checkpoint.
"""

import dataclasses
import json
import math
import os
import signal
import time

import tensorflow as tf
from tqdm import tqdm

from alexnet_tf import data, dataset_stats, export, input_pipeline, model as model_lib, optim
from alexnet_tf import prepare_data

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
    dtype_policy: str = "float32"
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
        probe = os.path.join(workdir, ".write_test")
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


def load_or_compute_stats(config, source, workdir):
    """The mean image and RGB PCA of the training split: from --stats_file, else from
    the model directory, else computed in one pass (and saved there)."""
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
        dtype_policy=config.dtype_policy,
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


def cross_entropy(logits, labels):
    """The multinomial logistic regression objective (Section 5), averaged over the batch."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
        )
    )


def make_train_step(model, optimizer):
    variables = model.trainable_variables

    @tf.function
    def train_step(images, labels, learning_rate):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = cross_entropy(logits, labels)
        gradients = tape.gradient(loss, variables)
        optimizer.apply(gradients, variables, learning_rate)
        return loss, optim.top_k_error(logits, labels, 1), optim.top_k_error(logits, labels, 5)

    return train_step


def make_eval_step(model):
    @tf.function
    def eval_step(images, labels):
        """images [B, H, W, 3], or [B, 10, H, W, 3]: the softmax averaged over ten crops."""
        if images.shape.rank == 5:
            crops = tf.shape(images)[1]
            flat = tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))
            probabilities = tf.nn.softmax(tf.cast(model(flat, training=False), tf.float32))
            probabilities = tf.reduce_mean(
                tf.reshape(probabilities, [-1, crops, tf.shape(probabilities)[-1]]), axis=1
            )
        else:
            probabilities = tf.nn.softmax(tf.cast(model(images, training=False), tf.float32))
        labels = tf.cast(labels, tf.int32)
        misses_1 = 1.0 - tf.cast(tf.math.in_top_k(labels, probabilities, 1), tf.float32)
        misses_5 = 1.0 - tf.cast(tf.math.in_top_k(labels, probabilities, 5), tf.float32)
        return tf.reduce_sum(misses_1), tf.reduce_sum(misses_5), tf.size(labels)

    return eval_step


def evaluate(model, source, stats, config, ten_crop, eval_step=None):
    """Top-1 and top-5 error over the validation split (or its first eval_steps batches)."""
    eval_step = eval_step or make_eval_step(model)
    dataset = input_pipeline.make_eval_dataset(
        source.encoded_validation, stats, config.eval_batch_size,
        image_size=config.image_size, crop_size=config.crop_size, ten_crop=ten_crop,
        corrupt_counter=source.corrupt_counter, dct_method=source.dct_method,
    )
    if config.eval_steps:
        dataset = dataset.take(config.eval_steps)
    misses_1 = misses_5 = count = 0
    for images, labels in dataset:
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


def train_and_evaluate(config, workdir):
    """Trains, evaluates each epoch, checkpoints, and exports a SavedModel. Returns the
    last validation metrics."""
    check_workdir(workdir)
    check_compatible_config(config, workdir)
    source = load_source(config)
    write_config(config, source.class_names, workdir)
    stats = load_or_compute_stats(config, source, workdir)

    model = create_model(config, source.num_classes)
    optimizer = optim.PaperMomentumSGD(
        model.trainable_variables, momentum=config.momentum,
        weight_decay=config.weight_decay, decay_biases=config.decay_biases,
    )
    schedule = create_schedule(config)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
    step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="step_in_epoch")
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, schedule=schedule, step=step, epoch=epoch_var,
        step_in_epoch=step_in_epoch,
    )
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=config.keep_checkpoints
    )
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        print(f"Resumed from {manager.latest_checkpoint}: epoch {int(epoch_var)}, "
              f"step {int(step)}.")

    steps_per_epoch = config.steps_per_epoch or max(1, source.num_train_examples // config.batch_size)
    train_step = make_train_step(model, optimizer)
    eval_step = make_eval_step(model)
    train_writer = tf.summary.create_file_writer(os.path.join(workdir, "train"))
    val_writer = tf.summary.create_file_writer(os.path.join(workdir, "validation"))
    metrics = {}

    with _StopRequest() as stop:
        while int(epoch_var) < config.epochs:
            epoch = int(epoch_var)
            # The order of an epoch depends only on the seed and the epoch, so a
            # resumed epoch skips the batches it already trained on.
            dataset = input_pipeline.make_train_dataset(
                source.train_for_epoch(epoch), stats, config.batch_size, image_size=config.image_size,
                crop_size=config.crop_size, lighting=config.lighting,
                lighting_stddev=config.lighting_stddev, seed=config.seed + epoch, num_epochs=1,
                corrupt_counter=source.corrupt_counter, dct_method=source.dct_method,
            ).take(steps_per_epoch).skip(int(step_in_epoch))
            progress = tqdm(
                total=steps_per_epoch, initial=int(step_in_epoch), unit="step",
                desc=f"epoch {epoch + 1}/{config.epochs}", dynamic_ncols=True, mininterval=1.0,
            )
            window_start, window_images = time.perf_counter(), 0
            for images, labels in dataset:
                learning_rate = schedule.learning_rate
                loss, top1, top5 = train_step(images, labels, learning_rate)
                # float() waits for the step: a host-device sync point, once per step.
                loss_value = float(loss)
                if not math.isfinite(loss_value):
                    raise TrainingError(
                        f"The loss became {loss_value} at step {int(step) + 1} (epoch "
                        f"{epoch + 1}); training stopped without saving. The last good "
                        f"checkpoint is {manager.latest_checkpoint}. Try a lower "
                        "--learning_rate."
                    )
                if int(step) == 0 or int(step_in_epoch) == 0:
                    with train_writer.as_default(step=int(step)):
                        tf.summary.image("augmented_inputs", _visible(images[:4]),
                                         max_outputs=4)
                step.assign_add(1)
                step_in_epoch.assign_add(1)
                window_images += int(images.shape[0])
                progress.update(1)
                if int(step) % config.log_every_steps == 0 or int(step_in_epoch) == steps_per_epoch:
                    elapsed = time.perf_counter() - window_start
                    images_per_second = window_images / max(elapsed, 1e-9)
                    progress.set_postfix(loss=f"{loss_value:.3f}", lr=f"{float(learning_rate):.2g}",
                                         img_s=f"{images_per_second:.0f}")
                    with train_writer.as_default(step=int(step)):
                        tf.summary.scalar("loss", loss_value)
                        tf.summary.scalar("top1_error", float(top1))
                        tf.summary.scalar("top5_error", float(top5))
                        tf.summary.scalar("learning_rate", float(learning_rate))
                        tf.summary.scalar("images_per_second", images_per_second)
                    window_start, window_images = time.perf_counter(), 0
                if int(step) % config.checkpoint_every_steps == 0:
                    save_checkpoint(manager, int(step))
                if stop.signal:
                    progress.close()
                    path = save_checkpoint(manager, int(step))
                    print(f"{stop.signal}: saved {path} at step {int(step)}; rerun the same "
                          "command to resume.")
                    return metrics
            progress.close()

            metrics = evaluate(model, source, stats, config, ten_crop=False, eval_step=eval_step)
            if config.eval_ten_crop:
                ten = evaluate(model, source, stats, config, ten_crop=True, eval_step=eval_step)
                metrics.update({f"ten_crop_{k}": v for k, v in ten.items() if k != "examples"})
            with val_writer.as_default(step=int(step)):
                for name, value in metrics.items():
                    if name != "examples":
                        tf.summary.scalar(name, value)
            with train_writer.as_default(step=int(step)):
                tf.summary.image("conv1_filters", filter_grid(conv1_kernel(model), config.towers))
                for variable in model.trainable_variables:
                    tf.summary.histogram(variable.path, variable)
            reduced = schedule.end_epoch(epoch, metrics["top1_error"])
            print(_epoch_line(epoch, config.epochs, metrics, source.corrupt_count(), reduced,
                              float(schedule.learning_rate)))
            epoch_var.assign_add(1)
            step_in_epoch.assign(0)
            save_checkpoint(manager, int(step))
            with open(os.path.join(workdir, "metrics.json"), "w") as f:
                json.dump({"epoch": int(epoch_var), "step": int(step), **metrics}, f, indent=2)

    if not metrics:  # resumed a finished run: report it
        metrics = evaluate(model, source, stats, config, ten_crop=False, eval_step=eval_step)
    if config.export:
        path = export.export_saved_model(
            model_config=config, num_classes=source.num_classes, weights=model.get_weights(),
            stats=stats, class_names=source.class_names,
            export_dir=os.path.join(workdir, EXPORT_DIR), ten_crop=config.export_ten_crop,
        )
        print(f"Exported the SavedModel to {path}")
    return metrics


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
