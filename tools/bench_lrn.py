"""Times the compiled LRN op against TensorFlow's own and against memory speed.

At the paper's shapes (batch 128: conv1 [128,55,55,96], conv2 [128,27,27,256],
float32), in one run:
  - forward + backward of alexnet_tf.ops.local_response_normalization against
    tf.nn.local_response_normalization and its gradient (target: >= 10x faster);
  - forward, and forward + backward, against one elementwise op over the same
    tensor (`x * 2.0`), which reads and writes the tensor once and so measures
    what memory allows (targets: forward within 2x, forward + backward within 4x);
  - the LRN's gradient followed by the ReLU's gradient (TensorFlow's ReluGrad), as
    apart ops and as the one op the training step runs (`through_relu`), also at
    one tower's LRN1 of the small net ([128,32,32,16]; the step runs two).

    python tools/bench_lrn.py [--repeats 15] [--batch 128] [--allocator bfc|malloc]

Each figure is the median of --repeats timed calls after a warm-up.

TensorFlow's default CPU allocator takes every large tensor from malloc, which
maps fresh pages for it: at these sizes the page faults cost more than the
arithmetic, for every op alike. --allocator=bfc (the default here, and what
training uses) sets TF_CPU_ALLOCATOR_USE_BFC=true so buffers are reused, as on
a GPU; --allocator=malloc measures TensorFlow's default.
"""

import argparse
import os
import statistics
import sys
import time


def _allocator_from_argv():
    for i, arg in enumerate(sys.argv):
        if arg.startswith("--allocator="):
            return arg.split("=", 1)[1]
        if arg == "--allocator" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
    return "bfc"


# Must be set before TensorFlow creates its CPU allocator.
os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true" if _allocator_from_argv() == "bfc" else "false"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from alexnet_tf import ops  # noqa: E402

PAPER_SHAPES = {"conv1": (55, 55, 96), "conv2": (27, 27, 256)}
# One tower's LRN1 in the small net (conv1's 16 kernels a tower, 32x32).
SMALL_LRN1_TOWER = (32, 32, 16)


def median_seconds(fn, repeats):
    fn()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        # Eager results are ready when returned on CPU; touching one element
        # makes sure the work is done before the clock stops.
        tf.nest.flatten(result)[0].numpy().flat[0]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_fn(lrn, x):
    return tf.function(lambda: lrn(x))


def forward_backward_fn(lrn, x, dy):
    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = lrn(x)
        return y, tape.gradient(y, x, output_gradients=dy)

    return step


def bench_shape(name, shape, batch, repeats):
    rng = np.random.default_rng(0)
    full = (batch,) + shape
    # ReLU outputs, as the LRN sees them in the network.
    x = tf.constant(np.maximum(rng.standard_normal(full, dtype=np.float32), 0) * 4)
    dy = tf.constant(rng.standard_normal(full, dtype=np.float32))
    ours = ops.local_response_normalization

    def theirs(t):
        return tf.nn.local_response_normalization(
            t,
            depth_radius=ops.PAPER_LRN_DEPTH_RADIUS,
            bias=ops.PAPER_LRN_BIAS,
            alpha=ops.PAPER_LRN_ALPHA,
            beta=ops.PAPER_LRN_BETA,
        )

    t = {
        "x * 2.0": median_seconds(tf.function(lambda: x * 2.0), repeats),
        "ours forward": median_seconds(forward_fn(ours, x), repeats),
        "ours forward+backward": median_seconds(forward_backward_fn(ours, x, dy), repeats),
        "tf forward": median_seconds(forward_fn(theirs, x), max(3, repeats // 3)),
        "tf forward+backward": median_seconds(
            forward_backward_fn(theirs, x, dy), max(3, repeats // 3)
        ),
    }
    gigabytes = np.prod(full) * 4 / 1e9
    print(f"\n{name} {list(full)} float32 ({gigabytes * 1e3:.0f} MB per tensor)")
    for label, seconds in t.items():
        print(f"  {label:24s} {seconds * 1e3:9.2f} ms")
    ratios = {
        "tf fwd+bwd / ours fwd+bwd": (t["tf forward+backward"] / t["ours forward+backward"], ">= 10"),
        "ours fwd / (x * 2.0)": (t["ours forward"] / t["x * 2.0"], "<= 2"),
        "ours fwd+bwd / (x * 2.0)": (t["ours forward+backward"] / t["x * 2.0"], "<= 4"),
    }
    for label, (value, target) in ratios.items():
        print(f"  {label:28s} {value:7.2f}x   (target {target})")
    # x * 2.0 reads and writes one tensor.
    print(f"  x * 2.0 moves {2 * gigabytes / t['x * 2.0']:.1f} GB/s")
    return ratios


def bench_gradient_through_relu(name, shape, batch, repeats):
    """The LRN's gradient and the ReLU's before it: two ops, or one (`through_relu`)."""
    rng = np.random.default_rng(1)
    full = (batch,) + shape
    x = tf.constant(np.maximum(rng.standard_normal(full, dtype=np.float32), 0) * 4)
    dy = tf.constant(rng.standard_normal(full, dtype=np.float32))
    library = ops.load_library()
    alpha = ops.alpha_per_term(ops.PAPER_LRN_ALPHA, ops.PAPER_LRN_DEPTH_RADIUS)

    def gradient(through_relu):
        return library.alexnet_tf_local_response_norm_grad(
            dy, x, depth_radius=ops.PAPER_LRN_DEPTH_RADIUS, bias=ops.PAPER_LRN_BIAS,
            alpha=alpha, beta=ops.PAPER_LRN_BETA, through_relu=through_relu)

    apart = median_seconds(tf.function(
        lambda: tf.raw_ops.ReluGrad(gradients=gradient(False), features=x)), repeats)
    one = median_seconds(tf.function(lambda: gradient(True)), repeats)
    print(f"\n{name} {list(full)}: LRN gradient then ReluGrad {apart * 1e3:.2f} ms, "
          f"through_relu in one op {one * 1e3:.2f} ms: {apart / one:.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--allocator", choices=["bfc", "malloc"], default="bfc")
    args = parser.parse_args()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
          f"CPU allocator: {args.allocator}")
    met = True
    for name, shape in PAPER_SHAPES.items():
        ratios = bench_shape(name, shape, args.batch, args.repeats)
        met &= ratios["tf fwd+bwd / ours fwd+bwd"][0] >= 10
        met &= ratios["ours fwd / (x * 2.0)"][0] <= 2
        met &= ratios["ours fwd+bwd / (x * 2.0)"][0] <= 4
    print("\nall targets met" if met else "\nSOME TARGETS MISSED")
    for name, shape in {"small net LRN1, one tower": SMALL_LRN1_TOWER, **PAPER_SHAPES}.items():
        bench_gradient_through_relu(name, shape, args.batch, args.repeats)


if __name__ == "__main__":
    main()
