"""AlexNet (Krizhevsky, Sutskever and Hinton, NIPS 2012) as a Keras 3 functional model.

The network of Section 3 and Figure 2: five convolutional and three fully connected
layers, split into two towers that each hold half the kernels of every layer (the
paper's two GPUs, Section 3.2). conv2, conv4 and conv5 see only their own tower;
conv3 and the fully connected layers see both.

Every layer of Figure 2 is one named layer of the model ("conv1", "lrn1", "pool1",
..., "fc8"). Its output is the list of its towers' outputs (tower 0 first), except
"fc7", whose output is the whole 4096-d feature of Figure 4, and the single-device
"dropout7" and "fc8" after it.

The towers' placement on devices is `placement`'s, the convolutions' gradients
`conv_gradients`'s, and the layers Keras lacks `layers`'; this module puts them
together as Figure 2 draws them.
"""

import dataclasses
import itertools
import math

import keras
import tensorflow as tf

from alexnet_tf import ops
from alexnet_tf.layers import (  # noqa: F401
    AcrossTowersLRN, CeilMaxPooling2D, LocalResponseNormalization, LRNSettings, OverhangConv2D,
    PAPER_LRN, pool_outputs,
)
from alexnet_tf.placement import TowerParallel, device_scope, resolve_tower_devices
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


def _check_fits(input_shape, options, k1, s1, overhang):
    """Raises ValueError if nothing is left of the input after pool5."""
    side = min(s + p for s, p in zip(input_shape[:2], overhang))
    side = _spatial_after(side, k1, s1, "same" if options.conv1_padding == "same" else "valid")
    for _ in range(3):
        side = pool_outputs(side, options.pool_size, PAPER_POOL_STRIDE, options.pooling_rule)
    if side < 1:
        raise ValueError(
            f"input_shape {input_shape} is too small for this net: nothing is left after "
            f"pool5 (conv1 kernel {k1}, stride {s1}, padding {options.conv1_padding!r})"
        )


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
            with device_scope(self.devices[k]):
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
        return self._towers(name, lambda k: [LocalResponseNormalization(
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


def flatten_crops(images):
    """[N, crops, H, W, C] images -> [N * crops, H, W, C], each image's crops in a row."""
    return tf.reshape(images, tf.concat([[-1], tf.shape(images)[2:]], 0))


def average_over_crops(outputs, crops):
    """[N * crops, D] outputs, each image's crops in a row -> [N, D] float32, the mean of
    each image's (Section 4.1: the softmax "averaged over the ten patches")."""
    outputs = tf.cast(outputs, tf.float32)
    if isinstance(crops, int) and crops == 1:  # one crop an image: nothing to average
        return outputs
    return tf.reduce_mean(tf.reshape(outputs, [-1, crops, tf.shape(outputs)[-1]]), axis=1)


def crop_probabilities(logits, crops=1):
    """[N * crops, classes] logits -> [N, classes] float32: each image's softmax,
    averaged over its crops."""
    return average_over_crops(tf.nn.softmax(tf.cast(logits, tf.float32)), crops)


def conv1_kernels(model):
    """conv1's kernels, one NumPy [k, k, 3, filters] array per tower, tower 0's first."""
    return [w.numpy() for w in model.get_layer("conv1").weights if len(w.shape) == 4]
