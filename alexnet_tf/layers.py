"""Keras layers built on the project's ops."""

import keras

from alexnet_tf import ops


@keras.saving.register_keras_serializable(package="alexnet_tf")
class LocalResponseNormalization(keras.layers.Layer):
    """The paper's cross-channel LRN (Section 3.3) on NHWC inputs.

    Args:
      depth_radius, bias, alpha, beta, alpha_convention: as
        `alexnet_tf.ops.local_response_normalization`; the defaults are the paper's
        k = 2, n = 5, alpha = 1e-4, beta = 0.75, alpha per term as its text writes.
      use_reference: compute with standard TensorFlow ops instead of the compiled
        kernel (same numbers, slower), so that a model exported with it needs only
        TensorFlow to load.
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
            ops.local_response_normalization_reference
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
