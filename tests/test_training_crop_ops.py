"""The fused training-crop ops against the formula in NumPy float64 and against TensorFlow."""

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import references
from alexnet_tf import input_pipeline, ops
from alexnet_tf import preprocessing

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
    reference = references.resize_flip_and_normalize(region, size, mean, offset, flip, rgb)
    np.testing.assert_allclose(got, reference.numpy(), atol=ATOL)


@pytest.mark.parametrize("flip", [False, True])
def test_crop_at_the_mean_images_last_pixel(flip):
    # The crop ends on the mean image's last row and column, and the region's last
    # pixel is sampled: the vectorised edges must not read or write past either.
    rng = np.random.default_rng(11)
    region = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    mean = rng.uniform(0, 255, (24, 26, 3)).astype(np.float32)
    rgb = np.array([3.0, -2.0, 1.0], np.float32)

    got = ops.resize_flip_and_normalize(region, 20, mean, (4, 6), flip, rgb).numpy()

    np.testing.assert_allclose(got, expected(region, 20, mean, (4, 6), flip, rgb), atol=ATOL)


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


# ----------------------------------------------------------------------------------
# The same crop straight from a JPEG's bytes.


def jpeg_bytes(height, width, mode="RGB", seed=0, **save_options):
    rng = np.random.default_rng(seed)
    smooth = tf.image.resize(rng.uniform(0, 255, (1, 6, 8, 3)), [height, width]).numpy()[0]
    pixels = np.clip(smooth + rng.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **save_options)
    return buffer.getvalue()


def composed(contents, size, mean, offset, flip, rgb, dct_method):
    """The op's meaning: the pipeline's window decode, then the region op."""
    region = preprocessing.decode_crop_region(
        contents, mean.shape[0], size, offset[0], offset[1], dct_method
    )
    return ops.resize_flip_and_normalize(region, size, mean, offset, flip, rgb).numpy()


JPEGS = {
    "landscape": lambda: jpeg_bytes(375, 500),
    "portrait": lambda: jpeg_bytes(500, 333, seed=1),
    "square": lambda: jpeg_bytes(256, 256, seed=2),
    "smaller than the crop": lambda: jpeg_bytes(90, 120, seed=3),
    "grey": lambda: jpeg_bytes(200, 260, "L", seed=4),
    "cmyk": lambda: jpeg_bytes(180, 240, "CMYK", seed=5),
    "progressive": lambda: jpeg_bytes(300, 400, seed=6, progressive=True),
    "exif and restart markers": lambda: jpeg_bytes(
        260, 300, seed=7, exif=b"Exif\x00\x00" + bytes(300), restart_marker_rows=2
    ),
}


@pytest.mark.parametrize("name", sorted(JPEGS))
@pytest.mark.parametrize("dct_method", ["INTEGER_FAST", "INTEGER_ACCURATE", ""])
def test_jpeg_op_equals_window_decode_then_region_op(name, dct_method):
    contents = JPEGS[name]()
    rng = np.random.default_rng(len(contents))
    mean = rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)
    # Corners of the 64-square rescale and a point inside, both mirrors.
    for offset, flip in [((0, 0), False), ((16, 16), True), ((0, 16), True), ((7, 3), False)]:
        rgb = rng.normal(0, 20, 3).astype(np.float32)
        got = ops.decode_jpeg_crop_flip_and_normalize(
            contents, 48, mean, offset, flip, rgb, dct_method
        ).numpy()
        assert got.shape == (48, 48, 3) and got.dtype == np.float32
        np.testing.assert_array_equal(
            got, composed(contents, 48, mean, offset, flip, rgb, dct_method)
        )


def test_jpeg_op_in_tf_data_map_equals_eager():
    contents = [jpeg_bytes(120, 160, seed=s) for s in range(3)]
    mean = np.full((32, 32, 3), 100.0, np.float32)

    def crop(jpeg, flip):
        return ops.decode_jpeg_crop_flip_and_normalize(jpeg, 24, mean, [8, 3], flip, [1.0, 2, 3])

    flips = [True, False, True]
    mapped = list(tf.data.Dataset.from_tensor_slices((contents, flips)).map(crop))
    for jpeg, flip, out in zip(contents, flips, mapped):
        np.testing.assert_array_equal(out.numpy(), crop(jpeg, flip).numpy())


@pytest.mark.parametrize(
    "contents,mean_shape,message",
    [
        (b"", (32, 32, 3), "Invalid JPEG data"),
        (b"not an image at all", (32, 32, 3), "Invalid JPEG data"),
        ("png", (32, 32, 3), "Invalid JPEG data"),
        ("truncated", (32, 32, 3), "Invalid JPEG data"),
        ("jpeg", (32, 40, 3), "square"),
        ("jpeg", (32, 32), "mean_image"),
    ],
)
def test_jpeg_op_bad_inputs_name_the_problem(contents, mean_shape, message):
    jpeg = jpeg_bytes(60, 80)
    contents = {
        "png": tf.io.encode_png(np.zeros((40, 40, 3), np.uint8)).numpy(),
        "truncated": jpeg[: len(jpeg) // 2],
        "jpeg": jpeg,
    }.get(contents, contents)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.decode_jpeg_crop_flip_and_normalize(
            contents, 24, np.zeros(mean_shape, np.float32), (0, 0), False, np.zeros(3, np.float32)
        )


# ----------------------------------------------------------------------------------
# An image's random choices in one op.


@pytest.mark.parametrize("seed", [0, 7, -3, 2**40 + 1])
@pytest.mark.parametrize("image_size,crop_size", [(256, 224), (64, 48), (30, 30)])
def test_augmentation_draws_equal_tensorflows_stateless_draws(seed, image_size, crop_size):
    rng = np.random.default_rng(abs(seed) % 1000 + image_size)
    basis = rng.normal(0, 30, (3, 3)).astype(np.float32)
    for index in [0, 1, 2, 99, 12345, 2**33 + 5]:
        offset, flip, rgb = ops.augmentation_draws(index, basis, seed, image_size, crop_size, 0.1)

        crop_seed, lighting_seed = preprocessing.augmentation_seeds(seed, index)
        offset_y, offset_x, want_flip = preprocessing.random_crop_window(
            image_size, image_size, crop_size, crop_seed
        )
        assert offset.numpy().tolist() == [int(offset_y), int(offset_x)]
        assert bool(flip) == bool(want_flip)
        alphas = tf.random.stateless_normal([3], lighting_seed, stddev=0.1).numpy()
        np.testing.assert_allclose(
            rgb.numpy(), alphas.astype(np.float64) @ basis.astype(np.float64), rtol=1e-5,
            atol=1e-5,
        )


def test_augmentation_draws_cover_every_offset_and_both_mirrors():
    # 8 - 5 + 1 = 4 offsets per axis, uniformly; a fair coin.
    draws = [ops.augmentation_draws(i, np.zeros((3, 3)), 1, 8, 5, 0.1) for i in range(4000)]
    offsets = np.array([offset.numpy() for offset, _, _ in draws])
    flips = np.array([bool(flip) for _, flip, _ in draws])
    for axis in range(2):
        counts = np.bincount(offsets[:, axis], minlength=4)
        assert counts.size == 4 and np.all(np.abs(counts - 1000) < 120), counts
    assert abs(flips.mean() - 0.5) < 0.04
    assert all(np.all(rgb.numpy() == 0) for _, _, rgb in draws[:50])


def test_augmentation_draws_reject_a_crop_larger_than_the_image():
    with pytest.raises(tf.errors.InvalidArgumentError, match="crop_size 9 must be at most"):
        ops.augmentation_draws(0, np.zeros((3, 3)), 0, 8, 9, 0.1)


def test_jpeg_op_refuses_an_unknown_dct_method_as_tensorflow_does():
    jpeg = jpeg_bytes(60, 80)
    mean = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="dct_method"):
        tf.io.decode_jpeg(jpeg, dct_method="INTEGER_SLOW")
    with pytest.raises(tf.errors.InvalidArgumentError, match="dct_method must be"):
        ops.decode_jpeg_crop_flip_and_normalize(jpeg, 24, mean, (0, 0), False, np.zeros(3),
                                                dct_method="INTEGER_SLOW")


# ----------------------------------------------------------------------------------
# Hostile arguments: each in a subprocess, where a crash shows as a signal.

HOSTILE_CALL = textwrap.dedent("""
    import io, sys
    import numpy as np, tensorflow as tf
    from alexnet_tf import ops
    call = sys.argv[1]
    try:
        if call.startswith("resize"):
            size, oy, ox = (int(v) for v in call.split(":")[1:])
            ops.resize_flip_and_normalize(np.zeros((8, 8, 3), np.uint8), size,
                                          np.zeros((8, 8, 3), np.float32), [oy, ox], False,
                                          np.zeros(3, np.float32))
        else:
            size, oy, ox = (int(v) for v in call.split(":")[1:])
            jpeg = tf.io.encode_jpeg(np.full((16, 16, 3), 128, np.uint8)).numpy()
            ops.decode_jpeg_crop_flip_and_normalize(jpeg, size, np.zeros((64, 64, 3), np.float32),
                                                    [oy, ox], False, np.zeros(3, np.float32))
    except tf.errors.InvalidArgumentError as e:
        print("refused:", e.message.split(" [Op")[0])
""")


@pytest.mark.parametrize("call", [
    # An offset near 2^31 plus the size wrapped around the bounds check.
    "resize:1:2147483647:0", "resize:1:0:2147483647", "resize:4:2147483644:0",
    "resize:8:0:2147483641", "jpeg:2:0:2147483647", "jpeg:2:2147483647:0",
])
def test_offsets_near_2_to_the_31_are_refused_not_a_crash(call):
    result = subprocess.run([sys.executable, "-c", HOSTILE_CALL, call], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-2000:]}"
    assert "does not fit in mean_image" in result.stdout


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_crop_ops_refuse_a_lighting_vector_that_is_not_finite(bad):
    rgb = np.array([0.0, bad, 1.0], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rgb must be finite"):
        ops.resize_flip_and_normalize(np.zeros((8, 8, 3), np.uint8), 4,
                                      np.zeros((8, 8, 3), np.float32), [0, 0], False, rgb)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rgb must be finite"):
        ops.decode_jpeg_crop_flip_and_normalize(jpeg_bytes(40, 40), 4,
                                                np.zeros((8, 8, 3), np.float32), [0, 0], False,
                                                rgb)


@pytest.mark.parametrize("stddev", [np.nan, np.inf, -np.inf, -0.1])
def test_augmentation_draws_refuse_a_lighting_stddev_that_is_not_finite(stddev):
    with pytest.raises(tf.errors.InvalidArgumentError, match="lighting_stddev must be finite"):
        ops.augmentation_draws(0, np.eye(3), 0, 8, 5, stddev)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_augmentation_draws_refuse_a_lighting_basis_that_is_not_finite(bad):
    basis = np.eye(3)
    basis[1, 2] = bad
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"lighting_basis must be finite.*\[1, 2\]"):
        ops.augmentation_draws(0, basis, 0, 8, 5, 0.1)


@pytest.mark.parametrize("index", [-1, 2**62, 2**63 - 1])
def test_augmentation_draws_refuse_an_index_whose_seeds_would_overflow(index):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"index must be in \[0, 2\^62\)"):
        ops.augmentation_draws(index, np.eye(3), 0, 8, 5, 0.1)
