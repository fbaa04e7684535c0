"""The compiled LRN op against the formula in NumPy float64 and against TensorFlow's LRN."""

import os
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import layers, ops

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "tools"))
import lrn_reference  # noqa: E402

# Largest relative error (max |error| / max |reference|) accepted per dtype:
# a few units of the storage type's precision.
TOLERANCE = {tf.float64: 1e-10, tf.float32: 1e-5, tf.float16: 3e-3, tf.bfloat16: 2e-2}


def random_case(seed):
    """A random shape and random parameters: radius up to 12 (beyond the direct
    window path), alpha and beta up to 2, half the cases at the paper's beta.
    bias, alpha and beta are float32 attributes of the op (as of TensorFlow's
    LRN), so they are drawn as float32 values."""
    rng = np.random.default_rng(seed)
    channels = int(rng.integers(1, 33))
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 6)), int(rng.integers(1, 6)), channels)
    params = dict(
        depth_radius=int(rng.integers(0, min(channels, 13))),
        bias=float(np.float32(rng.uniform(0.5, 3.0))),
        alpha=float(np.float32(rng.uniform(0.0, 2.0))),
        beta=0.75 if seed % 2 else float(np.float32(rng.uniform(0.0, 2.0))),
    )
    x = rng.standard_normal(shape) * rng.uniform(0.1, 3.0)
    dy = rng.standard_normal(shape)
    return x, dy, params


def relative_error(actual, expected):
    actual = np.asarray(tf.cast(actual, tf.float64))
    return np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30)


def stored(x, dtype):
    """x rounded to dtype, back in float64: the reference sees what the kernel sees."""
    return np.asarray(tf.cast(tf.cast(x, dtype), tf.float64))


def forward_and_gradient(x, dy, **params):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ops.local_response_normalization(x, **params)
    return y, tape.gradient(y, x, output_gradients=tf.cast(dy, x.dtype))


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.float16, tf.bfloat16])
@pytest.mark.parametrize("seed", range(12))
def test_forward_and_gradient_match_float64_formula(seed, dtype):
    x, dy, params = random_case(seed)
    if dtype in (tf.float16, tf.bfloat16):
        params["alpha"] = min(params["alpha"], 0.5)  # keep squares within float16 range
    xs, dys = stored(x, dtype), stored(dy, dtype)
    y, dx = forward_and_gradient(tf.cast(x, dtype), tf.cast(dy, dtype), **params)
    assert y.dtype == dtype and dx.dtype == dtype
    assert relative_error(y, lrn_reference.lrn(xs, **params)) < TOLERANCE[dtype]
    grad_tolerance = TOLERANCE[dtype] * (4 if dtype in (tf.float16, tf.bfloat16) else 1)
    assert relative_error(dx, lrn_reference.lrn_grad(dys, xs, **params)) < grad_tolerance


@pytest.mark.parametrize("seed", range(6))
def test_float32_within_1e4_of_reference_elementwise(seed):
    x, dy, params = random_case(100 + seed)
    y, dx = forward_and_gradient(tf.constant(x, tf.float32), tf.constant(dy, tf.float32), **params)
    xs, dys = stored(x, tf.float32), stored(dy, tf.float32)
    np.testing.assert_allclose(y, lrn_reference.lrn(xs, **params), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dx, lrn_reference.lrn_grad(dys, xs, **params), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", range(8))
def test_forward_matches_tensorflow_lrn(seed):
    x, _, params = random_case(200 + seed)
    x = tf.constant(x, tf.float32)
    ours = ops.local_response_normalization(x, **params)
    theirs = tf.nn.local_response_normalization(x, **params)
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-6)


def test_paper_defaults_match_tensorflow_lrn_and_its_gradient():
    rng = np.random.default_rng(7)
    x = tf.constant(np.maximum(rng.standard_normal((2, 9, 9, 96)), 0) * 30, tf.float32)
    dy = tf.constant(rng.standard_normal((2, 9, 9, 96)), tf.float32)
    paper = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)

    def tf_lrn(t):
        return tf.nn.local_response_normalization(t, **paper)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours, theirs = ops.local_response_normalization(x), tf_lrn(x)
    np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(
        tape.gradient(ours, x, dy), tape.gradient(theirs, x, dy), rtol=1e-4, atol=1e-6
    )


@pytest.mark.parametrize("depth_radius", [0, 2, 10])
def test_numerical_gradient_float64(depth_radius):
    rng = np.random.default_rng(depth_radius)
    x = tf.constant(rng.standard_normal((2, 2, 3, 12)) * 2, tf.float64)
    theoretical, numerical = tf.test.compute_gradient(
        lambda t: ops.local_response_normalization(
            t, depth_radius=depth_radius, bias=1.3, alpha=0.7, beta=0.6
        ),
        [x],
    )
    np.testing.assert_allclose(theoretical[0], numerical[0], rtol=1e-6, atol=1e-7)


def test_gradient_at_zero_input_is_bias_to_minus_beta():
    # With x = 0 the window sums vanish: y = x bias^-beta, so dx = dy bias^-beta.
    dy = np.random.default_rng(3).standard_normal((2, 3, 3, 8))
    _, dx = forward_and_gradient(tf.zeros((2, 3, 3, 8), tf.float64), dy, bias=2.0, beta=0.75)
    np.testing.assert_allclose(dx, dy * 2.0**-0.75, rtol=1e-14)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_gradients_agree_with_float32(dtype):
    rng = np.random.default_rng(11)
    x = tf.cast(rng.standard_normal((2, 5, 5, 48)) * 3, dtype)
    dy = tf.cast(rng.standard_normal((2, 5, 5, 48)), dtype)
    _, dx_low = forward_and_gradient(x, dy, alpha=0.1)
    _, dx_32 = forward_and_gradient(tf.cast(x, tf.float32), tf.cast(dy, tf.float32), alpha=0.1)
    assert relative_error(dx_low, np.asarray(dx_32, np.float64)) < TOLERANCE[dtype] * 2


def test_works_in_tf_function_tf_data_and_keras_layer():
    x = tf.constant(np.random.default_rng(5).standard_normal((4, 3, 3, 16)), tf.float32)
    expected = lrn_reference.lrn(x.numpy(), 2, 2.0, 1e-4, 0.75)

    traced = tf.function(ops.local_response_normalization)(x)
    np.testing.assert_allclose(traced, expected, rtol=1e-5)

    mapped = next(iter(tf.data.Dataset.from_tensors(x).map(ops.local_response_normalization)))
    np.testing.assert_allclose(mapped, expected, rtol=1e-5)

    layer = layers.LocalResponseNormalization()
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5)
    clone = layers.LocalResponseNormalization.from_config(layer.get_config())
    assert (clone.depth_radius, clone.bias, clone.alpha, clone.beta) == (2, 2.0, 1e-4, 0.75)

    inputs = keras.Input((3, 3, 16))
    model = keras.Model(inputs, layers.LocalResponseNormalization(depth_radius=3, alpha=0.5)(inputs))
    np.testing.assert_allclose(
        model(x), lrn_reference.lrn(x.numpy(), 3, 2.0, 0.5, 0.75), rtol=1e-5
    )


def test_reference_implementation_matches_the_op():
    x, _, params = random_case(300)
    x = tf.constant(x, tf.float32)
    np.testing.assert_allclose(
        ops.local_response_normalization_reference(x, **params),
        ops.local_response_normalization(x, **params),
        rtol=2e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.float16, tf.bfloat16])
@pytest.mark.parametrize("seed", range(8))
def test_the_portable_lrn_and_its_gradient_match_float64_formula(seed, dtype):
    # What exported models compute (a band-matrix convolution, rsqrt for beta = 0.75),
    # differentiated by TensorFlow's own gradients.
    x, dy, params = random_case(seed)
    if dtype in (tf.float16, tf.bfloat16):
        params["alpha"] = min(params["alpha"], 0.5)  # keep squares within float16 range
    xs, dys = stored(x, dtype), stored(dy, dtype)
    x = tf.cast(x, dtype)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = ops.local_response_normalization_portable(x, **params)
    dx = tape.gradient(y, x, output_gradients=tf.cast(dy, dtype))
    assert y.dtype == dtype
    assert relative_error(y, lrn_reference.lrn(xs, **params)) < TOLERANCE[dtype]
    # Autodiff through rsqrt, sqrt and the band's transpose rounds at each of those
    # steps in float32, where the compiled op's gradient is one expression.
    grad_tolerance = TOLERANCE[dtype] * (10 if dtype == tf.float32 else 1)
    assert relative_error(dx, lrn_reference.lrn_grad(dys, xs, **params)) < grad_tolerance


@pytest.mark.parametrize("bias", [1e-30, 2.5e-38])
def test_the_portable_lrn_with_a_tiny_bias_gives_the_formulas_value(bias):
    # rsqrt(n) * sqrt(rsqrt(n)) where n^1.5 itself would underflow: inputs small
    # enough that the bias is the norm, so each output is about x * bias^-0.75.
    x = np.zeros((1, 1, 2, 16), np.float32)
    x[0, 0, 1] = np.random.default_rng(7).standard_normal(16).astype(np.float32) * 1e-24
    params = dict(depth_radius=2, bias=float(np.float32(bias)), alpha=1.0, beta=0.75)
    y = ops.local_response_normalization_portable(x, **params).numpy()
    expected = lrn_reference.lrn(x.astype(np.float64), **params)
    assert np.abs(expected[0, 0, 1]).min() > 0
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=0)


def test_a_non_finite_square_makes_nan_of_its_pixels_other_outputs_in_the_portable_lrn():
    # The portable LRN's documented limit, where it parts from the op: a change that
    # confines the NaN to the windows should make this test the op's.
    x = np.random.default_rng(2).standard_normal((1, 1, 3, 16)).astype(np.float32)
    x[0, 0, 1, 4] = 1e20  # its square is past float32's largest value
    y = ops.local_response_normalization_portable(x).numpy()
    np.testing.assert_array_equal(y[0, 0, 1, 2:7], 0.0)  # its windows: x * inf^-beta
    assert np.isnan(np.delete(y[0, 0, 1], np.arange(2, 7))).all()  # inf * 0 in the band
    expected = lrn_reference.lrn(x.astype(np.float64), 2, 2.0, 1e-4, 0.75)
    np.testing.assert_allclose(y[0, 0, [0, 2]], expected[0, 0, [0, 2]], rtol=1e-5)


def test_the_portable_lrn_with_channels_unknown_when_traced_is_the_reference():
    x = np.random.default_rng(4).standard_normal((2, 3, 3, 12)).astype(np.float32)
    traced = tf.function(ops.local_response_normalization_portable,
                         input_signature=[tf.TensorSpec([None, None, None, None])])
    np.testing.assert_allclose(traced(x), lrn_reference.lrn(x.astype(np.float64), 2, 2.0, 1e-4,
                                                             0.75), rtol=1e-5)


def test_empty_batch_gives_empty_output_and_gradient():
    y, dx = forward_and_gradient(tf.zeros((0, 5, 5, 8)), tf.zeros((0, 5, 5, 8)))
    assert y.shape == (0, 5, 5, 8) and dx.shape == (0, 5, 5, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(depth_radius=-1), "depth_radius must be a non-negative integer, got -1"),
        (dict(bias=0.0), "bias must be > 0, got 0.0"),
        (dict(bias=-1.0), "bias must be > 0, got -1.0"),
        (dict(beta=-0.5), "beta must be >= 0, got -0.5"),
        (dict(alpha=-1e-4), "alpha must be >= 0, got -0.0001"),
        (dict(depth_radius=8), "depth_radius 8 is wider than the 8 channels"),
    ],
)
def test_bad_parameters_raise_invalid_argument(kwargs, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.local_response_normalization(tf.ones((1, 2, 2, 8)), **kwargs)


def test_bad_dtype_and_rank_raise_invalid_argument():
    with pytest.raises(tf.errors.InvalidArgumentError, match="dtype int32 is not supported"):
        ops.local_response_normalization(tf.ones((1, 2, 2, 8), tf.int32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"rank 4 \(NHWC\), got shape \(2, 8\)"):
        ops.local_response_normalization(tf.ones((2, 8)))


@pytest.mark.parametrize(
    "attrs, message",
    [
        (dict(depth_radius=-2), "depth_radius must be a non-negative integer, got -2"),
        (dict(bias=0.0), "bias must be > 0"),
        (dict(beta=-1.0), "beta must be >= 0"),
        (dict(alpha=-1.0), "alpha must be >= 0"),
    ],
)
def test_kernel_rejects_bad_attributes_itself(attrs, message):
    # The raw op, without the Python checks: the C++ kernel must refuse too.
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.load_library().alexnet_tf_local_response_norm(tf.ones((1, 2, 2, 8)), **attrs)


def test_kernel_rejects_shapes_known_only_at_run_time():
    lrn = tf.function(
        ops.local_response_normalization, input_signature=[tf.TensorSpec(None, tf.float32)]
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"must be 4-D \(NHWC\), got shape \[3,4\]"):
        lrn(tf.ones((3, 4)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="depth_radius 2 is wider than the channels"):
        lrn(tf.ones((1, 2, 2, 2)))
    grad = ops.load_library().alexnet_tf_local_response_norm_grad
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        tf.function(grad, input_signature=[tf.TensorSpec(None), tf.TensorSpec(None)])(
            tf.ones((1, 2, 2, 8)), tf.ones((1, 2, 3, 8))
        )


def _use_library_copy(tmp_path, monkeypatch, replace):
    """Points the loader at a copy of the built library with some bytes replaced."""
    (library,) = [f for f in os.listdir(ops._LIBRARY_DIR) if f.startswith("_ops") and f.endswith(".so")]
    target = tmp_path / library
    shutil.copy(os.path.join(ops._LIBRARY_DIR, library), target)
    target.write_bytes(target.read_bytes().replace(*replace))
    monkeypatch.setattr(ops, "_LIBRARY_DIR", str(tmp_path))
    ops.load_library.cache_clear()


def test_library_built_for_another_tensorflow_is_refused_with_rebuild_message(tmp_path, monkeypatch):
    stamp = f"built-for-tensorflow={tf.__version__};".encode()
    other = b"built-for-tensorflow=" + b"9" * len(tf.__version__) + b";"
    _use_library_copy(tmp_path, monkeypatch, replace=(stamp, other))
    try:
        with pytest.raises(ops.OpLibraryError, match=r"built against TensorFlow 9+.*Rebuild"):
            ops.load_library()
    finally:
        ops.load_library.cache_clear()


def test_library_built_from_older_op_sources_is_refused_with_rebuild_message(tmp_path,
                                                                              monkeypatch):
    stamp = f"alexnet_tf-ops-version={ops.OPS_VERSION};".encode()
    older = f"alexnet_tf-ops-version={ops.OPS_VERSION - 1};".encode()
    _use_library_copy(tmp_path, monkeypatch, replace=(stamp, older))
    try:
        with pytest.raises(ops.OpLibraryError,
                           match=rf"version {ops.OPS_VERSION - 1} of the ops.*Rebuild"):
            ops.load_library()
    finally:
        ops.load_library.cache_clear()


def test_missing_library_says_how_to_build(tmp_path, monkeypatch):
    monkeypatch.setattr(ops, "_LIBRARY_DIR", str(tmp_path))
    ops.load_library.cache_clear()
    try:
        with pytest.raises(ops.OpLibraryError, match="not found.*pip install --no-build-isolation"):
            ops.load_library()
    finally:
        ops.load_library.cache_clear()


@pytest.mark.parametrize("channels, depth_radius", [(8, 0), (16, 2), (32, 2), (48, 5), (64, 8)])
def test_the_blocked_float32_path_matches_the_float64_formula(channels, depth_radius):
    # float32 with channels a multiple of 8 and beta = 0.75 takes the blocked path of
    # 32 pixels at a time; 3 x 7 x 11 = 231 pixels are seven blocks and a partial one.
    rng = np.random.default_rng(channels)
    x = (np.maximum(rng.standard_normal((3, 7, 11, channels)), 0) * 40).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    params = dict(depth_radius=depth_radius, bias=2.0, alpha=1e-4, beta=0.75)
    y, dx = forward_and_gradient(tf.constant(x), tf.constant(dy), **params)
    xs, dys = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(y, lrn_reference.lrn(xs, **params), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, lrn_reference.lrn_grad(dys, xs, **params), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("convention, divisor", [("paper_text", 1), ("authors_code", 5)])
def test_the_alpha_convention_in_the_op_the_reference_and_the_layer(convention, divisor):
    rng = np.random.default_rng(3)
    x = np.maximum(rng.standard_normal((2, 4, 4, 24)), 0) * 30
    dy = rng.standard_normal(x.shape)
    alpha = 5 / 4096  # alpha and alpha / 5 are exact float32 attributes
    # The formula with alpha / n per term under the authors' convention (n = 5).
    expected = lrn_reference.lrn(x, depth_radius=2, bias=1.0, alpha=alpha / divisor, beta=0.75)
    expected_dx = lrn_reference.lrn_grad(dy, x, depth_radius=2, bias=1.0, alpha=alpha / divisor,
                                         beta=0.75)
    params = dict(depth_radius=2, bias=1.0, alpha=alpha, beta=0.75, alpha_convention=convention)
    y, dx = forward_and_gradient(tf.constant(x), tf.constant(dy), **params)
    np.testing.assert_allclose(y, expected, rtol=1e-10)
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-9, atol=1e-14)
    reference = ops.local_response_normalization_reference(tf.constant(x), **params)
    np.testing.assert_allclose(reference, expected, rtol=1e-10)
    portable = ops.local_response_normalization_portable(tf.constant(x), **params)
    np.testing.assert_allclose(portable, expected, rtol=1e-10)
    exported = layers.LocalResponseNormalization(2, 1.0, alpha, 0.75, use_reference=True,
                                                 alpha_convention=convention, dtype="float64")
    np.testing.assert_allclose(exported(tf.constant(x)), expected, rtol=1e-10)
    layer = layers.LocalResponseNormalization(2, 1.0, alpha, 0.75, alpha_convention=convention,
                                              dtype="float64")
    np.testing.assert_allclose(layer(tf.constant(x)), expected, rtol=1e-10)
    assert layers.LocalResponseNormalization.from_config(layer.get_config()).alpha_convention == (
        convention)


def test_an_unknown_alpha_convention_is_refused():
    with pytest.raises(tf.errors.InvalidArgumentError, match="alpha_convention must be one of"):
        ops.local_response_normalization(tf.ones([1, 1, 1, 8]), alpha_convention="caffe")


def lrn_gradient_op(dy, x, through_relu, **params):
    alpha = ops.alpha_per_term(params.pop("alpha"), params["depth_radius"])
    return ops.load_library().alexnet_tf_local_response_norm_grad(
        dy, x, alpha=alpha, through_relu=through_relu, **params)


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.float16, tf.bfloat16])
@pytest.mark.parametrize("channels", [5, 16, 32])
def test_gradient_through_relu_is_the_formula_times_input_above_zero(dtype, channels):
    # 16 and 32 channels of float32 take the blocked path, 5 the per-pixel one. Half
    # the inputs are exact zeros, as a ReLU leaves them.
    rng = np.random.default_rng(channels)
    x = np.maximum(rng.standard_normal((2, 5, 7, channels)), 0) * 20
    dy = rng.standard_normal(x.shape)
    # alpha as the op holds it (a float32 attribute), for the float64 comparison.
    params = dict(depth_radius=2, bias=2.0, alpha=float(np.float32(1e-4)), beta=0.75)
    xs, dys = stored(x, dtype), stored(dy, dtype)
    dx = lrn_gradient_op(tf.cast(dy, dtype), tf.cast(x, dtype), True, **params)
    expected = lrn_reference.lrn_grad(dys, xs, **params) * (xs > 0)
    assert np.mean(xs == 0) > 0.4
    assert np.all(np.asarray(tf.cast(dx, tf.float64))[xs == 0] == 0)
    assert relative_error(dx, expected) < TOLERANCE[dtype] * 4


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32, tf.float16, tf.bfloat16])
@pytest.mark.parametrize("channels, depth_radius, beta", [
    (5, 2, 0.75),    # per pixel, no full 8-wide vector
    (12, 2, 0.75),   # per pixel, one 8-wide vector and a scalar tail
    (16, 2, 0.75),   # float32: blocks of 32 pixels
    (32, 2, 0.6),    # the general power
    (24, 10, 0.75),  # a running window sum
])
def test_gradient_through_relu_has_relugrad_s_exact_values(dtype, channels, depth_radius, beta):
    # Not close: the same bits as the two ops it replaces, so a training run is the
    # same run with it or without it. Inputs include negative values, zeros, and for
    # float16 gradients that overflow to inf (inf * 0 is NaN in both).
    rng = np.random.default_rng(channels)
    x = rng.standard_normal((3, 6, 6, channels)) * 30
    x[x > 20] = 0.0
    dy = rng.standard_normal(x.shape) * (3e4 if dtype == tf.float16 else 1)
    x, dy = tf.cast(x, dtype), tf.cast(dy, dtype)
    params = dict(depth_radius=depth_radius, bias=0.5, alpha=1e-4, beta=beta)
    fused = lrn_gradient_op(dy, x, True, **params)
    apart = tf.raw_ops.ReluGrad(gradients=lrn_gradient_op(dy, x, False, **params), features=x)
    bits = {tf.float64: np.uint64, tf.float32: np.uint32}.get(dtype, np.uint16)
    fused_bits = tf.bitcast(fused, tf.as_dtype(bits)).numpy()
    apart_bits = tf.bitcast(apart, tf.as_dtype(bits)).numpy()
    if dtype == tf.float16:
        assert np.isnan(apart.numpy()).any()
    np.testing.assert_array_equal(fused_bits, apart_bits)


# ----------------------------------------------------------------------------------
# Non-finite and overflowing inputs: the op follows the formula evaluated in IEEE
# arithmetic window by window, as its standard-op reference does. A NaN or an
# infinity reaches only the outputs whose window holds it; a square that overflows
# makes its windows' norm infinite and their outputs 0 (x * inf^-beta), or NaN for
# the infinite input itself (inf * 0).


def same_values(actual, expected):
    actual, expected = (np.asarray(tf.cast(v, tf.float64)) for v in (actual, expected))
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite)
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=1e-5, atol=1e-30)


@pytest.mark.parametrize("channels,depth_radius", [(64, 10), (64, 2), (16, 8), (40, 12), (7, 3)])
@pytest.mark.parametrize("special", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [0, 5, -1])
def test_a_nan_or_infinity_reaches_only_the_windows_that_hold_it(channels, depth_radius,
                                                                  special, where):
    x = np.random.default_rng(channels).standard_normal((2, 1, 2, channels)).astype(np.float32)
    x[0, 0, 1, where] = special
    y = ops.local_response_normalization(x, depth_radius=depth_radius)
    same_values(y, ops.local_response_normalization_reference(x, depth_radius=depth_radius))
    position = where % channels
    pixel = y.numpy()[0, 0, 1]
    window = np.arange(max(0, position - depth_radius), min(channels, position + depth_radius + 1))
    if np.isnan(special):  # the window's norm is NaN
        np.testing.assert_array_equal(np.flatnonzero(np.isnan(pixel)), window)
    else:  # its norm is infinite: x * inf^-beta = 0, and inf * 0 = NaN for the input itself
        np.testing.assert_array_equal(np.flatnonzero(np.isnan(pixel)), [position])
        np.testing.assert_array_equal(pixel[np.setdiff1d(window, [position])], 0.0)
    assert np.all(np.isfinite(np.delete(pixel, window)))
    assert np.all(np.isfinite(np.delete(y.numpy(), 1, axis=2)[0]))
    assert np.all(np.isfinite(y.numpy()[1]))


@pytest.mark.parametrize("channels,depth_radius", [(16, 2), (64, 10), (24, 5)])
def test_a_square_that_overflows_gives_zeros_in_its_windows_as_the_formula(channels,
                                                                            depth_radius):
    x = np.ones((1, 1, 1, channels), np.float32)
    x[..., 5] = 1e20  # 1e40 is past float32's largest value
    y = ops.local_response_normalization(x, depth_radius=depth_radius).numpy().ravel()
    same_values(y, ops.local_response_normalization_reference(
        x, depth_radius=depth_radius).numpy().ravel())
    window = np.arange(max(0, 5 - depth_radius), min(channels, 6 + depth_radius))
    np.testing.assert_array_equal(y[window], 0.0)
    outside = np.setdiff1d(np.arange(channels), window)
    np.testing.assert_allclose(y[outside], lrn_reference.lrn(x, depth_radius, 2.0, 1e-4,
                                                             0.75).ravel()[outside], rtol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_huge_square_leaving_a_wide_window_leaves_no_residue(dtype):
    # Wide windows (radius past the direct path) must not subtract a huge square
    # from a running sum: 1e36 - 1e36 in floating point leaves the small squares
    # of the next windows swamped by its rounding.
    x = np.full((1, 1, 1, 64), 0.5, dtype)
    x[..., 0] = 1e18 if dtype == np.float32 else 1e150
    params = dict(depth_radius=10, bias=1e-6, alpha=1.0, beta=0.75)
    y = ops.local_response_normalization(x, **params).numpy().ravel()
    np.testing.assert_allclose(y, lrn_reference.lrn(x, **params).ravel(), rtol=1e-5)
    dy = np.ones_like(x)
    _, dx = forward_and_gradient(x, dy, **params)
    expected = lrn_reference.lrn_grad(dy, x, **params).ravel()[11:]
    np.testing.assert_allclose(dx.numpy().ravel()[11:], expected, rtol=1e-5,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("bias", [1e-30, 2.5e-38])
def test_a_tiny_bias_gives_the_formulas_value(bias):
    # n = bias (+ alpha * a small sum) near float32's smallest normal value, where
    # n^-3/4 and 1/n are huge: forward and gradient against the float64 formula.
    rng = np.random.default_rng(7)
    x = np.zeros((1, 1, 3, 16), np.float32)
    x[0, 0, 1] = rng.standard_normal(16).astype(np.float32) * 1e-3
    x[0, 0, 2, ::3] = 1e-12
    params = dict(depth_radius=2, bias=float(np.float32(bias)), alpha=1.0, beta=0.75)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    y, dx = forward_and_gradient(x, dy, **params)
    same_values(y, ops.local_response_normalization_reference(x, **params))
    expected = lrn_reference.lrn(x.astype(np.float64), **params)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-30)
    expected_dx = lrn_reference.lrn_grad(dy.astype(np.float64), x.astype(np.float64), **params)
    np.testing.assert_allclose(dx.numpy(), expected_dx, rtol=1e-4,
                               atol=1e-5 * np.abs(expected_dx).max())


@pytest.mark.parametrize("bias", [2e-38, 1e-40, 1e-45])
def test_the_kernel_refuses_a_subnormal_bias(bias):
    x = np.ones((1, 1, 1, 8), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must be > 0 and at least"):
        ops.load_library().alexnet_tf_local_response_norm(x, bias=bias)
