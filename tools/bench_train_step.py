"""Times the training command's own step and sets it against this machine's limits.

    TF_CPU_ALLOCATOR_USE_BFC=true python tools/bench_train_step.py              # the figures
    TF_CPU_ALLOCATOR_USE_BFC=true python tools/bench_train_step.py --nets=small --rounds=3

For each net (`small`: configs/small.flags' network, 32x32 crops, 10 classes;
`paper`: configs/paper.flags', 224x224 crops, 1000 classes), the step is built as
`python -m alexnet_tf.train` builds it on a CPU (`--strategy=auto` picks one_device
there): the config read from the flagfile, `trainer.create_distribution`,
`model_dir.create_model` and `optim.PaperMomentumSGD` in the strategy's scope, then
`trainer.make_train_step`: forward, backward, the paper's update (TensorFlow's fused
momentum kernel, one pass over each variable), and the loss and error rates the
loop reads. It runs on one fixed random batch of mean-subtracted-looking pixels
(N(0, 50)), so only the step is timed, not the input pipeline.

Beside it, in turns within each round so that a change of load hits all alike
(each turn starts with --turn_warmup untimed steps, since a step right after
another model's runs with the caches and the allocator as that model left them,
which in training never happens):

  plain_keras     the same step function around the net a user writes first with
                  stock Keras: Conv2D(groups=2) for conv2, conv4 and conv5 and
                  tf.nn.local_response_normalization, same shapes and parameters.
                  TensorFlow's CPU convolution has no groups, so Keras runs those
                  layers (forward and backward) as XLA-compiled functions.
  mixed_bfloat16  (with --mixed_bfloat16) the trainer's step with
                  --mixed_precision=bfloat16.
  stock_conv_gradient  (with --stock_conv_gradient) the trainer's step with the
                  convolutions' gradients left to TensorFlow (the bias's through
                  BiasAddGrad, which the CPU rewriter fuses into oneDNN's
                  Conv2DBackpropFilterWithBias) instead of
                  `conv_gradients.conv_bias_activation`'s.
  relu_gradient_apart  (with --relu_gradient_apart) the trainer's step with every
                  ReLU's gradient its own op, none taken in the LRN gradient
                  before it (`ops.relu_gradient_through_lrn`): the same values.

The limit is the float32 matrix-multiply rate measured in the same run, between the
rounds: the best median of tf.matmul on square float32 matrices (--matmul_size),
one product at a time or two at once (the towers run two ops at once). The
tool also prints the ratio round by round: each round's median trainer step over
the best matmul rate measured at the end of that round, so that a change of load
on the host moves both sides of that ratio alike; their spread is the run's own.

Model FLOPs are counted from the traced forward graph of the trainer's network: each
Conv2D costs 2 x (output elements) x (kernel height x width x input channels), each
MatMul 2 x (output elements) x (inner dimension); a training step is that forward
cost three times (forward, input gradient, weight gradient) less conv1's input
gradient, which is never computed since the images need none. LRN, pooling, ReLU,
dropout and the update are not counted: they move memory, they do not multiply.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from alexnet_tf import config as config_lib  # noqa: E402
from alexnet_tf import conv_gradients  # noqa: E402
from alexnet_tf import model as model_lib  # noqa: E402
from alexnet_tf import ops, optim, trainer  # noqa: E402
from machine import forward_flops_by_op, matmul_rate  # noqa: E402  tools/, beside this file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETS = {"small": ("small.flags", 10), "paper": ("paper.flags", 1000)}

_NETS = flags.DEFINE_list("nets", list(NETS), "Which nets to time.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per step (the paper's 128).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds; each times --steps steps of every "
                               "model of a net in turn.")
_STEPS = flags.DEFINE_integer("steps", 0, "Steps per model per round (0: 10 for the small "
                              "net, 1 for the paper net).")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps of every model before timing.")
_TURN_WARMUP = flags.DEFINE_integer(
    "turn_warmup", 1, "Untimed steps of a model at the start of each of its turns in a round.",
    lower_bound=0)
_PLAIN_KERAS = flags.DEFINE_bool("plain_keras", True, "Also time the plain Keras net.")
_BFLOAT16 = flags.DEFINE_bool("mixed_bfloat16", False, "Also time --mixed_precision=bfloat16.")
_STOCK_CONV_GRADIENT = flags.DEFINE_bool(
    "stock_conv_gradient", False, "Also time the step with TensorFlow's own conv gradients.")
_RELU_GRADIENT_APART = flags.DEFINE_bool(
    "relu_gradient_apart", False,
    "Also time the step with each ReLU's gradient apart from the LRN gradient before it.")
_MATMUL_SIZES = flags.DEFINE_multi_integer(
    "matmul_size", [1024, 2048], "Sides of the square matrices of the limit; the best counts.")

# Targets for the figures this tool prints: model FLOP/s over the matmul rate.
TARGET_FRACTION = {"small": 0.7, "paper": 0.8}


def net_config(net, **overrides):
    """The flagfile's config, on one device, as the training command reads it."""
    flagfile, _ = NETS[net]
    config, _ = config_lib.load_flagfile(os.path.join(REPO, "configs", flagfile),
                                         data_dir="unused", strategy="one_device", **overrides)
    return config


def trainer_step(config, num_classes, batch_size):
    """(step function, network) built as alexnet_tf.train builds them."""
    distribution = trainer.create_distribution(config)
    network, optimizer, _ = trainer.build_network(config, distribution, num_classes)
    step = trainer.make_train_step(network, optimizer, distribution.strategy, batch_size)
    return step, network


def _traced_with(module, name, replacement, config, num_classes, batch_size):
    """The trainer's step traced while module.name is replacement."""
    own = getattr(module, name)
    setattr(module, name, replacement)
    try:
        step, network = trainer_step(config, num_classes, batch_size)
        step.get_concrete_function(*step_signature(network, batch_size))
    finally:
        setattr(module, name, own)
    return step, network


def stock_conv_gradient_step(config, num_classes, batch_size):
    """The trainer's step, its convolutions differentiated by TensorFlow's own gradients."""

    def stock(conv, x, kernel, bias):
        return conv.activation(tf.nn.bias_add(conv.convolution_op(x, kernel), bias))

    return _traced_with(conv_gradients, "conv_bias_activation", stock, config, num_classes,
                        batch_size)


def relu_gradient_apart_step(config, num_classes, batch_size):
    """The trainer's step with no ReLU gradient taken in an LRN gradient op."""
    return _traced_with(ops, "relu_gradient_through_lrn", lambda gradient, relu_output: None,
                        config, num_classes, batch_size)


def step_signature(network, batch_size):
    return (tf.TensorSpec((batch_size,) + tuple(network.input_shape[1:]), tf.float32),
            tf.TensorSpec((batch_size,), tf.int32), tf.TensorSpec((), tf.float32),
            tf.TensorSpec((), tf.float32))


def plain_keras_alexnet(size, num_classes, input_shape):
    """The same network as a user writes it first with stock Keras layers."""
    layers = keras.layers
    size = model_lib.SIZES[size]
    k, f = size.conv_kernel_sizes, size.conv_filters

    def lrn(x):
        return tf.nn.local_response_normalization(
            x, depth_radius=ops.PAPER_LRN_DEPTH_RADIUS, bias=ops.PAPER_LRN_BIAS,
            alpha=ops.PAPER_LRN_ALPHA, beta=ops.PAPER_LRN_BETA)

    def conv(filters, kernel, bias, **kwargs):
        return layers.Conv2D(filters, kernel, activation="relu",
                             kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
                             bias_initializer=keras.initializers.Constant(bias), **kwargs)

    images = keras.Input(input_shape)
    x = images
    if size.conv1_padding == "overhang":
        overhang = model_lib._overhang(input_shape[0], k[0], size.conv1_stride)
        x = layers.ZeroPadding2D(((0, overhang), (0, overhang)))(x)
    x = conv(f[0], k[0], 0.0, strides=size.conv1_stride,
             padding="same" if size.conv1_padding == "same" else "valid")(x)
    x = layers.MaxPooling2D(3, 2)(layers.Lambda(lrn, output_shape=lambda s: s)(x))
    x = conv(f[1], k[1], 1.0, padding="same", groups=2)(x)
    x = layers.MaxPooling2D(3, 2)(layers.Lambda(lrn, output_shape=lambda s: s)(x))
    x = conv(f[2], k[2], 0.0, padding="same")(x)
    x = conv(f[3], k[3], 1.0, padding="same", groups=2)(x)
    x = conv(f[4], k[4], 1.0, padding="same", groups=2)(x)
    x = layers.Flatten()(layers.MaxPooling2D(3, 2)(x))
    for units in size.fc_units:
        x = layers.Dropout(0.5)(layers.Dense(units, activation="relu")(x))
    logits = layers.Dense(num_classes)(x)
    return keras.Model(images, logits, name="plain_keras_alexnet")


def plain_keras_step(net, num_classes, batch_size, input_shape):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        network = plain_keras_alexnet(net, num_classes, input_shape)
        optimizer = optim.PaperMomentumSGD(network.trainable_variables)
    return trainer.make_train_step(network, optimizer, strategy, batch_size), network


def training_flops_per_image(model, input_shape):
    """(forward, training) FLOPs per image: training is 3 x forward less conv1's input
    gradient."""
    counted = forward_flops_by_op(model, input_shape)
    forward = sum(f for _, f, _ in counted)
    on_images = sum(f for _, f, channels in counted if channels == input_shape[-1])
    return forward, 3 * forward - on_images


def time_steps(step, images, labels, count):
    learning_rate, stop = tf.constant(0.01), tf.constant(0.0)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        loss = step(images, labels, learning_rate, stop)[0].numpy()
        times.append(time.perf_counter() - start)
        if not np.isfinite(loss):
            raise RuntimeError(f"non-finite loss {loss}")
    return times


def bench_net(net, batch_size, rates):
    _, num_classes = NETS[net]
    config = net_config(net)
    input_shape = (config.crop_size, config.crop_size, 3)
    steps = {"trainer": trainer_step(config, num_classes, batch_size)}
    if _PLAIN_KERAS.value:
        steps["plain_keras"] = plain_keras_step(net, num_classes, batch_size, input_shape)
    if _BFLOAT16.value:
        steps["mixed_bfloat16"] = trainer_step(net_config(net, mixed_precision="bfloat16"),
                                               num_classes, batch_size)
    if _STOCK_CONV_GRADIENT.value:
        steps["stock_conv_gradient"] = stock_conv_gradient_step(config, num_classes, batch_size)
    if _RELU_GRADIENT_APART.value:
        steps["relu_gradient_apart"] = relu_gradient_apart_step(config, num_classes, batch_size)
    forward, training = training_flops_per_image(steps["trainer"][1], input_shape)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.normal(0.0, 50.0, (batch_size,) + input_shape).astype(np.float32))
    labels = tf.constant(rng.integers(0, num_classes, batch_size).astype(np.int32))
    count = _STEPS.value or (10 if net == "small" else 1)
    for step, _ in steps.values():
        time_steps(step, images, labels, _WARMUP.value)
    times = {name: [] for name in steps}
    kinds = [(size, streams) for size in _MATMUL_SIZES.value for streams in (1, 2)]
    # Each round's trainer step median over the best matmul rate measured at the end
    # of that round: the same ratio with the load of that moment on both sides.
    round_fractions = []
    for _ in range(_ROUNDS.value):
        for name, (step, _) in steps.items():
            # A model's first step after another model's (or the matmuls) runs with the
            # caches and the allocator as those left them; training never does.
            time_steps(step, images, labels, _TURN_WARMUP.value)
            times[name] += time_steps(step, images, labels, count)
        round_rates = [matmul_rate(*kind, repeats=3) for kind in kinds]
        for kind, rate in zip(kinds, round_rates):
            rates.setdefault(kind, []).append(rate)
        step_rate = training * batch_size / statistics.median(times["trainer"][-count:])
        round_fractions.append(step_rate / max(round_rates))
    return dict(config=config, forward=forward, training=training, times=times,
                round_fractions=round_fractions, parameters=steps["trainer"][1].count_params())


def report(net, result, limit, batch_size):
    print(f"\n{net} net: {result['parameters']:,} parameters, forward "
          f"{result['forward'] / 1e6:.1f} MFLOP per image, training step "
          f"{result['training'] / 1e6:.1f} MFLOP per image")
    medians = {}
    for name, ts in result["times"].items():
        medians[name] = statistics.median(ts)
        rate = result["training"] * batch_size / medians[name]
        print(f"  {name:19s} step median {medians[name] * 1000:8.1f} ms (min "
              f"{min(ts) * 1000:.1f}, max {max(ts) * 1000:.1f}, {len(ts)} steps), "
              f"{batch_size / medians[name]:7.1f} images/s, {rate / 1e9:6.1f} GFLOP/s = "
              f"{rate / limit:.2f} of tf.matmul")
    fraction = result["training"] * batch_size / medians["trainer"] / limit
    target = TARGET_FRACTION[net]
    print(f"  trainer's model FLOP/s over tf.matmul's: {fraction:.2f} (target {target}: "
          f"{'met' if fraction >= target else 'not met'})")
    rounds = result["round_fractions"]
    print(f"  the same, round by round (each round's step over that round's matmul rate): median "
          f"{statistics.median(rounds):.3f}, range {min(rounds):.3f} to {max(rounds):.3f} "
          f"over {len(rounds)} rounds")
    if "plain_keras" in medians:
        print(f"  trainer over plain Keras: {medians['plain_keras'] / medians['trainer']:.2f}x")
    if "stock_conv_gradient" in medians:
        print(f"  trainer over TensorFlow's own conv gradients: "
              f"{medians['stock_conv_gradient'] / medians['trainer']:.3f}x")
    if "relu_gradient_apart" in medians:
        print(f"  trainer over its ReLU gradients apart from the LRN's: "
              f"{medians['relu_gradient_apart'] / medians['trainer']:.3f}x")
    if "mixed_bfloat16" in medians:
        print(f"  mixed bfloat16 over float32: "
              f"{medians['trainer'] / medians['mixed_bfloat16']:.2f}x")


def main(argv):
    del argv
    batch_size = _BATCH_SIZE.value
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, batch {batch_size}, "
          f"{os.cpu_count()} CPU threads, load average {os.getloadavg()[0]:.2f} at start")
    rates, results = {}, {}
    for net in _NETS.value:
        results[net] = bench_net(net, batch_size, rates)
    for (size, streams), rs in sorted(rates.items()):
        print(f"tf.matmul float32 {size}x{size}, {streams} at once: median "
              f"{statistics.median(rs) / 1e9:.1f} GFLOP/s over {len(rs)} measurements")
    limit = max(statistics.median(r) for r in rates.values())
    print(f"limit: {limit / 1e9:.1f} GFLOP/s; load average now {os.getloadavg()[0]:.2f}")
    for net, result in results.items():
        report(net, result, limit, batch_size)


if __name__ == "__main__":
    app.run(main)
