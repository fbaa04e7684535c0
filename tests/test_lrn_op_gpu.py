"""The LRN op's CUDA kernels inside TensorFlow, on a visible GPU (skipped without one).

Needs the GPU build of TensorFlow and the library built with its CUDA kernels
(`pip install --no-build-isolation .` does that when TensorFlow is a CUDA build).
"""

import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import ops

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tools"))
import lrn_reference  # noqa: E402

pytestmark = pytest.mark.skipif(
    not tf.config.list_physical_devices("GPU"), reason="no GPU visible to TensorFlow"
)

TOLERANCE = {tf.float64: 1e-10, tf.float32: 1e-5, tf.float16: 3e-3, tf.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("depth_radius", [0, 2, 11])
def test_gpu_kernels_match_float64_formula(dtype, depth_radius):
    rng = np.random.default_rng(depth_radius)
    x = tf.cast(rng.standard_normal((3, 7, 5, 40)) * 2, dtype)
    dy = tf.cast(rng.standard_normal((3, 7, 5, 40)), dtype)
    params = dict(depth_radius=depth_radius, bias=1.5, alpha=0.25, beta=0.75)
    with tf.device("/GPU:0"):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.local_response_normalization(x, **params)
        dx = tape.gradient(y, x, output_gradients=dy)
    assert "GPU" in y.device and "GPU" in dx.device
    xs, dys = (np.asarray(tf.cast(t, tf.float64)) for t in (x, dy))
    for actual, expected in ((y, lrn_reference.lrn(xs, **params)),
                             (dx, lrn_reference.lrn_grad(dys, xs, **params))):
        error = np.max(np.abs(np.asarray(tf.cast(actual, tf.float64)) - expected))
        assert error / np.max(np.abs(expected)) < 4 * TOLERANCE[dtype]
