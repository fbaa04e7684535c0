"""The Keras layers of the paper's network that Keras lacks: the LRN of Section 3.3
(each tower's, and across the towers as Caffe's bvlc_alexnet), cuda-convnet's
convolution and pooling geometry (windows that hang over the bottom and right edges)."""

import dataclasses

import keras
import tensorflow as tf

from alexnet_tf import ops


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """The paper's cross-channel LRN (Section 3.3) on NHWC inputs.

    Args:
      depth_radius, bias, alpha, beta, alpha_convention: as
        `alexnet_tf.ops.local_response_normalization`; the defaults are the paper's
        k = 2, n = 5, alpha = 1e-4, beta = 0.75, alpha per term as its text writes.
      use_reference: compute with standard TensorFlow ops instead of the compiled
        kernel (`ops.local_response_normalization_portable`, not the reference despite
        the name, which saved configs keep: the same numbers where the squares are
        finite), so that a model exported with it needs only TensorFlow to load.
    """

    def __init__(
        self,
        depth_radius=ops.PAPER_LRN_DEPTH_RADIUS,
        bias=ops.PAPER_LRN_BIAS,
        alpha=ops.PAPER_LRN_ALPHA,
        beta=ops.PAPER_LRN_BETA,
        use_reference=False,
        alpha_convention=ops.LRN_PAPER_TEXT,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.depth_radius = int(depth_radius)
        self.bias = float(bias)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.use_reference = bool(use_reference)
        ops.alpha_per_term(self.alpha, self.depth_radius, alpha_convention)  # checks it
        self.alpha_convention = alpha_convention

    def call(self, inputs):
        lrn = (
            ops.local_response_normalization_portable
            if self.use_reference
            else ops.local_response_normalization
        )
        return lrn(
            inputs, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha,
            beta=self.beta, alpha_convention=self.alpha_convention,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            depth_radius=self.depth_radius,
            bias=self.bias,
            alpha=self.alpha,
            beta=self.beta,
            use_reference=self.use_reference,
            alpha_convention=self.alpha_convention,
        )
        return config


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


def pool_outputs(side, pool_size, stride, rule):
    if side < pool_size:
        return 0
    if rule == "ceil":
        return -(-(side - pool_size) // stride) + 1
    return (side - pool_size) // stride + 1


@keras.saving.register_keras_serializable(package="alexnet_tf")
class CeilMaxPooling2D(keras.layers.MaxPooling2D):
    """Max pooling with the "ceil" output rule of POOLING_RULES: the last window may hang
    over the bottom and right edges, and takes the maximum of what is inside."""

    def call(self, inputs):
        extra = [max((pool_outputs(side, k, s, "ceil") - 1) * s + k - side, 0)
                 for side, k, s in zip(inputs.shape[1:3], self.pool_size, self.strides)]
        padded = tf.pad(inputs, [[0, 0], [0, extra[0]], [0, extra[1]], [0, 0]],
                        constant_values=inputs.dtype.min)
        return super().call(padded)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        k, s = self.pool_size, self.strides
        return (n, pool_outputs(h, k[0], s[0], "ceil"), pool_outputs(w, k[1], s[1], "ceil"), c)


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
        self.lrn = LocalResponseNormalization(
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
