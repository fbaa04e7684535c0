"""Serving speed: the SavedModel against ONNX Runtime and LiteRT on the same CPU, in one run.

    TF_CPU_ALLOCATOR_USE_BFC=true python tools/bench_serving.py --nets=small,paper \\
        --torch_python=/work/venvs/torch/bin/python --rounds=5 --steps=5     # the figures
    python tools/bench_serving.py --nets=small --rounds=1 --steps=2 --warmup=1  # a look

For each net ("small": configs/small.flags, 10 classes; "paper": configs/paper.flags,
1000 classes) the network is built with random weights as the training command builds
it, and exported as the training command exports it (alexnet_tf.export, with
`--tflite`), into --workdir. Then, at each of --batch_sizes, these are timed by turns,
round after round, so that a change of load hits all alike, each runner's calls after
--pause_s of quiet (ONNX Runtime's and TensorFlow's idle threads spin for a while after
their work: without the pause a runner that follows another shares the cores with it):

  serve_images      the SavedModel's `serve_images` signature (tf.saved_model.load, as a
                    serving process without the package loads it) on uint8 images of the
                    recipe's rescaled size (256x256 for the paper net): centre crop,
                    mean image, network, softmax, top-5
  serving_default   the same on those images as JPEG bytes (quality 90): decoding too
  LiteRT            model.tflite's serve_images (ai_edge_litert's Interpreter), as above;
                    left out when ai_edge_litert is not installed
  ONNX Runtime      the PyTorch peer's network (tools/peer_torch_step.py: the same layers
                    and parameter count) exported to ONNX and run by onnxruntime in the
                    PyTorch environment (tools/peer_onnx_serving.py), on float32 crops:
                    the network alone, no crop or mean

Each figure is the median images/s over every timed call after --warmup; the ratio of
the SavedModel's serve_images over ONNX Runtime has the spread of its per-round ratios.
At the largest batch it also prints the fraction of the matmul rate the SavedModel
reaches: the network's forward FLOPs (Conv2D and MatMul) per second over the best
float32 tf.matmul rate of --matmul_size (tools/bench_train_step.py's measure).

Targets (the paper net): serve_images at least as fast as ONNX Runtime at batch 1 and
at batch 64, and at least 0.8 of the matmul rate at batch 64.

ONNX Runtime and PyTorch are benchmark-only peers in their own environment, never
dependencies of the package:

    python -m venv /work/venvs/torch && /work/venvs/torch/bin/pip install torch==2.14.1 \\
        numpy onnxruntime onnx onnxscript
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from alexnet_tf import config as config_lib  # noqa: E402
from alexnet_tf import export  # noqa: E402
from machine import (  # noqa: E402  tools/, beside this file
    PeerProcess, cpu_flags, cpu_model, export_random_net, forward_flops_by_op, load_average,
    matmul_rate,
)

_NETS = flags.DEFINE_list("nets", ["small", "paper"], "Which nets: small, paper.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "64"], "Images per call.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds; each times every runner in turn.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed calls per runner and round.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls per runner and batch size first.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", "/work/venvs/torch/bin/python",
                                    "The python of the PyTorch environment (ONNX Runtime).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the exports go (default: a temporary "
                               "directory).")
_PAUSE_S = flags.DEFINE_float("pause_s", 0.5, "Seconds of quiet before each runner's calls.")
_MATMUL_SIZES = flags.DEFINE_multi_integer(
    "matmul_size", [1024, 2048], "Sides of the square matrices of the limit; the best counts.")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ONNX_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_onnx_serving.py")
NETS = {"small": ("small.flags", 10), "paper": ("paper.flags", 1000)}
SEED = 0
SERVE_IMAGES, SERVING_DEFAULT, LITERT, ONNX = (
    "serve_images", "serving_default (JPEG)", "LiteRT", "ONNX Runtime")
TARGET_OVER_ONNX = 1.0  # the paper net, every batch size
TARGET_MATMUL_FRACTION = 0.8  # the paper net, the largest batch size


def exported_net(net, workdir):
    """(export directory, config, network) of a net with random weights."""
    flagfile, num_classes = NETS[net]
    config, _ = config_lib.load_flagfile(os.path.join(REPO, "configs", flagfile),
                                         data_dir="unused", seed=SEED)
    export_dir, network = export_random_net(config, num_classes, os.path.join(workdir, net),
                                            SEED)
    return export_dir, config, network


def batches(config, batch_sizes):
    """{batch size: (uint8 images, their JPEG bytes)}: smooth random images, the same
    every run, of the recipe's rescaled size."""
    rng = np.random.default_rng(SEED)
    side, largest = config.image_size, max(batch_sizes)
    low = rng.uniform(0, 255, (largest, 8, 8, 3))
    images = tf.cast(tf.image.resize(low, [side, side]), tf.uint8).numpy()
    jpegs = np.array([tf.io.encode_jpeg(image, quality=90).numpy() for image in images])
    return {b: (images[:b], jpegs[:b]) for b in batch_sizes}


class OnnxPeer(PeerProcess):
    """tools/peer_onnx_serving.py in the PyTorch environment, answering "time B K"."""

    def __init__(self, net, onnx_path, batch_sizes):
        super().__init__([_TORCH_PYTHON.value, ONNX_PEER, f"--net={net}", f"--onnx={onnx_path}",
                          f"--batch_sizes={','.join(str(b) for b in batch_sizes)}",
                          f"--warmup={_WARMUP.value}"], "ONNX Runtime")
        self.ready = self.read()
        if self.ready.get("event") != "ready":
            self.close()
            sys.exit(f"bench_serving: the ONNX Runtime peer failed: {self.ready}")

    def time(self, batch_size, steps):
        return self.ask(f"time {batch_size} {steps}")["seconds"]


def local_runners(export_dir, inputs):
    """{label: (batch size -> None)}: one call of each of our servings."""
    loaded = tf.saved_model.load(export_dir)
    serve_images = loaded.signatures["serve_images"]
    serving_default = loaded.signatures["serving_default"]
    tensors = {b: (tf.constant(images), tf.constant(jpegs)) for b, (images, jpegs) in
               inputs.items()}
    runners = {
        SERVE_IMAGES: lambda b: serve_images(images=tensors[b][0])["probabilities"].numpy(),
        SERVING_DEFAULT: lambda b: serving_default(images=tensors[b][1])["probabilities"].numpy(),
    }
    tflite = os.path.join(export_dir, export.TFLITE_FILE)
    if os.path.exists(tflite):
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=tflite).get_signature_runner(export.TFLITE_SIGNATURE)
        runners[LITERT] = lambda b: runner(images=inputs[b][0])["probabilities"]
    return runners


def timed(fn, batch_size, steps):
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        fn(batch_size)
        seconds.append(time.perf_counter() - start)
    return seconds


def time_rounds(runners, peer, batch_sizes):
    """{(label, batch size): ([seconds of every call], [median of each round])}."""
    for fn in runners.values():
        for b in batch_sizes:
            timed(fn, b, _WARMUP.value)
    labels = list(runners) + [ONNX]
    times = {(label, b): ([], []) for label in labels for b in batch_sizes}
    for _ in range(_ROUNDS.value):
        for b in batch_sizes:
            for label in labels:
                time.sleep(_PAUSE_S.value)
                seconds = (peer.time(b, _STEPS.value) if label == ONNX
                           else timed(runners[label], b, _STEPS.value))
                times[(label, b)][0].extend(seconds)
                times[(label, b)][1].append(statistics.median(seconds))
    return times


def report(net, times, batch_sizes, flops_per_image, rate):
    """Prints each runner's images/s, the ratios over ONNX Runtime and the matmul
    fraction; returns [(what, value, target or None)] of the targets."""
    results = []
    for b in batch_sizes:
        print(f"  batch {b}:")
        for (label, size), (seconds, _) in times.items():
            if size == b:
                print(f"    {label:24s} {b / statistics.median(seconds):9.1f} images/s "
                      f"(median call {1000 * statistics.median(seconds):.2f} ms)")
        ours, onnx = times[(SERVE_IMAGES, b)], times[(ONNX, b)]
        ratio = statistics.median(onnx[0]) / statistics.median(ours[0])
        per_round = [o / s for o, s in zip(onnx[1], ours[1])]
        print(f"    serve_images over ONNX Runtime: {ratio:.2f}x images/s (per round "
              f"{min(per_round):.2f} .. {max(per_round):.2f})")
        results.append((f"{net} batch {b}: serve_images / ONNX Runtime", ratio,
                        TARGET_OVER_ONNX if net == "paper" else None))
    largest = max(batch_sizes)
    achieved = flops_per_image * largest / statistics.median(times[(SERVE_IMAGES, largest)][0])
    fraction = achieved / rate
    print(f"  batch {largest}: serve_images runs the network's {flops_per_image / 1e9:.3f} "
          f"GFLOP an image at {achieved / 1e9:.1f} GFLOP/s, {fraction:.2f} of the matmul rate")
    results.append((f"{net} batch {largest}: fraction of the matmul rate", fraction,
                    TARGET_MATMUL_FRACTION if net == "paper" else None))
    return results


def bench_net(net, workdir, batch_sizes, rate):
    export_dir, config, network = exported_net(net, workdir)
    crop = config.crop_size
    flops = sum(f for _, f, _ in forward_flops_by_op(network, (crop, crop, 3)))
    print(f"\n{net} net: exported to {export_dir} ({config.image_size}x{config.image_size} "
          f"uint8 images, {crop}x{crop} crops); load average {load_average()}", flush=True)
    runners = local_runners(export_dir, batches(config, batch_sizes))
    peer = OnnxPeer(net, os.path.join(workdir, f"{net}.onnx"), batch_sizes)
    try:
        print(f"  ONNX Runtime {peer.ready['onnxruntime']} (torch {peer.ready['torch']}), "
              f"{peer.ready['params']:,} parameters; ours {network.count_params():,}",
              flush=True)
        times = time_rounds(runners, peer, batch_sizes)
    finally:
        peer.close()
    return report(net, times, batch_sizes, flops, rate)


def main(argv):
    del argv
    unknown = [n for n in _NETS.value if n not in NETS]
    if unknown:
        raise app.UsageError(f"unknown nets {unknown}; choose from {sorted(NETS)}")
    if not os.access(_TORCH_PYTHON.value, os.X_OK):
        sys.exit(f"bench_serving: no PyTorch environment at {_TORCH_PYTHON.value}; see the "
                 "docstring for its install line.")
    batch_sizes = sorted(int(b) for b in _BATCH_SIZES.value)
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="bench_serving_")
    print(f"{cpu_model()} ({' '.join(cpu_flags())}), {os.cpu_count()} cores; TensorFlow "
          f"{tf.__version__}; {_ROUNDS.value} rounds x {_STEPS.value} calls after "
          f"{_WARMUP.value} warm-up calls", flush=True)
    rate = max(matmul_rate(size, streams) for size in _MATMUL_SIZES.value for streams in (1, 2))
    print(f"matmul rate: {rate / 1e9:.1f} GFLOP/s (float32, the best of sides "
          f"{_MATMUL_SIZES.value}, one or two at once)")
    results = [r for net in _NETS.value for r in bench_net(net, workdir, batch_sizes, rate)]
    print(f"\nsummary (load average {load_average()} at end):")
    for what, value, target in results:
        verdict = "" if target is None else (
            f"  target >= {target}: {'met' if value >= target else 'not met'}")
        print(f"  {what}: {value:.2f}{verdict}")


if __name__ == "__main__":
    app.run(main)
