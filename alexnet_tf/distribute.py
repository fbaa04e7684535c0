"""Where training runs: one device, the paper's two towers, or data parallelism.

Strategies (`create_distribution`):

  one_device    the whole network on one device (tf.distribute.OneDeviceStrategy).
  towers        the paper's model parallelism (Section 3.2): each tower of one network
                on its own device, the towers' devices from the model builder
                (`placement.resolve_tower_devices`); TensorFlow's default strategy.
  mirrored      data parallelism over the local GPUs, or over given devices
                (tf.distribute.MirroredStrategy): a whole copy of the network per device.
  multi_worker  data parallelism across machines (tf.distribute.MultiWorkerMirroredStrategy),
                the cluster and this worker's task given by the TF_CONFIG environment
                variable.
  auto          multi_worker when TF_CONFIG names a cluster, else towers when tower
                devices are given or two GPUs are visible (the two-tower net), else
                one_device.

Data parallelism keeps the paper's update (`trainer.make_train_step`): the global batch
is split evenly between the replicas, each replica's loss is its share of the mean
over the global batch, the gradients are summed over the replicas, and every replica
applies the same update to its own copy of the weights.
"""

import dataclasses
import json
import os
import socket

import keras
import tensorflow as tf

from alexnet_tf import ops, placement

from alexnet_tf.settings import (  # noqa: F401
    AUTO, ONE_DEVICE, TOWERS, MIRRORED, MULTI_WORKER, STRATEGIES,
)

DATA_PARALLEL = (ONE_DEVICE, MIRRORED, MULTI_WORKER)

TF_CONFIG = "TF_CONFIG"
TF_CONFIG_EXAMPLE = (
    '{"cluster": {"worker": ["host0:12345", "host1:12345"]}, '
    '"task": {"type": "worker", "index": 0}}'
)

# Replica r's dropout seeds start this far along replica 0's: more draws than any run
# makes, so no two replicas ever draw a mask from the same seed.
DROPOUT_STREAM_OFFSET = 2**40


class DistributionError(ValueError):
    """A strategy that cannot run as asked; the message says why."""


@dataclasses.dataclass
class Distribution:
    """A tf.distribute strategy and what the training loop needs to know about it.

    Attributes:
      strategy: the strategy; the network and its optimizer are built in its scope.
      name: one of STRATEGIES other than auto.
      tower_devices: the model builder's `tower_devices`: one device per tower for
        `towers`, else None per tower (each replica holds the whole network).
      is_chief: this worker writes checkpoints, logs, statistics and the export.
      task_id: this worker's index in its TF_CONFIG job (0 without a cluster).
      description: one line for the log.
    """

    strategy: tf.distribute.Strategy
    name: str
    tower_devices: tuple
    is_chief: bool = True
    task_id: int = 0
    description: str = ""

    @property
    def num_replicas(self):
        return self.strategy.num_replicas_in_sync

    @property
    def devices(self):
        """This worker's devices that run the network."""
        if self.name == TOWERS:
            return tuple(self.tower_devices)
        return tuple(self.strategy.extended.worker_devices)


def parse_tf_config(text):
    """The TF_CONFIG dict, checked for a cluster and this worker's task in it."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise DistributionError(f"TF_CONFIG is not JSON ({e}): {text!r}") from e
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise DistributionError(
            f"TF_CONFIG has no \"cluster\" of worker addresses: {text!r}. "
            f"Example: {TF_CONFIG_EXAMPLE}")
    if not isinstance(task, dict) or task.get("type") not in cluster:
        raise DistributionError(
            f"TF_CONFIG's \"task\" must name one of its cluster's jobs {sorted(cluster)} "
            f"and this worker's index: {text!r}. Example: {TF_CONFIG_EXAMPLE}")
    index = task.get("index", 0)
    if not isinstance(index, int) or not 0 <= index < len(cluster[task["type"]]):
        raise DistributionError(
            f"TF_CONFIG's task index {index!r} is not one of the "
            f"{len(cluster[task['type']])} {task['type']} addresses: {text!r}")
    return config


def is_chief_task(tf_config):
    """TensorFlow's rule: the "chief" task, or worker 0 of a cluster without one."""
    task, cluster = tf_config["task"], tf_config["cluster"]
    return task["type"] == "chief" or (
        task["type"] == "worker" and task.get("index", 0) == 0 and "chief" not in cluster)


def check_arguments(strategy, devices, tower_devices, towers, tf_config):
    """Contradictions between the strategy and the other arguments; a list of messages.

    tf_config: the TF_CONFIG environment variable's text, or None when it is unset.
    """
    if strategy not in STRATEGIES:
        return [f"--strategy={strategy} is not one of {', '.join(STRATEGIES)}."]
    errors = []
    if tower_devices and strategy in DATA_PARALLEL:
        errors.append(
            f"--strategy={strategy} copies the whole network to each device; --tower_devices "
            "places the towers of one network on two devices (--strategy=towers). Give one "
            "or the other.")
    if devices and strategy not in (ONE_DEVICE, MIRRORED):
        errors.append(
            f"--devices is for --strategy=one_device or mirrored, not {strategy} (towers: "
            "--tower_devices; multi_worker: every local GPU, or the CPU).")
    if strategy == ONE_DEVICE and len(devices) > 1:
        errors.append(f"--strategy=one_device takes one device, not {len(devices)}: "
                      f"{','.join(devices)}.")
    if strategy == TOWERS and towers != 2:
        errors.append(f"--strategy=towers places the two towers of the paper's net; "
                      f"--towers={towers} has one.")
    if strategy == MULTI_WORKER and not tf_config:
        errors.append(
            "--strategy=multi_worker needs the TF_CONFIG environment variable: the "
            "cluster's worker addresses and this worker's task, e.g. "
            f"TF_CONFIG='{TF_CONFIG_EXAMPLE}'.")
    if strategy in (AUTO, MULTI_WORKER) and tf_config:
        try:
            parse_tf_config(tf_config)
        except DistributionError as e:
            errors.append(str(e))
    return errors


def resolve_strategy(strategy, tower_devices, towers, num_gpus, tf_config):
    """The strategy `auto` stands for; any other name is returned as it is."""
    if strategy != AUTO:
        return strategy
    if tf_config and parse_tf_config(tf_config):
        return MULTI_WORKER
    if towers == 2 and (tower_devices or num_gpus >= 2):
        return TOWERS
    return ONE_DEVICE


def create_distribution(strategy=AUTO, devices=(), tower_devices=(), towers=2,
                        collective_timeout_s=0.0):
    """The strategy, created. For multi_worker this must come before any other
    TensorFlow op of the process: it starts the worker's server and waits until every
    worker of TF_CONFIG has joined.

    collective_timeout_s: multi_worker only: a collective operation (an all-reduce)
      that waits longer than this for the other workers fails instead of hanging
      (0: no limit). A worker that dies is noticed sooner, within about 10 s, by the
      heartbeats of TensorFlow's coordination service.

    Raises:
      DistributionError: for contradictory arguments, TF_CONFIG missing or malformed
        for multi_worker, or devices that are not there.
    """
    tf_config = os.environ.get(TF_CONFIG) or None
    errors = check_arguments(strategy, devices, tower_devices, towers, tf_config)
    if errors:
        raise DistributionError(" ".join(errors))
    num_gpus = len(tf.config.list_physical_devices("GPU"))
    name = resolve_strategy(strategy, tower_devices, towers, num_gpus, tf_config)
    unplaced = (None,) * towers
    try:
        if name == MULTI_WORKER:
            options = tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=collective_timeout_s or None)
            created = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            parsed = parse_tf_config(tf_config)
            task = parsed["task"]
            distribution = Distribution(
                created, name, unplaced, is_chief=is_chief_task(parsed),
                task_id=task.get("index", 0))
            workers = sum(len(addresses) for addresses in parsed["cluster"].values())
            where = (f"{workers} workers, this one {task['type']} {task.get('index', 0)}"
                     f"{' (chief)' if distribution.is_chief else ''}")
        elif name == MIRRORED:
            placement.check_visible_devices(devices)
            created = tf.distribute.MirroredStrategy(devices=list(devices) or None)
            distribution = Distribution(created, name, unplaced)
            where = ", ".join(distribution.devices)
        elif name == ONE_DEVICE:
            device = devices[0] if devices else ("/gpu:0" if num_gpus else "/cpu:0")
            placement.check_visible_devices([device])
            distribution = Distribution(tf.distribute.OneDeviceStrategy(device), name, unplaced)
            where = device
        else:
            placed = placement.resolve_tower_devices(tuple(tower_devices) or None, towers)
            if None in placed:
                raise DistributionError(
                    "--strategy=towers needs a device per tower: two visible GPUs, or "
                    f"--tower_devices (visible: {num_gpus} GPUs).")
            distribution = Distribution(tf.distribute.get_strategy(), name, placed)
            where = ", ".join(placed)
    except DistributionError:
        raise
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise DistributionError(f"Cannot create the {name} strategy: {e}") from e
    replicas = distribution.num_replicas
    kind = "model parallel, one replica" if name == TOWERS else f"{replicas} replica(s)"
    chosen = f"{name} (chosen by auto)" if strategy == AUTO else name
    distribution.description = f"{chosen}: {kind} on {where}"
    return distribution


def check_batch_split(batch_size, num_replicas):
    """The global batch must split evenly: every replica's share weighs the same."""
    if batch_size % num_replicas:
        raise DistributionError(
            f"--batch_size={batch_size} (the global batch) does not split evenly between "
            f"{num_replicas} replicas; use a multiple of {num_replicas}.")
    return batch_size // num_replicas


def check_compute_dtype(compute_dtype, devices):
    """Runs the network's ops (convolution, LRN, pooling, matmul, and their gradients)
    once on tiny tensors in `compute_dtype` on each device, with soft placement off so
    that a missing kernel is an error rather than a silent fallback to the CPU.

    Raises:
      DistributionError: naming the device, the dtype and TensorFlow's message.
    """
    if tf.as_dtype(compute_dtype) == tf.float32:
        return
    soft = tf.config.get_soft_device_placement()
    tf.config.set_soft_device_placement(False)
    try:
        for device in devices:
            try:
                with tf.device(device):
                    _run_network_ops(tf.as_dtype(compute_dtype))
            except (tf.errors.OpError, ValueError, TypeError) as e:
                message = str(e).strip().splitlines()[0]
                raise DistributionError(
                    f"{device} cannot train in {tf.as_dtype(compute_dtype).name}: {message}. "
                    "Use --mixed_precision=none, or another device.") from e
    finally:
        tf.config.set_soft_device_placement(soft)


def _run_network_ops(dtype):
    images = tf.ones([2, 8, 8, 4], dtype)
    kernel = tf.ones([3, 3, 4, 4], dtype)
    weights = tf.ones([4, 2], dtype)
    with tf.GradientTape() as tape:
        tape.watch([images, kernel, weights])
        x = tf.nn.conv2d(images, kernel, 1, "SAME")
        x = tf.nn.relu(tf.nn.bias_add(x, tf.ones([4], dtype)))
        x = ops.local_response_normalization(x, depth_radius=1)
        x = tf.nn.max_pool2d(x, 3, 2, "VALID")
        logits = tf.matmul(tf.reduce_mean(x, axis=[1, 2]), weights)
        loss = tf.reduce_sum(tf.cast(logits, tf.float32))
    for gradient in tape.gradient(loss, [images, kernel, weights]):
        gradient.numpy()


def decorrelate_dropout(model, strategy):
    """Gives each replica its own dropout masks.

    Keras seeds a Dropout layer's masks from a (seed, counter) state variable; copied
    to every replica, it would drop the same units of the k-th example of every
    replica's share. Replica r's counter is moved r * DROPOUT_STREAM_OFFSET ahead;
    replica 0 keeps its own, so a one-replica run is unchanged. Keras does not
    checkpoint these states, so a resumed run starts them afresh either way.
    """
    layers = [inner for layer in model.layers
              for stack in getattr(layer, "stacks", [[layer]]) for inner in stack]
    # A Dropout layer of rate 0 has no seed generator.
    states = [layer.seed_generator.state for layer in layers
              if isinstance(layer, keras.layers.Dropout) and hasattr(layer, "seed_generator")]
    if not states or strategy.num_replicas_in_sync == 1:
        return

    @tf.function
    def offset():
        def per_replica():
            replica = tf.distribute.get_replica_context().replica_id_in_sync_group
            for state in states:
                step = tf.cast(replica, state.dtype) * DROPOUT_STREAM_OFFSET
                state.assign_add(tf.stack([tf.zeros_like(step), step]))

        strategy.run(per_replica)

    offset()


def split_global_batch(strategy, *arrays):
    """Per-replica values of arrays that hold a whole global batch (on every worker):
    replica r of the cluster gets the r-th of equal slices along the first axis."""

    def per_replica(array):
        share = len(array) // strategy.num_replicas_in_sync

        def value_fn(context):
            r = context.replica_id_in_sync_group
            return tf.constant(array[r * share:(r + 1) * share])

        return strategy.experimental_distribute_values_from_function(value_fn)

    return tuple(per_replica(array) for array in arrays)


def local_cluster_tf_configs(workers):
    """The TF_CONFIG of each of `workers` workers on this machine, on free ports of
    127.0.0.1 (a port found free here could still be taken before a worker binds it)."""
    sockets = [socket.socket() for _ in range(workers)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    for s in sockets:
        s.close()
    return [json.dumps({"cluster": {"worker": addresses},
                        "task": {"type": "worker", "index": index}})
            for index in range(workers)]


def worker_temp_dir(workdir, task_id):
    """Where a worker other than the chief writes what TensorFlow requires every worker
    to write (its checkpoint), to be deleted at once (TensorFlow's multi-worker guide)."""
    return os.path.join(workdir, f"workertemp_{task_id}")
