"""A model directory: what a training run leaves, and what every tool reads back.

    MODEL_DIR/config.json         the TrainConfig in effect (config.py)
    MODEL_DIR/flags.txt           the same as a flagfile that reruns the run
    MODEL_DIR/classes.json        the class names, in label order
    MODEL_DIR/class_descriptions.json  their words, where they are more than names
    MODEL_DIR/dataset_stats.npz   the training set's mean image and RGB PCA
    MODEL_DIR/checkpoints/        ckpt-STEP.{index,data-*}; damaged ones moved to damaged/
    MODEL_DIR/metrics.json        the last evaluation, and the final report
    MODEL_DIR/train/, validation/ TensorBoard logs
    MODEL_DIR/export/             the SavedModel
    MODEL_DIR/.lock               held by the run that is using the directory

This module owns that layout: the file names, reading and writing the run's record,
the compatibility of a resumed run, the lock, finding the newest intact checkpoint,
and the one model builder (`create_model`) that training, evaluation and export share.
It imports nothing of the trainer, the export or the tools, which all import it.
"""

import dataclasses
import datetime
import fcntl
import json
import os
import re
import socket
import sys

import tensorflow as tf

from alexnet_tf import config as config_lib
from alexnet_tf import dataset_stats, files, settings
from alexnet_tf import model as model_lib

CONFIG_FILE = "config.json"
FLAGS_FILE = "flags.txt"
CLASSES_FILE = "classes.json"
# Words for the classes, where they are more than their names (ImageNet's synset ids).
CLASS_DESCRIPTIONS_FILE = "class_descriptions.json"
STATS_FILE = "dataset_stats.npz"
CHECKPOINT_DIR = "checkpoints"
DAMAGED_DIR = "damaged"
METRICS_FILE = "metrics.json"
EXPORT_DIR = "export"
LOCK_FILE = ".lock"
TRAIN_LOGS = "train"
VALIDATION_LOGS = "validation"
# The error of a fixed sample of training images (--train_error_examples).
TRAIN_SAMPLE_LOGS = "train_sample"

CHECKPOINT_NAME = "ckpt"
_CHECKPOINT_INDEX = re.compile(rf"^{CHECKPOINT_NAME}-(\d+)\.index$")


# What reading a damaged checkpoint raises: a checksum mismatch or a bad sstable is an
# OpError, a truncated data file an IndexError from the bundle reader.
_DAMAGED_CHECKPOINT_ERRORS = (tf.errors.OpError, IndexError, ValueError, OSError)


class TrainingError(RuntimeError):
    """A run or tool that cannot start or continue; the message says why and what to do."""


class Interrupted(TrainingError):
    """A run stopped by SIGTERM or Ctrl-C after saving a checkpoint: it can be resumed."""


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
        dtype_policy=settings.MIXED_PRECISION_POLICIES[config.mixed_precision],
        conv1_padding=config.conv1_padding or None,
        weight_init=config.weight_init or None,
        lrn_settings=model_lib.LRNSettings(
            config.lrn_depth_radius, config.lrn_bias, config.lrn_alpha, config.lrn_beta,
            config.lrn_alpha_convention, config.lrn_across_towers),
        pooling_rule=config.pooling_rule,
        seed=config.seed,
    )
    kwargs.update(overrides)
    return model_lib.build_alexnet(num_classes, **kwargs)


# ----------------------------------------------------------------------------------
# The run's record.


def check_writable(workdir):
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


def load_config(workdir):
    """The TrainConfig a model directory was trained with."""
    config_path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise TrainingError(f"{workdir} is not a model directory: {config_path} is missing.")
    try:
        with open(config_path) as f:
            return config_lib.TrainConfig.from_json(f.read())
    except (ValueError, TypeError) as e:
        raise TrainingError(f"{config_path} is not a config.json of alexnet_tf: {e}") from e


def load_class_names(workdir):
    classes_path = os.path.join(workdir, CLASSES_FILE)
    try:
        with open(classes_path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise TrainingError(f"Cannot read the class names of {workdir}: {e}") from e


def load_class_descriptions(workdir, class_names):
    """The classes' words (class_descriptions.json), else their names."""
    path = os.path.join(workdir, CLASS_DESCRIPTIONS_FILE)
    if not os.path.exists(path):
        return list(class_names)
    with open(path) as f:
        descriptions = json.load(f)
    if len(descriptions) != len(class_names):
        raise TrainingError(f"{path} describes {len(descriptions)} classes; {workdir} has "
                            f"{len(class_names)}.")
    return descriptions


def write_class_names(workdir, class_names, descriptions=None):
    files.write_text_atomically(os.path.join(workdir, CLASSES_FILE), json.dumps(list(class_names)))
    if descriptions is not None and list(descriptions) != list(class_names):
        files.write_text_atomically(os.path.join(workdir, CLASS_DESCRIPTIONS_FILE),
                                    json.dumps(list(descriptions)))


def previous_config(workdir):
    """The config of the run a model directory holds, or None for a new directory."""
    return load_config(workdir) if os.path.exists(os.path.join(workdir, CONFIG_FILE)) else None


def check_resumable(config, workdir):
    """Refuses to continue a model directory's run with settings its checkpoints cannot
    take (config.FIXED ones). Returns {name: (old, new)} of the changeable settings that
    differ, which the resumed run applies."""
    previous = previous_config(workdir)
    if previous is None:
        return {}
    refused = config_lib.check_resumable(previous, config)
    if refused:
        raise TrainingError(
            f"{workdir} holds a run with other settings ({'; '.join(refused)}). Resume it "
            f"with its own (--flagfile={os.path.join(workdir, FLAGS_FILE)}, then the settings that "
            "may change), or use a new --model_dir.")
    return config_lib.changed_on_resume(previous, config)


def write_run_record(config, class_names, workdir):
    """config.json, flags.txt and classes.json: the settings in effect, each file whole."""
    files.write_text_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json())
    files.write_text_atomically(os.path.join(workdir, FLAGS_FILE),
                                config_lib.to_flagfile(config, workdir))
    write_class_names(workdir, class_names)


def write_metrics(workdir, metrics):
    files.write_text_atomically(os.path.join(workdir, METRICS_FILE), json.dumps(metrics, indent=2))


def read_scalars(workdir, logs, tag):
    """[(step, value)] of a scalar the run logged for TensorBoard under workdir/logs, in
    step order. Where a resumed run logged a step again, its last value counts."""
    event_dir = os.path.join(workdir, logs)
    if not os.path.isdir(event_dir):
        raise FileNotFoundError(f"{event_dir} does not exist: is {workdir} a run's model "
                                "directory?")
    values = {}
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # summary_iterator's deprecation notice
    try:
        for name in sorted(os.listdir(event_dir)):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
                for value in event.summary.value:
                    if value.tag == tag:
                        values[event.step] = float(tf.make_ndarray(value.tensor))
    finally:
        logger.setLevel(level)
    return sorted(values.items())


def read_metrics(workdir):
    """metrics.json as a dict, or None before the first evaluation."""
    metrics_path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(metrics_path):
        return None
    with open(metrics_path) as f:
        return json.load(f)


def load_stats(config, workdir):
    stats_path = config.stats_file or os.path.join(workdir, STATS_FILE)
    try:
        return dataset_stats.load_stats(stats_path)
    except (OSError, ValueError) as e:
        raise TrainingError(f"Cannot use the dataset statistics in {stats_path}: {e}") from e


# ----------------------------------------------------------------------------------
# The lock.


class Lock:
    """Holds MODEL_DIR/.lock for as long as a run uses the directory.

    An exclusive flock(2): the kernel releases it when the holder exits, however it
    exits, so a killed run never leaves the directory locked. The file holds the
    holder's process id, host and start time, which a refused run reports.
    """

    def __init__(self, workdir):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._file = None

    def __enter__(self):
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise TrainingError(
                f"{os.path.dirname(self.path)} is in use by {holder}; wait for that run to "
                "end or stop it, or use another --model_dir.") from None
        started = datetime.datetime.now().isoformat(timespec="seconds")
        handle.truncate(0)
        handle.write(f"process {os.getpid()} on {socket.gethostname()} (started {started}: "
                     f"{' '.join(sys.argv)})\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc):
        self._file.truncate(0)
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None


# ----------------------------------------------------------------------------------
# Checkpoints.


def checkpoint_prefixes(checkpoint_dir):
    """The checkpoints in a directory, newest (highest step) first, found by listing the
    files rather than by trusting its `checkpoint` state file."""
    if not tf.io.gfile.isdir(checkpoint_dir):
        return []
    steps = sorted((int(m.group(1)) for m in map(_CHECKPOINT_INDEX.match,
                                                  tf.io.gfile.listdir(checkpoint_dir)) if m),
                   reverse=True)
    return [os.path.join(checkpoint_dir, f"{CHECKPOINT_NAME}-{step}") for step in steps]


def checkpoint_step(prefix):
    return int(prefix.rsplit("-", 1)[1])


def check_checkpoint(prefix):
    """None if every tensor of the checkpoint reads back with a matching checksum; else
    what is wrong, in one line."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except _DAMAGED_CHECKPOINT_ERRORS as e:
        message = getattr(e, "message", None) or str(e) or type(e).__name__
        return message.strip().splitlines()[0]
    return None


def set_aside(prefix):
    """Moves a damaged checkpoint's files into checkpoints/damaged/, never deleting them."""
    directory, name = os.path.split(prefix)
    damaged = os.path.join(directory, DAMAGED_DIR)
    os.makedirs(damaged, exist_ok=True)
    for file_name in os.listdir(directory):
        if file_name.startswith(name + "."):
            os.replace(os.path.join(directory, file_name), os.path.join(damaged, file_name))
    return damaged


def newest_intact_checkpoint(checkpoint_dir, set_damaged_aside=False, log=print):
    """The newest checkpoint whose every tensor reads back intact, or None.

    Each damaged one on the way is reported in one line naming it (and moved to
    checkpoints/damaged/ with set_damaged_aside); the `checkpoint` state file is then
    rewritten to name what is left, so TensorFlow's own tools agree.
    """
    damaged = []
    for prefix in checkpoint_prefixes(checkpoint_dir):
        problem = check_checkpoint(prefix)
        if problem is None:
            if damaged:
                log(f"Using {prefix}, the newest intact checkpoint.")
                if set_damaged_aside:
                    _rewrite_checkpoint_state(checkpoint_dir, prefix)
            return prefix
        where = f"; moved to {set_aside(prefix)}" if set_damaged_aside else ""
        log(f"warning: checkpoint {prefix} is damaged ({problem}){where}.")
        damaged.append(prefix)
    if damaged:
        log(f"warning: no intact checkpoint left in {checkpoint_dir}.")
    return None


def _rewrite_checkpoint_state(checkpoint_dir, latest):
    remaining = sorted(checkpoint_prefixes(checkpoint_dir), key=checkpoint_step)
    tf.compat.v1.train.update_checkpoint_state(checkpoint_dir, latest, remaining)


# ----------------------------------------------------------------------------------
# Reading a trained network back.


@dataclasses.dataclass
class Restored:
    """What the tools need of a model directory."""

    config: config_lib.TrainConfig
    network: object
    class_names: list
    stats: dataset_stats.DatasetStats
    checkpoint: str
    class_descriptions: list


def restore(workdir, log=print):
    """The float32 network of a model directory with its newest intact checkpoint's
    weights, no device placement, and what goes with it."""
    config = load_config(workdir)
    class_names = load_class_names(workdir)
    checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
    latest = newest_intact_checkpoint(checkpoint_dir, log=log)
    if latest is None:
        damaged = "intact " if checkpoint_prefixes(checkpoint_dir) else ""
        raise TrainingError(f"No {damaged}checkpoint in {checkpoint_dir}: train the model first.")
    network = create_model(config, len(class_names), tower_devices=(None,) * config.towers,
                           dtype_policy="float32")
    try:
        status = tf.train.Checkpoint(model=network).read(latest)
    except (ValueError, tf.errors.OpError) as e:
        raise TrainingError(
            f"{latest} does not fit the network of {workdir}'s config.json and "
            f"classes.json ({len(class_names)} classes): {e}") from e
    # The optimizer's state in a training checkpoint is not wanted here; every weight
    # of the network is: one missing would leave its random initial value in silence.
    status.expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError:
        raise TrainingError(f"{latest} holds no weights (or not all weights) of the network "
                            f"of {workdir}'s config.json.") from None
    return Restored(config, network, class_names, load_stats(config, workdir), latest,
                    load_class_descriptions(workdir, class_names))


def is_model_dir(directory):
    return os.path.exists(os.path.join(directory, CONFIG_FILE)) or os.path.isdir(
        os.path.join(directory, CHECKPOINT_DIR))
