"""The paper's preprocessing and augmentation, checked against NumPy and by property.

Each op runs eagerly and inside `tf.data.Dataset.map`, where it is traced into a
graph, and both must agree with the reference.
"""

import types

import numpy as np
import pytest
import tensorflow as tf

import ilsvrc_fixture as fx
import references
from alexnet_tf import input_pipeline as ip
from alexnet_tf import corrupt_images, ops, preprocessing


def eager_and_mapped(fn, *args):
    """[fn(*args) eagerly, fn(*args) inside tf.data.Dataset.map], as NumPy."""
    args = tuple(tf.convert_to_tensor(arg) for arg in args)
    eager = tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    dataset = tf.data.Dataset.from_tensors(args).map(lambda *a: fn(*a))
    mapped = next(dataset.as_numpy_iterator())
    return [eager, mapped]


def bilinear_reference(image, size):
    """Half-pixel-centre bilinear resize of a square [n, n, C] image, in float64."""
    image = np.asarray(image, np.float64)
    n = image.shape[0]
    coords = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, n - 1)
    frac = coords - low
    rows = image[low] * (1 - frac)[:, None, None] + image[high] * frac[:, None, None]
    return rows[:, low] * (1 - frac)[None, :, None] + rows[:, high] * frac[None, :, None]


def coordinate_image(height, width):
    """float32 [H, W, 3] whose every pixel is unique: (y * W + x) * 3 + channel."""
    return np.arange(height * width * 3, dtype=np.float32).reshape(height, width, 3)


def make_stats(image_size, covariance=None, seed=0):
    rng = np.random.default_rng(seed)
    covariance = np.diag([900.0, 100.0, 25.0]) if covariance is None else covariance
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    return types.SimpleNamespace(
        mean_image=rng.uniform(0, 255, (image_size, image_size, 3)).astype(np.float32),
        eigenvalues=eigenvalues[::-1].copy(),
        eigenvectors=eigenvectors[:, ::-1].copy(),
    )


# ----------------------------------------------------------------------------------
# Rescaling and crops.


@pytest.mark.parametrize("shape, offset", [((8, 12), (0, 2)), ((12, 8), (2, 0))])
def test_resize_shorter_and_center_crop_halves_the_central_square(shape, offset):
    image = np.random.default_rng(0).uniform(0, 255, shape + (3,)).astype(np.float32)
    y, x = offset
    square = image[y : y + 8, x : x + 8].astype(np.float64)
    # Half-pixel-centre bilinear at exactly half size averages each 2x2 block.
    expected = square.reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
    for result in eager_and_mapped(lambda im: preprocessing.resize_shorter_and_center_crop(im, 4), image):
        assert result.shape == (4, 4, 3) and result.dtype == np.float32
        np.testing.assert_allclose(result, expected, atol=1e-4)


def test_resize_shorter_and_center_crop_non_integer_scale():
    image = np.random.default_rng(1).integers(0, 256, (9, 15, 3)).astype(np.uint8)
    expected = bilinear_reference(image[:, 3:12], 6)
    for result in eager_and_mapped(lambda im: preprocessing.resize_shorter_and_center_crop(im, 6), image):
        np.testing.assert_allclose(result, expected, atol=1e-3)


def test_resize_shorter_and_center_crop_keeps_an_image_of_the_right_size():
    image = np.random.default_rng(2).integers(0, 256, (5, 5, 3)).astype(np.uint8)
    for result in eager_and_mapped(lambda im: preprocessing.resize_shorter_and_center_crop(im, 5), image):
        np.testing.assert_array_equal(result, image.astype(np.float32))


def test_grey_images_become_three_equal_channels():
    grey = np.random.default_rng(3).integers(0, 256, (6, 6, 1)).astype(np.uint8)
    for result in eager_and_mapped(lambda im: preprocessing.resize_shorter_and_center_crop(im, 6), grey):
        assert result.shape == (6, 6, 3)
        for channel in range(3):
            np.testing.assert_array_equal(result[..., channel], grey[..., 0])


def test_subtract_mean():
    image = np.random.default_rng(4).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    mean = np.random.default_rng(5).uniform(0, 255, (4, 4, 3)).astype(np.float32)
    for result in eager_and_mapped(preprocessing.subtract_mean, image, mean):
        np.testing.assert_allclose(result, image.astype(np.float64) - mean, atol=1e-4)


def test_center_crop_of_an_image_and_of_a_batch():
    image = coordinate_image(7, 9)
    for result in eager_and_mapped(lambda im: preprocessing.center_crop(im, 4), image):
        np.testing.assert_array_equal(result, image[1:5, 2:6])
    batch = np.stack([image, -image])
    for result in eager_and_mapped(lambda im: preprocessing.center_crop(im, 4), batch):
        np.testing.assert_array_equal(result, batch[:, 1:5, 2:6])


def test_ten_crop_is_four_corners_centre_and_their_mirrors():
    image = coordinate_image(7, 9)
    c = 4
    corners = [image[:c, :c], image[:c, -c:], image[-c:, :c], image[-c:, -c:], image[1:5, 2:6]]
    expected = np.stack(corners + [crop[:, ::-1] for crop in corners])
    for result in eager_and_mapped(lambda im: preprocessing.ten_crop(im, c), image):
        assert result.shape == (10, c, c, 3)
        np.testing.assert_array_equal(result, expected)


def find_window(image, crop, crop_size):
    """(y, x, mirrored) of the window of `image` that `crop` equals, or None."""
    height, width = image.shape[:2]
    for y in range(height - crop_size + 1):
        for x in range(width - crop_size + 1):
            window = image[y : y + crop_size, x : x + crop_size]
            if np.array_equal(crop, window):
                return y, x, False
            if np.array_equal(crop, window[:, ::-1]):
                return y, x, True
    return None


def test_random_crop_and_flip_crops_inside_and_flips_half_the_time():
    image = coordinate_image(10, 12)
    crop_size, draws = 6, 240
    seeds = np.stack([np.full(draws, 7), np.arange(draws)], axis=1)
    crops = next(
        tf.data.Dataset.from_tensor_slices(seeds)
        .map(lambda seed: preprocessing.random_crop_and_flip(image, crop_size, seed))
        .batch(draws)
        .as_numpy_iterator()
    )
    windows = [find_window(image, crop, crop_size) for crop in crops]
    assert all(window is not None for window in windows)
    ys, xs, flips = zip(*windows)
    assert set(ys) == set(range(5)) and set(xs) == set(range(7))
    # Binomial(240, 1/2): 90..150 holds with probability > 0.9999.
    assert 90 <= sum(flips) <= 150
    for seed in seeds[:5]:
        eager, mapped = eager_and_mapped(
            lambda im, s: preprocessing.random_crop_and_flip(im, crop_size, s), image, seed
        )
        np.testing.assert_array_equal(eager, mapped)


def test_random_crop_and_flip_is_deterministic_under_a_seed():
    image = coordinate_image(10, 12)
    first = preprocessing.random_crop_and_flip(image, 4, tf.constant([1, 2])).numpy()
    again = preprocessing.random_crop_and_flip(image, 4, tf.constant([1, 2])).numpy()
    np.testing.assert_array_equal(first, again)
    others = [preprocessing.random_crop_and_flip(image, 4, tf.constant([1, s])).numpy() for s in range(3, 9)]
    assert any(not np.array_equal(first, other) for other in others)


# ----------------------------------------------------------------------------------
# PCA lighting.


COVARIANCE = np.array([[900.0, 300.0, 100.0], [300.0, 400.0, 50.0], [100.0, 50.0, 100.0]])


def lighting_offsets(scale, draws, stddev=0.1):
    eigenvalues, eigenvectors = np.linalg.eigh(COVARIANCE)
    image = np.random.default_rng(0).uniform(-50, 50, (3, 4, 3)).astype(np.float32)
    seeds = np.stack([np.full(draws, 3), np.arange(draws)], axis=1)
    lit = (
        tf.data.Dataset.from_tensor_slices(seeds)
        .map(
            lambda s: references.pca_lighting(image, eigenvalues, eigenvectors, stddev, s, scale),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        .batch(draws)
    )
    return next(lit.as_numpy_iterator()) - image


@pytest.mark.parametrize("scale", [preprocessing.LIGHTING_SQRT_EIGENVALUE, preprocessing.LIGHTING_EIGENVALUE])
def test_pca_lighting_adds_one_rgb_vector_with_the_right_covariance(scale):
    offsets = lighting_offsets(scale, draws=20000).astype(np.float64)
    # The same RGB vector on every pixel of an image.
    np.testing.assert_allclose(
        offsets, np.broadcast_to(offsets[:, :1, :1], offsets.shape), atol=1e-3
    )
    rgb = offsets[:, 0, 0]
    eigenvalues, eigenvectors = np.linalg.eigh(COVARIANCE)
    if scale == preprocessing.LIGHTING_SQRT_EIGENVALUE:
        # Cov(P diag(sqrt(l)) a) = 0.1^2 P diag(l) P^T = 0.01 * the pixel covariance.
        expected = 0.01 * COVARIANCE
    else:
        # [0, 1] pixels: eigenvalue l / 255^2, noise back in 0..255 units: times 255.
        magnitudes = eigenvalues / 255.0
        expected = 0.01 * eigenvectors @ np.diag(magnitudes**2) @ eigenvectors.T
    sample = np.cov(rgb.T, bias=True)
    # 20000 draws: the sample covariance is within a few percent of the largest entry.
    np.testing.assert_allclose(sample, expected, atol=0.04 * np.abs(expected).max())
    np.testing.assert_allclose(rgb.mean(axis=0), 0.0, atol=0.05 * np.sqrt(expected.max()))


def test_pca_lighting_eagerly_and_mapped_agree_and_follow_the_seed():
    eigenvalues, eigenvectors = np.linalg.eigh(COVARIANCE)
    image = np.zeros((2, 3, 3), np.float32)

    def light(im, seed):
        return references.pca_lighting(im, eigenvalues, eigenvectors, 0.1, seed)

    eager, mapped = eager_and_mapped(light, image, np.array([5, 6]))
    np.testing.assert_allclose(eager, mapped, atol=1e-5)
    # By hand: the same draws of a, projected on the components.
    alphas = tf.random.stateless_normal([3], [5, 6], stddev=0.1).numpy().astype(np.float64)
    expected = eigenvectors @ (alphas * np.sqrt(eigenvalues))
    np.testing.assert_allclose(eager[1, 2], expected, rtol=1e-4, atol=1e-4)
    other = light(tf.constant(image), tf.constant([5, 7])).numpy()
    assert not np.allclose(other, eager)


def test_lighting_magnitudes_on_imagenet_scale():
    # ImageNet's [0, 1] eigenvalues, as re-implementations quote them, in 0..255 units.
    unit = np.array([0.2175, 0.0188, 0.0045])
    eigenvalues = unit * 255.0**2
    np.testing.assert_allclose(
        preprocessing.lighting_magnitudes(eigenvalues, preprocessing.LIGHTING_SQRT_EIGENVALUE),
        np.sqrt(eigenvalues),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        preprocessing.lighting_magnitudes(eigenvalues, preprocessing.LIGHTING_EIGENVALUE), unit * 255.0, rtol=1e-5
    )
    with pytest.raises(ValueError, match="lighting scale"):
        preprocessing.lighting_magnitudes(eigenvalues, "sqrt")


# ----------------------------------------------------------------------------------
# Decoding.


def test_decode_converts_grey_cmyk_alpha_and_16_bit_images():
    grey = fx.smooth_image(0, 12, 10, channels=1)
    decoded = eager_and_mapped(preprocessing.decode_image, fx.png_bytes(grey))
    for result in decoded:
        np.testing.assert_array_equal(result, np.repeat(grey, 3, axis=2))

    for result in eager_and_mapped(lambda b: preprocessing.decode_image(b, "INTEGER_ACCURATE"), fx.CMYK_JPEG):
        assert result.shape == (16, 16, 3)
        for (y, x), rgb in zip([(2, 2), (2, 13), (13, 2), (13, 13)], fx.CMYK_JPEG_QUADRANTS_RGB):
            np.testing.assert_allclose(result[y, x], rgb, atol=4)

    rgba = np.random.default_rng(1).integers(0, 256, (5, 7, 4)).astype(np.uint8)
    for result in eager_and_mapped(preprocessing.decode_image, fx.png_bytes(rgba)):
        np.testing.assert_array_equal(result, rgba[..., :3])

    deep = np.array([[[0, 25700, 65535]] * 2] * 3, np.uint16)
    for result in eager_and_mapped(preprocessing.decode_image, tf.io.encode_png(deep).numpy()):
        np.testing.assert_allclose(result, np.round(deep / 257.0), atol=1)


def test_decode_crop_and_resize_decodes_only_the_crop_of_the_rescale():
    image = fx.smooth_image(2, 24, 36)
    # Central square: columns 6..30; image_size 12 halves it; the 6x6 crop at (2, 4) of
    # the rescale comes from rows 4..16, columns 14..26 of the image, 2x2-averaged.
    expected = image[4:16, 14:26].astype(np.float64).reshape(6, 2, 6, 2, 3).mean(axis=(1, 3))
    png = fx.png_bytes(image)
    jpeg = fx.jpeg_bytes(image, quality=100)
    full_jpeg = preprocessing.decode_image(jpeg, "INTEGER_ACCURATE").numpy()[4:16, 14:26]
    from_jpeg = full_jpeg.astype(np.float64).reshape(6, 2, 6, 2, 3).mean(axis=(1, 3))

    def crop(data):
        return preprocessing.decode_crop_and_resize(data, 12, 6, 2, 4, "INTEGER_ACCURATE")

    for result in eager_and_mapped(crop, png):
        np.testing.assert_allclose(result, expected, atol=1e-4)
    for result in eager_and_mapped(crop, jpeg):
        # Decoding part of a JPEG equals decoding it all, up to chroma upsampling at the edges.
        np.testing.assert_allclose(result, from_jpeg, atol=2)


def test_decode_crop_and_resize_of_the_whole_square_is_the_literal_rescale():
    image = fx.smooth_image(3, 15, 9)
    expected = bilinear_reference(image[3:12], 6)
    for result in eager_and_mapped(
        lambda b: preprocessing.decode_crop_and_resize(b, 6, 6, 0, 0), fx.png_bytes(image)
    ):
        np.testing.assert_allclose(result, expected, atol=1e-3)


def test_corrupt_images_are_skipped_and_counted_including_the_last():
    good = fx.jpeg_bytes(fx.smooth_image(4, 8, 8))
    images = [good, fx.GARBAGE, good, fx.truncated_jpeg(5), good, b"", fx.truncated_jpeg(6)]
    examples = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(7)})
    counter = corrupt_images.CorruptImageCounter()
    labels = [e["label"] for e in corrupt_images.decode_examples(examples, counter).as_numpy_iterator()]
    assert labels == [0, 2, 4]
    assert counter.count() == 4
    labels = [e["label"] for e in corrupt_images.decode_examples(examples, counter).as_numpy_iterator()]
    assert labels == [0, 2, 4] and counter.count() == 8


# ----------------------------------------------------------------------------------
# Training and evaluation datasets.


def smooth_examples(count, height, width, encode):
    images = [fx.smooth_image(10 + i, height, width) for i in range(count)]
    data = [encode(image) for image in images] if encode else images
    return images, tf.data.Dataset.from_tensor_slices(
        {"image": tf.constant(data) if encode else np.stack(data), "label": np.arange(count)}
    )


def test_train_fast_path_matches_the_literal_steps():
    image_size, crop_size = 32, 24
    stats = make_stats(image_size)
    images, encoded = smooth_examples(6, 48, 64, encode=fx.png_bytes)
    _, decoded = smooth_examples(6, 48, 64, encode=None)
    kwargs = dict(batch_size=3, image_size=image_size, crop_size=crop_size, seed=4, num_epochs=2)
    fast = list(ip.make_train_dataset(encoded, stats, **kwargs).as_numpy_iterator())
    literal = list(ip.make_train_dataset(decoded, stats, **kwargs).as_numpy_iterator())
    # 48 -> 32 is a 1.5x rescale. The fast path decodes the crop's source window, rounded
    # to whole pixels, and resizes it: the same crop sampled on a grid shifted by at most
    # half a source pixel along each axis, which moves a value by at most half the
    # image's steepest step per pixel along each axis.
    steps = np.abs(np.diff(np.stack(images).astype(np.float64), axis=1)).max()
    steps += np.abs(np.diff(np.stack(images).astype(np.float64), axis=2)).max()
    assert len(fast) == len(literal) == 4
    for (fast_images, fast_labels), (literal_images, labels) in zip(fast, literal):
        assert fast_images.shape == (3, crop_size, crop_size, 3) and fast_images.dtype == np.float32
        assert fast_labels.dtype == np.int32
        np.testing.assert_array_equal(fast_labels, labels)
        assert np.abs(fast_images - literal_images).max() <= 0.5 * steps + 1e-3


def test_train_mean_crop_follows_the_image_crop_and_mirror():
    image_size, crop_size = 12, 8
    stats = make_stats(image_size, seed=1)
    value = np.float32(90.0)
    flat = np.full((image_size, image_size, 3), value, np.uint8)
    for examples in (
        tf.data.Dataset.from_tensor_slices({"image": [fx.png_bytes(flat)] * 16, "label": [0] * 16}),
        tf.data.Dataset.from_tensor_slices({"image": np.stack([flat] * 16), "label": [0] * 16}),
    ):
        dataset = ip.make_train_dataset(
            examples, stats, 16, image_size, crop_size, lighting=preprocessing.LIGHTING_NONE, num_epochs=1
        )
        images, _ = next(dataset.as_numpy_iterator())
        seen = set()
        for crop in images:
            window = find_window(value - stats.mean_image, crop, crop_size)
            assert window is not None
            seen.add(window)
        assert len(seen) > 4 and {mirrored for _, _, mirrored in seen} == {False, True}


@pytest.mark.parametrize("encode", [fx.png_bytes, None])
def test_train_without_crops_and_mirrors_gives_the_centre_crop_with_its_lighting(encode):
    image_size, crop_size = 10, 6
    stats = make_stats(image_size, seed=3)
    images, examples = smooth_examples(4, image_size, image_size, encode=encode)
    kwargs = dict(image_size=image_size, crop_size=crop_size, seed=5, num_epochs=1,
                  shuffle_buffer=0, crops_and_mirrors=False)
    unlit, _ = next(ip.make_train_dataset(examples, stats, 4, lighting=preprocessing.LIGHTING_NONE,
                                          **kwargs).as_numpy_iterator())
    lit, labels = next(ip.make_train_dataset(examples, stats, 4, **kwargs).as_numpy_iterator())
    np.testing.assert_array_equal(labels, [0, 1, 2, 3])
    basis = preprocessing.lighting_basis(stats.eigenvalues, stats.eigenvectors,
                                         preprocessing.LIGHTING_SQRT_EIGENVALUE)
    for index, (image, plain, shifted) in enumerate(zip(images, unlit, lit)):
        # The centre 6x6 of the 10x10 image, the mean image's centre subtracted, unmirrored.
        expected = image.astype(np.float64)[2:8, 2:8] - stats.mean_image[2:8, 2:8]
        np.testing.assert_allclose(plain, expected, atol=1e-3)
        # The lighting adds the image's own draw, the one it gets with crops and mirrors.
        _, _, rgb = ops.augmentation_draws(index, basis, 5, image_size, crop_size,
                                           preprocessing.PAPER_LIGHTING_STDDEV)
        assert np.abs(rgb.numpy()).max() > 1e-2
        np.testing.assert_allclose(shifted - plain, np.broadcast_to(rgb, plain.shape), atol=1e-3)


def test_train_draws_new_augmentation_each_epoch_and_repeats_under_a_seed():
    stats = make_stats(16)
    _, examples = smooth_examples(1, 20, 20, encode=fx.png_bytes)

    def batches(seed):
        dataset = ip.make_train_dataset(examples, stats, 1, 16, 12, seed=seed, num_epochs=3)
        return [images for images, _ in dataset.as_numpy_iterator()]

    first = batches(seed=0)
    assert len(first) == 3
    assert not np.allclose(first[0], first[1]) and not np.allclose(first[1], first[2])
    for a, b in zip(first, batches(seed=0)):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], batches(seed=1)[0])


def test_train_on_small_grey_images():
    grey = np.random.default_rng(0).integers(0, 256, (10, 28, 28, 1)).astype(np.uint8)
    examples = tf.data.Dataset.from_tensor_slices({"image": grey, "label": np.arange(10)})
    dataset = ip.make_train_dataset(
        examples, make_stats(32), 5, image_size=32, crop_size=28, num_epochs=1
    )
    shapes = [(images.shape, labels.shape) for images, labels in dataset.as_numpy_iterator()]
    assert shapes == [((5, 28, 28, 3), (5,))] * 2


def test_train_and_eval_datasets_run_without_the_autotuning_thread():
    # Destroying an iterator that has one can wait up to a minute for it to wake.
    grey = np.zeros((4, 28, 28, 1), np.uint8)
    examples = tf.data.Dataset.from_tensor_slices({"image": grey, "label": np.arange(4)})
    train = ip.make_train_dataset(examples, make_stats(32), 2, image_size=32, crop_size=28)
    evaluation = ip.make_eval_dataset(examples, make_stats(32), 2, 32, 28)
    for dataset in (train, evaluation):
        assert dataset.options().autotune.enabled is False
        assert dataset.options().threading.max_intra_op_parallelism == 1
    assert [labels.tolist() for _, labels in evaluation.as_numpy_iterator()] == [[0, 1], [2, 3]]


def corrupt_examples():
    """Five examples, labels 0..4, of which 1 and 3 do not decode."""
    good = fx.png_bytes(fx.smooth_image(0, 20, 24))
    images = [good, fx.GARBAGE, good, fx.truncated_jpeg(1), good]
    return tf.data.Dataset.from_tensor_slices({"image": images, "label": np.arange(5)})


def test_train_skips_corrupt_images_without_stopping():
    counter = corrupt_images.CorruptImageCounter()
    dataset = ip.make_train_dataset(
        corrupt_examples(),
        make_stats(16),
        1,
        16,
        12,
        num_epochs=2,
        corrupt_counter=counter,
        shuffle_buffer=0,
    )
    labels = [int(labels[0]) for _, labels in dataset.as_numpy_iterator()]
    assert labels == [0, 2, 4, 0, 2, 4]
    assert counter.count() == 4


def test_train_counts_corrupt_images_across_batches_and_drops_the_remainder():
    counter = corrupt_images.CorruptImageCounter()
    dataset = ip.make_train_dataset(
        corrupt_examples(),
        make_stats(16),
        4,
        16,
        12,
        num_epochs=3,
        corrupt_counter=counter,
        shuffle_buffer=0,
    )
    batches = [labels.tolist() for _, labels in dataset.as_numpy_iterator()]
    # 9 good images in 3 passes: two full batches of 4; the last image is dropped.
    assert batches == [[0, 2, 4, 0], [2, 4, 0, 2]]
    assert dataset.element_spec[0].shape == (4, 12, 12, 3)
    assert counter.count() == 6


def test_train_endless_stream_keeps_counting():
    counter = corrupt_images.CorruptImageCounter()
    dataset = ip.make_train_dataset(
        corrupt_examples(), make_stats(16), 3, 16, 12, corrupt_counter=counter, shuffle_buffer=0
    )
    batches = [labels.tolist() for _, labels in dataset.take(4).as_numpy_iterator()]
    assert batches == [[0, 2, 4]] * 4
    # Counted as the pipeline reaches them, which prefetching may put a few batches ahead.
    assert counter.count() >= 8


def test_eval_counts_a_corrupt_last_image_and_keeps_the_partial_batch():
    good = fx.png_bytes(fx.smooth_image(0, 16, 16))
    examples = tf.data.Dataset.from_tensor_slices(
        {"image": [good, fx.GARBAGE, good, good, fx.truncated_jpeg(2)], "label": np.arange(5)}
    )
    counter = corrupt_images.CorruptImageCounter()
    dataset = ip.make_eval_dataset(examples, make_stats(16), 2, 16, 12, corrupt_counter=counter)
    batches = [labels.tolist() for _, labels in dataset.as_numpy_iterator()]
    assert batches == [[0, 2], [3]]
    assert counter.count() == 2
    batches = [labels.tolist() for _, labels in dataset.as_numpy_iterator()]
    assert batches == [[0, 2], [3]] and counter.count() == 4


def test_train_rejects_statistics_of_another_size():
    _, examples = smooth_examples(2, 20, 20, encode=fx.png_bytes)
    with pytest.raises(ValueError, match="image_size=32"):
        ip.make_train_dataset(examples, make_stats(16), 2, image_size=32, crop_size=28)
    with pytest.raises(ValueError, match="lighting"):
        ip.make_train_dataset(examples, make_stats(16), 2, 16, 12, lighting="pca")


@pytest.mark.parametrize("encode", [fx.png_bytes, None])
def test_eval_centre_and_ten_crops(encode):
    image_size, crop_size = 10, 6
    stats = make_stats(image_size, seed=2)
    mean = stats.mean_image.astype(np.float64)
    images, examples = smooth_examples(3, image_size, image_size, encode=encode)
    centre = list(
        ip.make_eval_dataset(examples, stats, 2, image_size, crop_size).as_numpy_iterator()
    )
    ten = list(
        ip.make_eval_dataset(
            examples, stats, 2, image_size, crop_size, ten_crop=True
        ).as_numpy_iterator()
    )
    assert [b[0].shape for b in centre] == [(2, 6, 6, 3), (1, 6, 6, 3)]
    assert [b[0].shape for b in ten] == [(2, 10, 6, 6, 3), (1, 10, 6, 6, 3)]
    centre_images = np.concatenate([b[0] for b in centre])
    ten_images = np.concatenate([b[0] for b in ten])
    np.testing.assert_array_equal(np.concatenate([b[1] for b in ten]), [0, 1, 2])
    for image, centre_crop, crops in zip(images, centre_images, ten_images):
        shifted = image.astype(np.float64) - mean
        np.testing.assert_allclose(centre_crop, shifted[2:8, 2:8], atol=1e-3)
        corners = [
            shifted[:6, :6],
            shifted[:6, 4:],
            shifted[4:, :6],
            shifted[4:, 4:],
            shifted[2:8, 2:8],
        ]
        expected = np.stack(corners + [c[:, ::-1] for c in corners])
        np.testing.assert_allclose(crops, expected, atol=1e-3)
