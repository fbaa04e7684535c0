"""The fused training-crop op against the formula in NumPy float64 and against TensorFlow."""

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import ops

# Sampling positions are computed in float32 by the op and by TensorFlow's resize; a
# position one float32 ulp apart at coordinate ~300 moves a value by up to 255 * 3e-5.
ATOL = 0.02


def bilinear_half_pixel(image, size):
    """float64 bilinear resize to [size, size] with half-pixel centres, clamped at edges."""
    image = image.astype(np.float64)

    def taps(n_in):
        position = (np.arange(size) + 0.5) * n_in / size - 0.5
        lower = np.floor(position)
        upper = np.minimum(np.ceil(position), n_in - 1).astype(int)
        return np.maximum(lower, 0).astype(int), upper, position - lower

    y0, y1, wy = taps(image.shape[0])
    x0, x1, wx = taps(image.shape[1])
    wx = wx[None, :, None]
    top = image[y0][:, x0] + (image[y0][:, x1] - image[y0][:, x0]) * wx
    bottom = image[y1][:, x0] + (image[y1][:, x1] - image[y1][:, x0]) * wx
    return top + (bottom - top) * wy[:, None, None]


def expected(region, size, mean, offset, flip, rgb):
    y, x = offset
    crop = bilinear_half_pixel(region, size) - mean[y : y + size, x : x + size].astype(np.float64)
    if flip:
        crop = crop[:, ::-1]
    return crop + np.asarray(rgb, np.float64)


CASES = [
    # (region height, width, size): the paper's downscale, a non-square region,
    # no resize, upscales, a one-pixel region.
    (328, 328, 224),
    (300, 281, 224),
    (224, 224, 224),
    (10, 37, 16),
    (5, 9, 20),
    (1, 1, 4),
]


@pytest.mark.parametrize("height,width,size", CASES)
@pytest.mark.parametrize("flip", [False, True])
def test_matches_float64_formula_and_tensorflow(height, width, size, flip):
    rng = np.random.default_rng(height * 1000 + width + flip)
    region = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (size + 6, size + 9, 3)).astype(np.float32)
    offset = (int(rng.integers(0, 7)), int(rng.integers(0, 10)))
    rgb = rng.normal(0, 20, 3).astype(np.float32)

    got = ops.resize_flip_and_normalize(region, size, mean, offset, flip, rgb).numpy()

    assert got.shape == (size, size, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected(region, size, mean, offset, flip, rgb), atol=ATOL)
    reference = ops.resize_flip_and_normalize_reference(region, size, mean, offset, flip, rgb)
    np.testing.assert_allclose(got, reference.numpy(), atol=ATOL)


def test_identity_size_is_exact():
    # Same size, zero mean and rgb: the crop is the region's pixels, mirrored.
    region = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    out = ops.resize_flip_and_normalize(
        region, 4, np.zeros((4, 4, 3), np.float32), (0, 0), True, np.zeros(3, np.float32)
    ).numpy()
    np.testing.assert_array_equal(out, region[:, ::-1].astype(np.float32))


def test_in_tf_data_map_and_tf_function_equals_eager():
    rng = np.random.default_rng(3)
    regions = rng.integers(0, 256, (4, 40, 30, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (24, 24, 3)).astype(np.float32)

    def crop(region, flip):
        return ops.resize_flip_and_normalize(region, 20, mean, [2, 3], flip, [1.0, 2.0, 3.0])

    flips = np.array([True, False, True, False])
    mapped = list(tf.data.Dataset.from_tensor_slices((regions, flips)).map(crop))
    traced = tf.function(crop)
    for region, flip, out in zip(regions, flips, mapped):
        eager = crop(region, flip).numpy()
        np.testing.assert_array_equal(out.numpy(), eager)
        np.testing.assert_array_equal(traced(region, flip).numpy(), eager)
        np.testing.assert_allclose(
            eager, expected(region, 20, mean, (2, 3), flip, [1, 2, 3]), atol=ATOL
        )


@pytest.mark.parametrize(
    "region,mean,offset,rgb,message",
    [
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3)), (0, 0), np.zeros(3), "region"),
        (np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3)), (0, 0), np.zeros(3), "region"),
        (np.zeros((0, 8, 3), np.uint8), np.zeros((8, 8, 3)), (0, 0), np.zeros(3), "non-empty"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)), (0, 0), np.zeros(3), "mean_image"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3)), (1, 0), np.zeros(3), "does not fit"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3)), (0, -1), np.zeros(3), "does not fit"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3)), (0, 0), np.zeros(4), "rgb"),
    ],
)
def test_bad_inputs_name_the_problem(region, mean, offset, rgb, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.resize_flip_and_normalize(
            region, 8, mean.astype(np.float32), offset, False, rgb.astype(np.float32)
        )
