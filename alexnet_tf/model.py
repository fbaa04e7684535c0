"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) as a Keras 3 functional model.

The network of Section 3 and Figure 2: five convolutional and three fully connected
layers, split into two towers that each hold half the kernels of every layer (the
paper's two GPUs, Section 3.2). conv2, conv4 and conv5 see only their own tower;
conv3 and the fully connected layers see both.

Every layer of Figure 2 is one named layer of the model ("conv1", "lrn1", "pool1",
..., "fc8"). Its output is the list of its towers' outputs (tower 0 first), except
"fc7", whose output is the whole 4096-d feature of Figure 4, and the single-device
"dropout7" and "fc8" after it.

Placement: with `tower_devices`, every op of tower k runs on device k, forward and
backward, and tensors cross between devices only where the paper's GPUs talk (the
inputs of conv3 and of the fully connected layers). A `with tf.device(...)` around
the model's construction would not do this: Keras does not replay it when the model
runs, and a `tf.GradientTape` creates gradient ops with no device at all, so the
default placer would put both towers' backward passes on one device. Each tower's
computation is therefore a `tf.custom_gradient` function that runs its forward ops
and its gradient ops under the tower's device (`_call_on_device`).
"""

import contextlib
import contextvars
import dataclasses
import itertools
import math

import keras
import tensorflow as tf

from alexnet_tf import layers as alexnet_layers
from alexnet_tf import ops
from alexnet_tf.settings import (  # noqa: F401
    PAPER_TOWERS, PAPER_POOL_SIZE, PAPER_POOL_STRIDE, NON_OVERLAPPING_POOL_SIZE,
    PAPER_DROPOUT_RATE, MODEL_SIZES, ACTIVATIONS, WEIGHT_INITS, DTYPE_POLICIES,
    CONV1_PADDINGS, POOLING_RULES,
)

# Section 5: weights from N(0, 0.01) in every layer; biases 1 in conv2, conv4, conv5
# and the fully connected hidden layers ("this initialization accelerates the early
# stages of learning by providing the ReLUs with positive inputs"), 0 in the remaining
# layers. conv6 is not in the paper's list; it gets 1 like the convolutional layers it
# follows. The ones are for ReLU networks only (see TANH_INPUT_SCALE).
PAPER_WEIGHT_STDDEV = 0.01
PAPER_BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "conv6", "fc6", "fc7")

# A tanh network is initialized for tanh, not with the ReLU net's choices: the biases
# of 1 would hold every such unit near tanh(1), slope 0.42, and with N(0, 0.01)
# weights the variation across images dies out layer by layer, until the logits do
# not depend on the image at all; inputs of 0..255 less the mean would also saturate
# conv1 (most of its units beyond 0.99). So it gets zero biases, LeCun's N(0, 1 /
# fan-in) weights, which keep a tanh layer's output variance near its input's ("Efficient
# BackProp", LeCun et al. 1998), and inputs divided by 64, about the standard deviation
# of ImageNet's mean-subtracted pixels (58), as the first layer of the model.
TANH_INPUT_SCALE = 1.0 / 64

# Inputs per output neuron of each layer of the paper's net (Section 3.5): kernel
# area x input maps, or inputs of a fully connected layer. conv6 (not in the paper)
# sees its tower's 128 pool5 maps.
PAPER_FAN_IN = {
    "conv1": 11 * 11 * 3,
    "conv2": 5 * 5 * 48,
    "conv3": 3 * 3 * 256,
    "conv4": 3 * 3 * 192,
    "conv5": 3 * 3 * 192,
    "conv6": 3 * 3 * 128,
    "fc6": 6 * 6 * 256,
    "fc7": 4096,
    "fc8": 4096,
}

@dataclasses.dataclass(frozen=True)
class LRNSettings:
    """The constants of the LRN layers (Section 3.3) and how they are applied.

    alpha_convention: `ops.LRN_ALPHA_CONVENTIONS`. across_towers: normalize across all
      of a layer's channels, as Caffe's bvlc_alexnet does (its window crosses the
      boundary between the towers' maps); by default each tower normalizes its own,
      as the authors' two-GPU network did, each GPU holding half of the maps.
    """

    depth_radius: int = ops.PAPER_LRN_DEPTH_RADIUS
    bias: float = ops.PAPER_LRN_BIAS
    alpha: float = ops.PAPER_LRN_ALPHA
    beta: float = ops.PAPER_LRN_BETA
    alpha_convention: str = ops.LRN_PAPER_TEXT
    across_towers: bool = False


PAPER_LRN = LRNSettings()


@dataclasses.dataclass(frozen=True)
class AlexNetSize:
    """Widths and kernel sizes; filter and unit counts are totals over both towers.

    Attributes:
      input_shape: default (height, width, channels) of the input.
      conv_filters: kernels of conv1 .. conv5.
      conv_kernel_sizes: kernel side of conv1 .. conv5.
      conv1_stride: stride of conv1; the other conv layers have stride 1.
      conv1_padding: one of CONV1_PADDINGS.
      fc_units: neurons of fc6 and fc7.
      conv6_filters: kernels of the optional sixth conv layer (3x3, over pool5).
      weight_init: one of WEIGHT_INITS, the default initialization of the weights.
    """

    input_shape: tuple
    conv_filters: tuple
    conv_kernel_sizes: tuple
    conv1_stride: int
    conv1_padding: str
    fc_units: tuple
    conv6_filters: int
    weight_init: str = "paper"


# Section 3.5 and Figure 2. The paper does not size the sixth conv layer of its
# ILSVRC-2012 variant (Section 6); it gets conv5's 256 kernels so fc6 keeps its input.
PAPER_SIZE = AlexNetSize(
    input_shape=(224, 224, 3),
    conv_filters=(96, 256, 384, 384, 256),
    conv_kernel_sizes=(11, 5, 3, 3, 3),
    conv1_stride=4,
    conv1_padding="overhang",
    fc_units=(4096, 4096),
    conv6_filters=256,
)

# The same topology for 32x32 images (CIFAR-10, or 28x28 Fashion-MNIST padded or
# scaled to 32x32); any side from 28 up works. A quarter to a third of the paper's
# conv widths, an eighth of its fully connected widths, and conv1 at stride 1 since
# the images are already small, so that it trains on a few CPU cores
# (tools/bench_train_step.py times its step).
SMALL_SIZE = AlexNetSize(
    input_shape=(32, 32, 3),
    conv_filters=(32, 64, 96, 96, 64),
    conv_kernel_sizes=(5, 5, 3, 3, 3),
    conv1_stride=1,
    conv1_padding="same",
    fc_units=(512, 512),
    conv6_filters=64,
    weight_init="scaled",
)

SIZES = {"paper": PAPER_SIZE, "small": SMALL_SIZE}


def _device_scope(device):
    return contextlib.nullcontext() if device is None else tf.device(device)


def _call_on_device(device, fn, inputs):
    """fn(list of tensors) -> list of tensors, with its forward and gradient ops on device.

    The gradient ops come from a tape recorded inside the forward pass, replayed in
    the gradient function under the same device scope, so no op is left for the
    default placer. Variables read by fn get their gradients the same way.
    """
    if device is None:
        return fn(inputs)

    scope = tf.get_current_name_scope()

    @tf.custom_gradient
    def forward(*xs):
        with tf.device(device):
            # Persistent so that an outer persistent tape may ask for gradients twice.
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(xs)
                ys = fn(list(xs))

        def backward(*dys, variables=None):
            sources = list(xs) + list(variables or ())
            # Absolute, so that sums of gradients are named after the layer they belong to.
            name_scope = (
                tf.name_scope(f"gradient_tape/{scope}/") if scope else contextlib.nullcontext()
            )
            with tf.device(device), name_scope:
                grads = tape.gradient(ys, sources, output_gradients=list(dys))
            if variables is None:
                return grads
            return grads[: len(xs)], grads[len(xs) :]

        return ys, backward

    with tf.device(device):
        return list(forward(*inputs))


# Set while a graph that is never differentiated is traced (the export's serving
# functions): the convolutions are then their forward ops alone, with no custom
# gradient, which a SavedModel could not keep and its loader would warn about.
_FORWARD_ONLY = contextvars.ContextVar("alexnet_tf_forward_only", default=False)


@contextlib.contextmanager
def forward_only():
    """Within it, the network's layers build their forward ops only (the same ops and
    values), without the custom gradients that training uses."""
    token = _FORWARD_ONLY.set(True)
    try:
        yield
    finally:
        _FORWARD_ONLY.reset(token)


def conv_bias_activation(conv, x, kernel, bias):
    """conv.activation(conv.convolution_op(x, kernel) + bias), with the bias's gradient
    summed apart from the kernel's.

    Keras' Conv2D leaves BiasAddGrad beside the kernel's Conv2DBackpropFilter, and
    TensorFlow's CPU graph rewriter fuses the two into oneDNN's
    Conv2DBackpropFilterWithBias, which is slower than the kernel's gradient and a
    sum apart (BENCHMARKS.md, "Where the step's time goes"). Here the bias's gradient
    is a plain sum of the activation's gradient, which the rewriter leaves alone. The
    forward pass is the same ops (fused with the bias and the activation as before).
    Under mixed precision the bias's gradient is summed in float32. NHWC only.

    A ReLU's gradient whose incoming gradient is an LRN's (conv1 and conv2 of the
    paper's net) is taken in the LRN's gradient op, in the same pass
    (`ops.relu_gradient_through_lrn`): the same values, one pass over the tensor fewer.
    """
    if _FORWARD_ONLY.get():
        return conv.activation(tf.nn.bias_add(conv.convolution_op(x, kernel), bias))

    @tf.custom_gradient
    def forward(x, kernel, bias):
        # Two tapes, so that eagerly each gradient below runs each op's gradient once.
        # Persistent, so that an outer persistent tape may ask for gradients twice.
        with tf.GradientTape(persistent=True) as conv_tape:
            conv_tape.watch([x, kernel])
            z = conv.convolution_op(x, kernel)
        pre_activation = tf.nn.bias_add(z, bias)
        with tf.GradientTape(persistent=True) as activation_tape:
            activation_tape.watch(pre_activation)
            y = conv.activation(pre_activation)

        def backward(dy):
            d_pre = None
            if conv.activation is keras.activations.relu:
                d_pre = ops.relu_gradient_through_lrn(dy, y)
            if d_pre is None:
                d_pre = activation_tape.gradient(y, pre_activation, output_gradients=dy)
            if isinstance(conv, OverhangConv2D):
                dx = conv_tape.gradient(z, x, output_gradients=d_pre)
                d_kernel = conv.kernel_gradient(x, kernel, d_pre)
            else:
                dx, d_kernel = conv_tape.gradient(z, [x, kernel], output_gradients=d_pre)
            d_bias = tf.reduce_sum(tf.cast(d_pre, tf.float32), axis=[0, 1, 2])
            return dx, d_kernel, tf.cast(d_bias, bias.dtype)

        return y, backward

    return forward(x, kernel, bias)


def _call_conv(conv, x):
    """A built Conv2D of a tower on x, as `conv_bias_activation`."""
    dtype = conv.compute_dtype
    with tf.name_scope(conv.name):
        return conv_bias_activation(conv, tf.cast(x, dtype), tf.cast(conv.kernel, dtype),
                                    tf.cast(conv.bias, dtype))


# Arguments of TowerParallel in the configs of models saved before conv1's towers
# always ran apart; ignored when such a model is loaded.
_RETIRED_TOWER_ARGUMENTS = ("fuse_unplaced", "channelwise", "split_output")


@keras.saving.register_keras_serializable(package="alexnet_tf")
class TowerParallel(keras.layers.Layer):
    """One layer of Figure 2: a stack of Keras layers per tower, each on its own device.

    Args:
      stacks: one list of layers per tower, applied in order.
      devices: one device name (or None: no placement) per tower.
      merge_inputs: every tower takes the channel concatenation of all towers'
        inputs (conv3 and the fully connected layers); otherwise tower k takes
        input k, or the one input tensor all towers share.
      concat_outputs: return the towers' outputs concatenated on devices[0] (fc7,
        whose 4096-d output is the feature of Figure 4) instead of a list.

    With placement, each input part j is first copied once per tower on device j,
    so that the gradients coming back from the towers are summed on device j too.
    Without it, the towers' ops are the same, unplaced, and TensorFlow runs two at
    once where they are independent. conv1's towers too, though they read the same
    images: one convolution of both towers' kernels, with the LRN and pooling run
    once on its output, made the small net's training step 4 to 5% slower on a
    2-core CPU (BENCHMARKS.md, "The training step").
    """

    def __init__(
        self, stacks, devices, merge_inputs=False, concat_outputs=False, **kwargs,
    ):
        super().__init__(**kwargs)
        if len(stacks) != len(devices):
            raise ValueError(f"{len(stacks)} stacks for {len(devices)} devices {devices}")
        self.stacks = [list(stack) for stack in stacks]
        # Also each layer as an attribute: TensorFlow's checkpoints and SavedModels
        # follow attributes, not layers inside nested lists.
        for layer in (layer for stack in self.stacks for layer in stack):
            setattr(self, layer.name, layer)
        self.devices = tuple(devices)
        self.merge_inputs = bool(merge_inputs)
        self.concat_outputs = bool(concat_outputs)
        self._placed = any(d is not None for d in self.devices)

    @property
    def towers(self):
        return len(self.stacks)

    def _tower_input_shapes(self, input_shape):
        # One shape (a tuple, or a list once saved as JSON), or one shape per tower.
        if not isinstance(input_shape[0], (list, tuple)):
            return [tuple(input_shape)] * self.towers
        parts = input_shape
        if self.merge_inputs:
            merged = tuple(parts[0][:-1]) + (sum(p[-1] for p in parts),)
            return [merged] * self.towers
        return [tuple(p) for p in parts]

    def build(self, input_shape):
        for device, stack, shape in zip(
            self.devices, self.stacks, self._tower_input_shapes(input_shape)
        ):
            with _device_scope(device):
                for layer in stack:
                    if not layer.built:  # layers loaded from a saved model come built
                        layer.build(shape)
                    shape = layer.compute_output_shape(shape)

    def _run_stack(self, k, x, training):
        for layer in self.stacks[k]:
            if (isinstance(layer, keras.layers.Conv2D) and layer.use_bias and layer.built
                    and layer.data_format == "channels_last"):
                x = _call_conv(layer, x)
            else:
                x = layer(x, training=training)
        return x

    def _fan_out(self, parts):
        """copies[k][j]: input part j as tower k sees it (a copy made on device j)."""
        per_part = [
            _call_on_device(
                self.devices[j], lambda xs: [tf.identity(xs[0]) for _ in self.stacks], [p]
            )
            for j, p in enumerate(parts)
        ]
        return [[copies[k] for copies in per_part] for k in range(self.towers)]

    def call(self, inputs, training=None):
        if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
            inputs = inputs[0]  # how a reloaded model passes one tensor
        if not isinstance(inputs, (list, tuple)):
            tower_inputs = [[inputs]] * self.towers
        elif not self.merge_inputs:
            tower_inputs = [[x] for x in inputs]
        elif self._placed:
            tower_inputs = self._fan_out(inputs)
        else:
            # One device: concatenate once for all towers.
            tower_inputs = [[tf.concat(list(inputs), axis=-1)]] * self.towers

        def tower_fn(k):
            def fn(xs):
                with tf.name_scope(f"tower{k}"):
                    x = xs[0] if len(xs) == 1 else tf.concat(xs, axis=-1)
                    return [self._run_stack(k, x, training)]

            return fn

        outputs = [
            _call_on_device(self.devices[k], tower_fn(k), tower_inputs[k])[0]
            for k in range(self.towers)
        ]
        if self.concat_outputs and len(outputs) > 1:
            return _call_on_device(
                self.devices[0], lambda xs: [tf.concat(xs, axis=-1)], outputs
            )[0]
        return outputs if len(outputs) > 1 else outputs[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            stacks=[[keras.saving.serialize_keras_object(l) for l in s] for s in self.stacks],
            devices=list(self.devices),
            merge_inputs=self.merge_inputs,
            concat_outputs=self.concat_outputs,
            autocast=self.autocast,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = {k: v for k, v in config.items() if k not in _RETIRED_TOWER_ARGUMENTS}
        devices = config.pop("devices")
        stacks = []
        for device, stack in zip(devices, config.pop("stacks")):
            with _device_scope(device):
                stacks.append([keras.saving.deserialize_keras_object(l) for l in stack])
        return cls(stacks, devices, **config)


@keras.saving.register_keras_serializable(package="alexnet_tf")
class OverhangConv2D(keras.layers.Conv2D):
    """A "valid" Conv2D whose last windows may hang over the bottom and right edges.

    cuda-convnet2 computes 1 + ceil((side - kernel) / stride) outputs and reads zeros
    beyond the image, which is how the paper's 224 crop gives 55x55 at conv1. The
    zeros are the convolution's explicit padding, so no padded copy of the batch is
    made.

    Args:
      overhang: (rows, columns) of zeros below and to the right of the input.
    """

    def __init__(self, *args, overhang=(0, 0), **kwargs):
        kwargs.pop("padding", None)
        super().__init__(*args, padding="valid", **kwargs)
        self.overhang = tuple(int(p) for p in overhang)

    def convolution_op(self, inputs, kernel):
        rows, cols = self.overhang
        return tf.nn.conv2d(
            inputs, kernel, strides=self.strides, padding=[[0, 0], [0, rows], [0, cols], [0, 0]]
        )

    def kernel_gradient(self, inputs, kernel, output_gradient):
        """The kernel's gradient, computed on the input with the overhang's zeros
        appended: TensorFlow's CPU kernel gradient with explicit padding is its generic
        one, slower than oneDNN's on the padded copy (BENCHMARKS.md)."""
        rows, cols = self.overhang
        padded = tf.pad(inputs, [[0, 0], [0, rows], [0, cols], [0, 0]])
        return tf.raw_ops.Conv2DBackpropFilter(
            input=padded, filter_sizes=tf.shape(kernel), out_backprop=output_gradient,
            strides=[1, *self.strides, 1], padding="VALID")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        rows, cols = self.overhang
        return super().compute_output_shape(
            (n, None if h is None else h + rows, None if w is None else w + cols, c)
        )

    def get_config(self):
        config = super().get_config()
        config.update(overhang=list(self.overhang))
        return config


def _overhang(side, kernel_size, stride):
    """Zeros past the edge for cuda-convnet2's 1 + ceil((side - kernel) / stride) outputs."""
    outputs = max(math.ceil((side - kernel_size) / stride), 0) + 1
    return max((outputs - 1) * stride + kernel_size - side, 0)


def _weight_initializer(weight_init, layer_name, seed):
    if weight_init == "scaled":
        # Variance scale / fan-in, i.e. a standard deviation of 0.01 * sqrt(paper / fan-in).
        return keras.initializers.VarianceScaling(
            scale=PAPER_WEIGHT_STDDEV**2 * PAPER_FAN_IN[layer_name],
            mode="fan_in",
            distribution="untruncated_normal",
            seed=seed,
        )
    if weight_init == "lecun":
        return keras.initializers.VarianceScaling(
            scale=1.0, mode="fan_in", distribution="untruncated_normal", seed=seed)
    return keras.initializers.RandomNormal(mean=0.0, stddev=PAPER_WEIGHT_STDDEV, seed=seed)


def _bias_initializer(layer_name, activation):
    ones = activation == "relu" and layer_name in PAPER_BIAS_ONE_LAYERS
    return keras.initializers.Constant(1.0 if ones else 0.0)


def _spatial_after(side, kernel_size, stride, padding):
    if padding == "same":
        return math.ceil(side / stride)
    return (side - kernel_size) // stride + 1 if side >= kernel_size else 0


def resolve_tower_devices(tower_devices, towers=PAPER_TOWERS):
    """The device of each tower; None for a tower left to TensorFlow's placer.

    Default (tower_devices=None): the first two GPUs if two towers are asked for and
    two GPUs are visible, else no placement at all.

    Raises:
      ValueError: for a device count other than `towers`, or a name that is not a
        device or not one of the visible logical devices.
    """
    if tower_devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        if towers > 1 and len(gpus) >= towers:
            return tuple(g.name for g in gpus[:towers])
        return (None,) * towers
    if isinstance(tower_devices, str) or len(tower_devices) != towers:
        raise ValueError(
            f"tower_devices must name one device per tower ({towers}), got {tower_devices!r}"
        )
    check_visible_devices([name for name in tower_devices if name is not None], "tower device")
    return tuple(tower_devices)


def check_visible_devices(names, what="device"):
    """Raises ValueError for a name that is not a device, or not a visible logical one:
    TensorFlow's soft placement would otherwise run its ops elsewhere, silently."""
    logical = [d.name for d in tf.config.list_logical_devices()]

    def type_and_index(name):
        spec = tf.DeviceSpec.from_string(name)
        return spec.device_type, spec.device_index or 0

    visible = {type_and_index(name) for name in logical}
    for name in names:
        try:
            requested = type_and_index(name)
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{what} {name!r} is not a device name: {e}") from e
        if requested not in visible:
            raise ValueError(f"{what} {name!r} is not one of the visible devices {logical}")


def _check_split(what, count, parts):
    if count <= 0 or count % parts:
        raise ValueError(f"{what}={count} cannot be split into {parts} towers")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_arguments(num_classes, size, input_shape, options):
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if options.towers not in (1, 2):
        raise ValueError(f"towers must be 1 or 2, got {options.towers!r}")
    _check_choice("activation", options.activation, ACTIVATIONS)
    if not 0.0 <= options.dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1), got {options.dropout_rate!r}")
    if isinstance(options.dtype_policy, str):
        _check_choice("dtype_policy", options.dtype_policy, DTYPE_POLICIES)
    _check_choice("conv1_padding", options.conv1_padding, CONV1_PADDINGS)
    _check_choice("weight_init", options.weight_init, WEIGHT_INITS)
    _check_choice("pooling_rule", options.pooling_rule, POOLING_RULES)
    ops.alpha_per_term(options.lrn_settings.alpha, options.lrn_settings.depth_radius,
                       options.lrn_settings.alpha_convention)
    if (
        len(input_shape) != 3
        or not all(isinstance(s, int) and s > 0 for s in input_shape)
        or input_shape[-1] != 3
    ):
        raise ValueError(
            f"input_shape must be (height, width, 3) for RGB images, got {input_shape!r}"
        )
    if len(size.conv_filters) != 5 or len(size.conv_kernel_sizes) != 5 or len(size.fc_units) != 2:
        raise ValueError(f"size needs 5 conv layers and 2 hidden fully connected layers: {size}")
    # conv1 .. conv4 are halved in both nets; conv5, conv6 and fc6, fc7 only in the
    # two-tower net (the one-tower net keeps them whole, footnote 2 of Section 3.2).
    for i, filters in enumerate(size.conv_filters[:4]):
        _check_split(f"conv{i + 1} filters", filters, 2)
    _check_split("conv5 filters", size.conv_filters[4], options.towers)
    _check_split("conv6 filters", size.conv6_filters, options.towers)
    for i, units in enumerate(size.fc_units):
        _check_split(f"fc{i + 6} units", units, options.towers)


def _pool_outputs(side, pool_size, stride, rule):
    if side < pool_size:
        return 0
    if rule == "ceil":
        return -(-(side - pool_size) // stride) + 1
    return (side - pool_size) // stride + 1


def _check_fits(input_shape, options, k1, s1, overhang):
    """Raises ValueError if nothing is left of the input after pool5."""
    side = min(s + p for s, p in zip(input_shape[:2], overhang))
    side = _spatial_after(side, k1, s1, "same" if options.conv1_padding == "same" else "valid")
    for _ in range(3):
        side = _pool_outputs(side, options.pool_size, PAPER_POOL_STRIDE, options.pooling_rule)
    if side < 1:
        raise ValueError(
            f"input_shape {input_shape} is too small for this net: nothing is left after "
            f"pool5 (conv1 kernel {k1}, stride {s1}, padding {options.conv1_padding!r})"
        )


@keras.saving.register_keras_serializable(package="alexnet_tf")
class CeilMaxPooling2D(keras.layers.MaxPooling2D):
    """Max pooling with the "ceil" output rule of POOLING_RULES: the last window may hang
    over the bottom and right edges, and takes the maximum of what is inside."""

    def call(self, inputs):
        extra = [max((_pool_outputs(side, k, s, "ceil") - 1) * s + k - side, 0)
                 for side, k, s in zip(inputs.shape[1:3], self.pool_size, self.strides)]
        padded = tf.pad(inputs, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]],
                        constant_values=inputs.dtype.min)
        return super().call(padded)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        k, s = self.pool_size, self.strides
        return (n, _pool_outputs(h, k[0], s[0], "ceil"), _pool_outputs(w, k[1], s[1], "ceil"), c)


@keras.saving.register_keras_serializable(package="alexnet_tf")
class AcrossTowersLRN(keras.layers.Layer):
    """LRN over the channels of all towers together, then split back into the towers'
    parts (LRNSettings.across_towers: Caffe's norm1 and norm2). Runs where tower 0 runs."""

    def __init__(self, lrn_settings, use_reference=False, **kwargs):
        super().__init__(**kwargs)
        settings = (lrn_settings if isinstance(lrn_settings, LRNSettings)
                    else LRNSettings(**lrn_settings))
        self.lrn_settings = settings
        self.use_reference = bool(use_reference)
        self.lrn = alexnet_layers.LocalResponseNormalization(
            settings.depth_radius, settings.bias, settings.alpha, settings.beta,
            use_reference=use_reference, alpha_convention=settings.alpha_convention,
            dtype=self.dtype_policy, name=f"{self.name}_all")

    def call(self, inputs):
        sizes = [x.shape[-1] for x in inputs]
        return tf.split(self.lrn(tf.concat(list(inputs), axis=-1)), sizes, axis=-1)

    def compute_output_shape(self, input_shape):
        return [tuple(shape) for shape in input_shape]

    def get_config(self):
        config = super().get_config()
        config.update(lrn_settings=dataclasses.asdict(self.lrn_settings),
                      use_reference=self.use_reference)
        return config


@dataclasses.dataclass(frozen=True)
class _Options:
    """build_alexnet's arguments that shape the layers, resolved and checked."""

    towers: int
    activation: str
    lrn: bool
    overlapping_pooling: bool
    conv6: bool
    dropout_rate: float
    dtype_policy: object
    lrn_use_reference: bool
    conv1_padding: str
    weight_init: str
    lrn_settings: LRNSettings
    pooling_rule: str
    seed: object

    @property
    def pool_size(self):
        return PAPER_POOL_SIZE if self.overlapping_pooling else NON_OVERLAPPING_POOL_SIZE


class _TowerLayers:
    """Makes the layers of one network: each a `TowerParallel` of per-tower stacks,
    named after Figure 2's layer ("conv1_tower0"), seeded in build order, initialized
    as the options say, each tower's layers made on its device."""

    def __init__(self, options, devices, overhang):
        self.options = options
        self.devices = devices
        self.overhang = overhang
        self.policy = keras.dtype_policies.get(options.dtype_policy)
        self._seeds = itertools.count(options.seed or 0)

    def _next_seed(self):
        return None if self.options.seed is None else next(self._seeds)

    def _weights(self, name):
        return dict(
            kernel_initializer=_weight_initializer(self.options.weight_init, name,
                                                   self._next_seed()),
            bias_initializer=_bias_initializer(name, self.options.activation),
            dtype=self.policy,
        )

    def _towers(self, name, make, n=None, **kwargs):
        n = n or self.options.towers
        stacks = []
        for k in range(n):
            # Layers are made under their device: Dropout makes its seed variable here.
            with _device_scope(self.devices[k]):
                stacks.append(make(k))
        # No autocast at this level: each tower casts its own inputs on its own device.
        return TowerParallel(stacks, self.devices[:n], dtype=self.policy, autocast=False,
                             name=name, **kwargs)

    def conv(self, name, filters, kernel_size, strides=1, padding="same", **kwargs):
        def make(k):
            common = dict(strides=strides, activation=self.options.activation,
                          name=f"{name}_tower{k}", **self._weights(name))
            if padding == "overhang":
                return [OverhangConv2D(filters, kernel_size, overhang=self.overhang, **common)]
            return [keras.layers.Conv2D(filters, kernel_size, padding=padding, **common)]

        return self._towers(name, make, **kwargs)

    def dense(self, name, units, activation, flatten=False, float32_output=False, **kwargs):
        def make(k):
            stack = [keras.layers.Dense(units, activation=activation, name=f"{name}_tower{k}",
                                        **self._weights(name))]
            if flatten:
                stack.insert(0, keras.layers.Flatten(dtype=self.policy,
                                                     name=f"{name}_flatten_tower{k}"))
            if float32_output:
                # Logits in float32 whatever the policy: the softmax needs the range.
                stack.append(keras.layers.Activation("linear", dtype="float32",
                                                     name=f"{name}_float32_tower{k}"))
            return stack

        return self._towers(name, make, **kwargs)

    def lrn(self, name):
        settings = self.options.lrn_settings
        if settings.across_towers and self.options.towers > 1:
            return AcrossTowersLRN(settings, use_reference=self.options.lrn_use_reference,
                                   dtype=self.policy, name=name)
        return self._towers(name, lambda k: [alexnet_layers.LocalResponseNormalization(
            settings.depth_radius, settings.bias, settings.alpha, settings.beta,
            use_reference=self.options.lrn_use_reference,
            alpha_convention=settings.alpha_convention, dtype=self.policy,
            name=f"{name}_tower{k}")])

    def pool(self, name):
        ceil = self.options.pooling_rule == "ceil"
        layer = CeilMaxPooling2D if ceil else keras.layers.MaxPooling2D
        return self._towers(name, lambda k: [layer(
            self.options.pool_size, PAPER_POOL_STRIDE, dtype=self.policy,
            name=f"{name}_tower{k}")])

    def dropout(self, name, **kwargs):
        return self._towers(name, lambda k: [keras.layers.Dropout(
            self.options.dropout_rate, seed=self._next_seed(), dtype=self.policy,
            name=f"{name}_tower{k}")], **kwargs)


def build_alexnet(
    num_classes=1000,
    *,
    size="paper",
    input_shape=None,
    towers=PAPER_TOWERS,
    tower_devices=None,
    activation="relu",
    lrn=True,
    overlapping_pooling=True,
    conv6=False,
    dropout_rate=PAPER_DROPOUT_RATE,
    dtype_policy="float32",
    lrn_use_reference=False,
    conv1_padding=None,
    weight_init=None,
    lrn_settings=PAPER_LRN,
    pooling_rule="floor",
    seed=None,
    name="alexnet",
):
    """Builds AlexNet from mean-subtracted float images [N, H, W, 3] to float32 logits.

    Args:
      num_classes: width of fc8.
      size: "paper" (Figure 2, 60,965,224 parameters for 1000 classes), "small"
        (the same topology for 32x32 images), or an `AlexNetSize`.
      input_shape: (height, width, 3); default the size's (224x224 for the paper).
      towers: 2 for the paper's net; 1 for its one-GPU comparison net (Section 3.2):
        one tower with half the kernels of conv1 .. conv4, but conv5, fc6 and fc7
        at full size as footnote 2 says.
      tower_devices: one device name per tower, e.g. ("/GPU:0", "/GPU:1"), or None
        per tower for no placement. Default: two GPUs if two are visible, else none.
      activation: "relu" (Section 3.1) or "tanh" (the saturating baseline of Figure 1),
        each initialized for itself: see PAPER_BIAS_ONE_LAYERS and TANH_INPUT_SCALE.
      lrn: local response normalization after conv1 and conv2 (Section 3.3).
      overlapping_pooling: 3x3 windows at stride 2 (Section 3.4), else 2x2 at stride 2.
      conv6: the extra sixth conv layer over pool5 of the ILSVRC-2012 variant (Section 6).
      dropout_rate: dropout of fc6 and fc7 during training (Section 4.2).
      dtype_policy: "float32", "mixed_bfloat16" or "mixed_float16". Under a mixed
        policy the variables stay float32 while layers (LRN included) compute in
        the low precision; the logits are always float32, so that the softmax and
        the loss run in float32.
      lrn_use_reference: compute LRN with standard TensorFlow ops rather than the
        compiled op, so that an exported model loads with TensorFlow alone.
      conv1_padding: "overhang" (cuda-convnet2: 224 -> 55), "valid" (Caffe: 227 -> 55)
        or "same"; default the size's.
      weight_init: "paper" (N(0, 0.01), Section 5), "scaled" (the paper's gain per
        layer at other widths: see WEIGHT_INITS) or "lecun"; default "lecun" for tanh,
        else the size's ("paper" for the paper's net, "scaled" for the small one).
      lrn_settings: an `LRNSettings`: the constants, the alpha convention, and whether
        the window stops at the tower boundary (default: the paper's, per tower).
      pooling_rule: "floor" or "ceil", how many outputs a pooling layer has (POOLING_RULES).
      seed: base seed of the initializers and dropout, for reproducible builds.
      name: model name.

    Returns:
      A functional `keras.Model`. Its fc7 feature is
      `keras.Model(model.inputs, model.get_layer("fc7").output)`, or `feature_model(model)`.

    Raises:
      ValueError: for an input shape that is not (H, W, 3) or too small for the net,
        widths that cannot be split into the towers, unknown device names, or an
        unknown option value; the message names the value.
    """
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"size must be one of {tuple(SIZES)} or an AlexNetSize, got {size!r}")
        size = SIZES[size]
    input_shape = tuple(size.input_shape if input_shape is None else input_shape)
    default_init = "lecun" if activation == "tanh" else size.weight_init
    options = _Options(
        towers, activation, lrn, overlapping_pooling, conv6, dropout_rate, dtype_policy,
        lrn_use_reference, conv1_padding or size.conv1_padding, weight_init or default_init,
        lrn_settings, pooling_rule, seed)
    _check_arguments(num_classes, size, input_shape, options)
    k, s1 = size.conv_kernel_sizes, size.conv1_stride
    overhang = (0, 0)
    if options.conv1_padding == "overhang":
        overhang = tuple(_overhang(side, k[0], s1) for side in input_shape[:2])
    _check_fits(input_shape, options, k[0], s1, overhang)
    layers = _TowerLayers(options, resolve_tower_devices(tower_devices, towers), overhang)
    # conv1 .. conv4 have half their kernels per tower in both nets; conv5, conv6 and
    # the fully connected layers are split only between two towers (footnote 2).
    half = [f // 2 for f in size.conv_filters[:4]]
    conv5, conv6_filters = size.conv_filters[4] // towers, size.conv6_filters // towers
    fc6, fc7 = (units // towers for units in size.fc_units)

    images = keras.Input(shape=input_shape, name="images")
    x = images
    if activation == "tanh":
        x = keras.layers.Rescaling(TANH_INPUT_SCALE, name="input_scale")(x)
    x = layers.conv("conv1", half[0], k[0], s1, options.conv1_padding)(x)
    if lrn:
        x = layers.lrn("lrn1")(x)
    x = layers.pool("pool1")(x)
    x = layers.conv("conv2", half[1], k[1])(x)
    if lrn:
        x = layers.lrn("lrn2")(x)
    x = layers.pool("pool2")(x)
    x = layers.conv("conv3", half[2], k[2], merge_inputs=True)(x)
    x = layers.conv("conv4", half[3], k[3])(x)
    x = layers.conv("conv5", conv5, k[4])(x)
    x = layers.pool("pool5")(x)
    if conv6:
        x = layers.conv("conv6", conv6_filters, 3)(x)
    x = layers.dense("fc6", fc6, activation, flatten=True, merge_inputs=True)(x)
    x = layers.dropout("dropout6")(x)
    x = layers.dense("fc7", fc7, activation, merge_inputs=True, concat_outputs=True)(x)
    # fc8 sees all 4096 fc7 neurons; it runs on tower 0's device, where fc7 is gathered.
    x = layers.dropout("dropout7", n=1)(x)
    logits = layers.dense("fc8", num_classes, None, float32_output=True, n=1)(x)
    return keras.Model(images, logits, name=name)


def feature_model(model):
    """The model from images to the 4096-d fc7 feature (Figure 4, right), sharing weights."""
    return keras.Model(model.inputs, model.get_layer("fc7").output, name=f"{model.name}_fc7")


def conv1_kernels(model):
    """conv1's kernels, one NumPy [k, k, 3, filters] array per tower, tower 0's first."""
    return [w.numpy() for w in model.get_layer("conv1").weights if len(w.shape) == 4]


# Figure 1's network (Section 3.1): "a four-layer convolutional neural network" on
# CIFAR-10. The authors' CIFAR-10 configuration in cuda-convnet
# (example-layers/layers-18pct.cfg, without its two response-normalization layers,
# as the figure's caption has no regularization of any kind): three 5x5 convolutions
# with zero padding 2, of 32, 32 and 64 kernels, each followed by 3x3 pooling at
# stride 2, max after the first and average after the others, then one fully
# connected layer to the classes. Weights N(0, sigma) with initW 0.0001 for conv1 and
# 0.01 for the rest, biases 0 (cuda-convnet's default initB), for either activation.
FIGURE1_CONV_FILTERS = (32, 32, 64)
FIGURE1_KERNEL_SIZE = 5
FIGURE1_WEIGHT_STDDEVS = (1e-4, 0.01, 0.01, 0.01)


def build_figure1_net(num_classes=10, *, activation="relu", input_shape=(32, 32, 3), seed=None,
                      name="figure1_net"):
    """Figure 1's four-layer CNN (see FIGURE1_CONV_FILTERS), mean-subtracted images to
    logits. cuda-convnet's pooling has ceil((size - 3) / 2) + 1 outputs, the last
    window inside the image as far as it reaches: Keras' "same" pooling, which pads
    only the bottom and right here (32 -> 16 -> 8 -> 4), and whose average counts only
    what is inside.
    """
    _check_choice("activation", activation, ACTIVATIONS)
    seeds = itertools.count(seed or 0)
    images = keras.Input(shape=input_shape, name="images")
    x = images
    pools = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
             keras.layers.AveragePooling2D)
    for i, (filters, pool, stddev) in enumerate(zip(FIGURE1_CONV_FILTERS, pools,
                                                      FIGURE1_WEIGHT_STDDEVS)):
        x = keras.layers.Conv2D(
            filters, FIGURE1_KERNEL_SIZE, padding="same", activation=activation,
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=stddev, seed=None if seed is None else next(seeds)),
            name=f"conv{i + 1}")(x)
        x = pool(PAPER_POOL_SIZE, PAPER_POOL_STRIDE, padding="same", name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.RandomNormal(
            stddev=FIGURE1_WEIGHT_STDDEVS[-1], seed=None if seed is None else next(seeds)),
        name="fc")(x)
    return keras.Model(images, logits, name=name)
