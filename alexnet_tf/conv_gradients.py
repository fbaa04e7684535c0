"""The convolutions' gradients, computed the way the CPU runs them fastest.

Each convolution of the network, with its bias and activation, is one
`tf.custom_gradient` function (`conv_bias_activation`) whose forward ops are Keras'
own and whose gradient sums the bias's part apart from the kernel's and takes a ReLU's
gradient inside the LRN's gradient op where one follows. The values are those of
TensorFlow's own gradients (tests/test_model.py checks them). `forward_only` turns the
custom gradients off for graphs that are never differentiated (the export's serving
functions).
"""

import contextlib
import contextvars

import keras
import tensorflow as tf

from alexnet_tf import ops

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
            if hasattr(conv, "kernel_gradient"):  # layers.OverhangConv2D
                dx = conv_tape.gradient(z, x, output_gradients=d_pre)
                d_kernel = conv.kernel_gradient(x, kernel, d_pre)
            else:
                dx, d_kernel = conv_tape.gradient(z, [x, kernel], output_gradients=d_pre)
            d_bias = tf.reduce_sum(tf.cast(d_pre, tf.float32), axis=[0, 1, 2])
            return dx, d_kernel, tf.cast(d_bias, bias.dtype)

        return y, backward

    return forward(x, kernel, bias)


def call_conv(conv, x):
    """A built Conv2D of a tower on x, as `conv_bias_activation`."""
    dtype = conv.compute_dtype
    with tf.name_scope(conv.name):
        return conv_bias_activation(conv, tf.cast(x, dtype), tf.cast(conv.kernel, dtype),
                                    tf.cast(conv.bias, dtype))
