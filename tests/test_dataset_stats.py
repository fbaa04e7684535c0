"""Training-set statistics against NumPy in float64."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import ilsvrc_fixture as fx
from alexnet_tf import dataset_stats
from alexnet_tf import input_pipeline as ip
from alexnet_tf import corrupt_images

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def numpy_stats(images):
    """Mean image, pixel covariance (divided by N) and its eigenvalues, descending."""
    images = np.asarray(images, np.float64)
    pixels = images.reshape(-1, 3)
    covariance = np.cov(pixels.T, bias=True)
    return images.mean(axis=0), covariance, np.sort(np.linalg.eigvalsh(covariance))[::-1]


def random_images(count, size, seed=0):
    rng = np.random.default_rng(seed)
    # Correlated channels, as in photographs, so the components are not the axes.
    grey = rng.uniform(0, 200, (count, size, size, 1))
    colour = rng.uniform(0, 55, (count, size, size, 3)) * np.array([1.0, 0.6, 0.3])
    return np.clip(grey + colour, 0, 255).astype(np.uint8)


def assert_matches_numpy(stats, images):
    mean_image, covariance, eigenvalues = numpy_stats(images)
    assert stats.num_examples == len(images)
    assert stats.mean_image.dtype == np.float32
    np.testing.assert_allclose(stats.mean_image, mean_image, atol=1e-4)
    np.testing.assert_allclose(stats.covariance, covariance, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(
        stats.eigenvalues, eigenvalues, rtol=1e-9, atol=1e-9 * eigenvalues[0]
    )
    vectors = stats.eigenvectors
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=1e-9)
    np.testing.assert_allclose(covariance @ vectors, vectors * eigenvalues, atol=1e-6)
    for column in vectors.T:
        assert column[np.argmax(np.abs(column))] > 0


def test_stats_of_decoded_images_match_numpy():
    images = random_images(7, 8)
    examples = tf.data.Dataset.from_tensor_slices({"image": images, "label": np.zeros(7)})
    stats = dataset_stats.compute_stats(examples, image_size=8, batch_size=3, progress=False)
    assert_matches_numpy(stats, images)
    assert stats.image_size == 8
    np.testing.assert_allclose(stats.mean_rgb, images.reshape(-1, 3).mean(axis=0), atol=1e-4)


def test_stats_of_files_rescale_skip_corrupt_and_match_numpy():
    images = random_images(5, 6, seed=1)
    # A 12x18 PNG whose central 12x12 square halves to each 6x6 image exactly.
    large = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)
    large = np.concatenate(
        [np.zeros((5, 12, 3, 3), np.uint8), large, np.zeros((5, 12, 3, 3), np.uint8)], 2
    )
    files = [fx.png_bytes(image) for image in large] + [fx.GARBAGE, fx.truncated_jpeg(0)]
    examples = tf.data.Dataset.from_tensor_slices({"image": files})
    counter = corrupt_images.CorruptImageCounter()
    stats = dataset_stats.compute_stats(
        examples, image_size=6, batch_size=2, corrupt_counter=counter, progress=False
    )
    assert counter.count() == 2
    assert_matches_numpy(stats, images)


def test_random_subset_is_seeded_and_is_a_subset():
    # Flat images of values 2^i: the mean of any 3 of them names which 3 they were.
    values = 2.0 ** np.arange(8)
    images = np.broadcast_to(values[:, None, None, None], (8, 4, 4, 3)).astype(np.uint8)
    examples = tf.data.Dataset.from_tensor_slices({"image": images})

    def subset(seed):
        stats = dataset_stats.compute_stats(
            examples, image_size=4, max_examples=3, seed=seed, progress=False
        )
        chosen = int(round(stats.mean_image[0, 0, 0] * 3))
        members = [i for i in range(8) if chosen & (1 << i)]
        assert stats.num_examples == 3 and len(members) == 3
        assert_matches_numpy(stats, images[members])
        return members

    assert subset(seed=1) == subset(seed=1)
    assert len({tuple(subset(seed)) for seed in range(6)}) > 1


def stats_of(images):
    examples = tf.data.Dataset.from_tensor_slices({"image": images})
    return dataset_stats.compute_stats(examples, image_size=images.shape[1], progress=False)


def test_save_and_load_round_trip(tmp_path):
    stats = stats_of(random_images(3, 4))
    path = str(tmp_path / "stats" / "train_4.npz")
    dataset_stats.save_stats(stats, path)
    loaded = dataset_stats.load_stats(path)
    for name in ("mean_image", "covariance", "eigenvalues", "eigenvectors"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(stats, name))
    assert loaded.num_examples == 3


def test_load_fails_clearly_on_missing_and_corrupt_files(tmp_path):
    missing = str(tmp_path / "none.npz")
    with pytest.raises(FileNotFoundError, match="none.npz.*alexnet_tf.dataset_stats"):
        dataset_stats.load_stats(missing)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="corrupt.npz"):
        dataset_stats.load_stats(str(corrupt))
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, mean_image=np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="lacks covariance"):
        dataset_stats.load_stats(str(incomplete))
    wrong = tmp_path / "wrong.npz"
    np.savez(
        wrong,
        mean_image=np.zeros((4, 5, 3)),
        covariance=np.eye(3),
        eigenvalues=np.ones(3),
        eigenvectors=np.eye(3),
        num_examples=1,
    )
    with pytest.raises(ValueError, match="shapes"):
        dataset_stats.load_stats(str(wrong))


def test_command_line_writes_the_statistics_of_an_image_folder(tmp_path):
    images = random_images(4, 6, seed=2)
    for i, image in enumerate(images):
        fx.write_file(
            str(tmp_path / "data" / "train" / f"class{i % 2}" / f"{i}.png"), fx.png_bytes(image)
        )
    output = str(tmp_path / "stats.npz")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alexnet_tf.dataset_stats",
            "--dataset=image_folder",
            f"--data_dir={tmp_path / 'data'}",
            f"--output={output}",
            "--image_size=6",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr
    assert "dataset statistics" in result.stderr
    assert_matches_numpy(dataset_stats.load_stats(output), images)
