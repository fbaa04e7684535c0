"""Times one AlexNet training step on random data and sets it against this machine's limits.

    python tools/bench_train_step.py                            # batch 128, the figures
    python tools/bench_train_step.py --batch_size=16 --steps=2  # a quick look

One step is the forward pass, the backward pass and the paper's momentum update
(Section 5), written with TensorFlow ops in one tf.function:

    v <- 0.9 v - 0.0005 lr w - lr g ;  w <- w + v      (decay on weights, not biases)

Three models are timed in the same process, one step of each in turn per round,
so that a change of load on the machine hits all of them alike; each figure is
the median over rounds after the warm-up steps (the minimum and the process CPU
time are printed too, since other work on a shared machine inflates medians):

  float32         alexnet_tf.model.build_alexnet(): the towers as separate layers,
                  conv1's two towers as one convolution, the compiled LRN op;
  plain_keras     what a user writes first: Conv2D(groups=2) for conv2, conv4 and
                  conv5 and tf.nn.local_response_normalization, same shapes and
                  parameter count. TensorFlow's CPU convolution kernel has no
                  grouped convolution, so Keras runs these three layers (forward
                  and backward) as XLA-compiled functions, whose CPU convolutions
                  are much slower than oneDNN's. Its LRN windows cross the tower
                  boundary at channel 48 / 128, which does not change the work;
  mixed_bfloat16  build_alexnet(dtype_policy="mixed_bfloat16"). TensorFlow hands
                  bfloat16 ops to oneDNN only on CPUs with AVX512F or AVX-NE-CONVERT
                  (IsDataTypeSupportedByOneDNNOnThisCPU); on an AVX2-only CPU the
                  bfloat16 convolution gradients run as generic Eigen code, many
                  times slower than float32. Without AVX512-BF16 or AMX there is
                  no bfloat16 arithmetic to gain from anyway, only memory traffic.

The limit is the float32 matrix-multiply rate measured in the same run: the best
median of tf.matmul on two large square float32 matrices, one product at a time
or two at once. Model FLOPs are counted from the traced forward graph: each
Conv2D and MatMul costs 2 x (output elements) x (kernel height x width x input
channels per group, or the inner dimension); a training step is that forward cost
three times (forward, input gradient, weight gradient) less conv1's input
gradient, which is never computed since the images need none.

Tried on the 2-core AVX2 CPU (float32, batch 32-128):
  - The update as separate TensorFlow ops reads and writes the 61M parameters
    about seven times, ~0.4 s a step; XLA-compiling the update alone fuses it into
    one pass per variable (below). ResourceApplyKerasMomentum was no faster.
  - Whole-step XLA (jit_compile=True) is impossible with the compiled LRN op, and
    XLA's CPU convolutions are the slow part of plain_keras anyway.
  - conv1's towers as one 96-kernel convolution (build_alexnet does this when the
    towers share a device): conv1 forward and weight gradient 0.95 s against 1.18 s
    at batch 64 measured alone. conv1 as a 3x3 convolution on a space-to-depth(4)
    input (48 channels instead of 3): no faster. conv3 as one convolution: within
    noise; fc6 as one matmul: slower (its weights are concatenated every step).
  - max_pool_with_argmax and its gradient instead of MaxPoolGrad: no faster.
  - TF_ONEDNN_THREADPOOL_USE_CALLER_THREAD=1, --inter_op_threads=1: within noise
    for the whole step. With TensorFlow's default threads a lone convolution runs
    at about one core's speed, but the towers' ops run two at a time; with one
    inter-op thread each op uses both cores and the towers no longer overlap.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from alexnet_tf import model as alexnet_model  # noqa: E402
from alexnet_tf import ops  # noqa: E402

_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per step (the paper's 128).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed rounds; each times one step of every model.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps of every model before timing.")
_MODELS = flags.DEFINE_list(
    "models", ["float32", "plain_keras", "mixed_bfloat16"], "Which models to time."
)
_MATMUL_SIZES = flags.DEFINE_multi_integer(
    "matmul_size", [2048, 4096], "Sides of the square matrices of the limit; the best counts."
)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Width of fc8.")
_INTER_OP_THREADS = flags.DEFINE_integer(
    "inter_op_threads", 0, "TensorFlow's inter-op threads for the whole run; 0: its default."
)
_INTRA_OP_THREADS = flags.DEFINE_integer(
    "intra_op_threads", 0, "TensorFlow's intra-op threads for the whole run; 0: its default."
)

# Section 5: batch 128, momentum 0.9, weight decay 0.0005, initial learning rate 0.01.
PAPER_MOMENTUM = 0.9
PAPER_WEIGHT_DECAY = 0.0005
PAPER_LEARNING_RATE = 0.01

# The targets for the figures this tool prints.
TARGET_SPEEDUP_OVER_PLAIN_KERAS = 3.5
TARGET_FRACTION_OF_MATMUL_RATE = 0.8
TARGET_BFLOAT16_SPEEDUP = 1.5


def plain_keras_alexnet(num_classes):
    """The same network as a user writes it first with stock Keras layers."""
    layers = keras.layers

    def lrn(x):
        return tf.nn.local_response_normalization(
            x,
            depth_radius=ops.PAPER_LRN_DEPTH_RADIUS,
            bias=ops.PAPER_LRN_BIAS,
            alpha=ops.PAPER_LRN_ALPHA,
            beta=ops.PAPER_LRN_BETA,
        )

    def weights(bias):
        return dict(
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            bias_initializer=keras.initializers.Constant(bias),
        )

    images = keras.Input((224, 224, 3))
    x = layers.ZeroPadding2D(((0, 3), (0, 3)))(images)
    x = layers.Conv2D(96, 11, strides=4, activation="relu", **weights(0.0))(x)
    x = layers.Lambda(lrn, output_shape=lambda s: s)(x)
    x = layers.MaxPooling2D(3, 2)(x)
    x = layers.Conv2D(256, 5, padding="same", groups=2, activation="relu", **weights(1.0))(x)
    x = layers.Lambda(lrn, output_shape=lambda s: s)(x)
    x = layers.MaxPooling2D(3, 2)(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", **weights(0.0))(x)
    x = layers.Conv2D(384, 3, padding="same", groups=2, activation="relu", **weights(1.0))(x)
    x = layers.Conv2D(256, 3, padding="same", groups=2, activation="relu", **weights(1.0))(x)
    x = layers.MaxPooling2D(3, 2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(4096, activation="relu", **weights(1.0))(x)
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(4096, activation="relu", **weights(1.0))(x)
    x = layers.Dropout(0.5)(x)
    logits = layers.Dense(num_classes, **weights(0.0))(x)
    return keras.Model(images, logits, name="plain_keras_alexnet")


def make_train_step(model, learning_rate=PAPER_LEARNING_RATE):
    """A tf.function doing one step of the paper's momentum SGD on (images, labels)."""
    weights = model.trainable_variables
    velocities = [
        tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False, name="velocity") for w in weights
    ]
    # cuda-convnet2 decays the weights only, not the biases.
    decays = [PAPER_WEIGHT_DECAY if len(w.shape) > 1 else 0.0 for w in weights]

    # Compiled on its own so that XLA fuses each variable's update into one pass over
    # memory; as separate TensorFlow ops it reads and writes the 61M parameters about
    # seven times (about 0.4 s a step here). The model itself is not compiled: XLA
    # cannot compile the LRN op, and its CPU convolutions are slower than oneDNN's.
    @tf.function(jit_compile=True)
    def update(grads):
        for w, v, g, decay in zip(weights, velocities, grads, decays):
            step = PAPER_MOMENTUM * v - learning_rate * g
            if decay:
                step -= decay * learning_rate * w.value
            v.assign(step)
            w.assign_add(step)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            )
        update(tape.gradient(loss, weights))
        return loss

    return train_step


def forward_flops_by_op(model, input_shape):
    """[(op name, FLOPs per image, input channels)] for each Conv2D and MatMul of the forward."""
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


def training_flops_per_image(model, input_shape, verbose=False):
    """Forward, input-gradient and weight-gradient FLOPs, without conv1's input gradient."""
    counted = forward_flops_by_op(model, input_shape)
    forward = sum(f for _, f, _ in counted)
    on_images = sum(f for _, f, channels in counted if channels == input_shape[-1])
    if verbose:
        for name, f, _ in counted:
            print(f"    {name:70s} {f / 1e6:8.1f} MFLOP")
        print(f"    forward {forward / 1e9:.4f} GFLOP ({forward / 2e6:.1f}M multiply-adds); "
              f"training = 3 x forward - conv1 {on_images / 1e9:.4f} "
              f"= {(3 * forward - on_images) / 1e9:.4f} GFLOP per image")
    return 3 * forward - on_images


def _median_seconds(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(size, streams, repeats=5):
    """Median float32 FLOP/s of `streams` independent tf.matmul of size x size matrices.

    Two streams let TensorFlow's inter-op threads run two products at once, which is
    how the model's towers keep both cores busy; with its default threads a single
    product does not always use both.
    """
    a = tf.random.normal([size, size])
    bs = [tf.random.normal([size, size]) for _ in range(streams)]
    products = tf.function(lambda: [tf.reduce_sum(tf.matmul(a, b)) for b in bs])
    seconds = _median_seconds(lambda: [p.numpy() for p in products()], repeats)
    return 2 * streams * size**3 / seconds


def numpy_matmul_rate(size, repeats=3):
    """The same with NumPy's BLAS, a second opinion on what the cores can do."""
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    return 2 * size**3 / _median_seconds(lambda: a @ b, repeats)


def build(name, num_classes):
    if name == "float32":
        return alexnet_model.build_alexnet(num_classes, seed=0)
    if name == "plain_keras":
        return plain_keras_alexnet(num_classes)
    if name in ("mixed_bfloat16", "mixed_float16"):
        return alexnet_model.build_alexnet(num_classes, dtype_policy=name, seed=0)
    raise app.UsageError(f"unknown model {name!r}")


def main(argv):
    del argv
    tf.config.threading.set_inter_op_parallelism_threads(_INTER_OP_THREADS.value)
    tf.config.threading.set_intra_op_parallelism_threads(_INTRA_OP_THREADS.value)
    batch = _BATCH_SIZE.value
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(size=(batch, 224, 224, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, _NUM_CLASSES.value, size=batch).astype(np.int32))
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, batch {batch}, "
          f"{_STEPS.value} timed rounds after {_WARMUP.value} warm-up step(s), "
          f"{os.cpu_count()} CPU threads (TensorFlow inter-op {_INTER_OP_THREADS.value}, "
          f"intra-op {_INTRA_OP_THREADS.value}; 0 = default), "
          f"load average {os.getloadavg()[0]:.2f} at start")

    # One network, so one count: Keras runs plain_keras' grouped convolutions as XLA
    # calls that a graph walk does not see into.
    flops = training_flops_per_image(
        alexnet_model.build_alexnet(_NUM_CLASSES.value), (224, 224, 3), verbose=True
    )
    steps = {}
    for name in _MODELS.value:
        model = build(name, _NUM_CLASSES.value)
        print(f"  {name}: {model.count_params():,} parameters")
        steps[name] = make_train_step(model)
        for _ in range(_WARMUP.value):
            steps[name](images, labels).numpy()

    kinds = [(size, streams) for size in _MATMUL_SIZES.value for streams in (1, 2)]
    rates = {kind: [matmul_rate(*kind)] for kind in kinds}
    times = {name: [] for name in steps}
    cpu_times = {name: [] for name in steps}
    for _ in range(_STEPS.value):
        for name, step in steps.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            loss = step(images, labels).numpy()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
            if not np.isfinite(loss):
                raise RuntimeError(f"{name}: non-finite loss {loss}")
        for kind in kinds:
            rates[kind].append(matmul_rate(*kind, repeats=3))

    for (size, streams), rs in rates.items():
        print(f"tf.matmul float32 {size}x{size}, {streams} at once: median "
              f"{statistics.median(rs) / 1e9:.1f} GFLOP/s over {len(rs)} measurements "
              "interleaved with the steps (" + ", ".join(f"{r / 1e9:.1f}" for r in rs) + ")")
    # The limit is the best median: the highest rate tf.matmul sustains here.
    rate = max(statistics.median(r) for r in rates.values())
    print(f"limit: {rate / 1e9:.1f} GFLOP/s; NumPy's BLAS at 4096: "
          f"{numpy_matmul_rate(4096) / 1e9:.1f} GFLOP/s, load average now "
          f"{os.getloadavg()[0]:.2f}")
    median = {}
    for name, ts in times.items():
        median[name] = statistics.median(ts)
        model_rate = flops * batch / median[name]
        print(f"{name:15s} step median {median[name]:7.3f} s, min {min(ts):7.3f} s "
              f"({', '.join(f'{t:.2f}' for t in ts)}; CPU "
              f"{statistics.median(cpu_times[name]):.2f} s), {batch / median[name]:5.1f} "
              f"images/s, {model_rate / 1e9:5.1f} GFLOP/s = {model_rate / rate:.2f} of tf.matmul")
    if "float32" in median and "plain_keras" in median:
        ratio = median["plain_keras"] / median["float32"]
        print(f"float32 speed-up over plain Keras: {ratio:.2f}x "
              f"(target {TARGET_SPEEDUP_OVER_PLAIN_KERAS}x)")
    if "float32" in median:
        fraction = flops * batch / median["float32"] / rate
        print(f"float32 model FLOP/s over tf.matmul FLOP/s: {fraction:.2f} "
              f"(target {TARGET_FRACTION_OF_MATMUL_RATE})")
    for low in ("mixed_bfloat16", "mixed_float16"):
        if "float32" in median and low in median:
            ratio = median["float32"] / median[low]
            print(f"{low} speed-up over float32: {ratio:.2f}x (target {TARGET_BFLOAT16_SPEEDUP}x)")


if __name__ == "__main__":
    app.run(main)
