"""What the benchmarks in tools/ say about the machine they ran on and the work they
timed: the CPU and its vector extensions, the load, CPU seconds, the matmul rate that
bounds a network's FLOP/s, and a network's FLOPs; and a network exported with random
weights, as the serving benchmarks load it."""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np


def cpu_model():
    """The CPU's model name, from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load_average():
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def machine_busy_seconds():
    """CPU seconds all processes have spent on this machine since boot (Linux), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_flags():
    """The vector extensions the figures depend on ("avx2", "avx512f", ...), or []."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except OSError:
        pass
    return []


def matmul_rate(size, streams, repeats=5):
    """Median float32 FLOP/s of `streams` independent tf.matmul of size x size matrices."""
    import tensorflow as tf

    a = tf.random.normal([size, size])
    bs = [tf.random.normal([size, size]) for _ in range(streams)]
    products = tf.function(lambda: [tf.reduce_sum(tf.matmul(a, b)) for b in bs])
    [p.numpy() for p in products()]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [p.numpy() for p in products()]
        times.append(time.perf_counter() - start)
    return 2 * streams * size**3 / statistics.median(times)


def forward_flops_by_op(model, input_shape):
    """[(op name, FLOPs per image, input channels)] for each Conv2D and MatMul of the forward."""
    import tensorflow as tf

    spec = tf.TensorSpec((1,) + tuple(input_shape), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec).graph
    counted = []
    for op in graph.get_operations():
        if op.type == "Conv2D":
            kernel = op.inputs[1].shape  # [height, width, input channels per group, filters]
            per_output = kernel[0] * kernel[1] * kernel[2]
            outputs = int(np.prod(op.outputs[0].shape[1:]))
            counted.append((op.name, 2 * outputs * per_output, op.inputs[0].shape[-1]))
        elif op.type == "MatMul":
            inner = op.inputs[1].shape[1 if op.get_attr("transpose_b") else 0]
            outputs = int(np.prod(op.outputs[0].shape[1:]))
            counted.append((op.name, 2 * outputs * inner, None))
    return counted


def export_random_net(config, num_classes, export_dir, seed=0, tflite=None):
    """(export directory, network): the config's network with random weights, exported
    as the training command exports it, with a random mean image; with model.tflite
    too if `tflite` (None: where ai_edge_litert is installed)."""
    import importlib.util

    from alexnet_tf import dataset_stats, export, model_dir

    network = model_dir.create_model(config, num_classes)
    rng = np.random.default_rng(seed)
    side = config.image_size
    stats = dataset_stats.DatasetStats(
        mean_image=rng.uniform(0, 255, (side, side, 3)).astype(np.float32),
        covariance=np.eye(3) * 100.0, eigenvalues=np.full(3, 100.0), eigenvectors=np.eye(3),
        num_examples=1)
    if tflite is None:
        tflite = importlib.util.find_spec("ai_edge_litert") is not None
    path = export.export_saved_model(config, num_classes, network.get_weights(), stats,
                                     [f"class{i}" for i in range(num_classes)], export_dir,
                                     replace=True, tflite=tflite)
    return path, network


class PeerProcess:
    """A benchmark's peer in its own environment (tools/peer_*.py): a subprocess that
    answers each command line on its stdin with one JSON object on its stdout."""

    def __init__(self, command, name):
        self.name = name
        # Its stderr (warnings, a traceback) goes straight to ours.
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)

    def read(self):
        """The next JSON event; other lines on its stdout are passed on to stderr."""
        while True:
            line = self.process.stdout.readline()
            if not line:
                code = self.process.wait()
                return {"event": "error", "message": f"the {self.name} process ended (exit {code})"}
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                sys.stderr.write(line)
                continue
            if isinstance(event, dict) and "event" in event:
                return event
            sys.stderr.write(line)

    def ask(self, command):
        """Sends one command line; its answer, which must be a "times" event."""
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        event = self.read()
        if event["event"] != "times":
            raise RuntimeError(f"{self.name}: {event.get('message', event)}")
        return event

    def close(self):
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
                self.process.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
