"""IDX parsing and image-folder writing against by-hand data."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import prepare_data


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_layout_becomes_an_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    source = tmp_path / "idx"
    source.mkdir()
    splits = {"train": (7, "train"), "val": (3, "t10k")}
    expected = {}
    for split, (count, prefix) in splits.items():
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels)
        expected[split] = (images, labels)

    prepare_data.prepare_fashion_mnist(str(tmp_path / "out"), str(source))

    for split, (images, labels) in expected.items():
        for index, (image, label) in enumerate(zip(images, labels)):
            name = prepare_data.FASHION_MNIST_CLASSES[label]
            path = tmp_path / "out" / split / name / f"{index:06d}.png"
            decoded = tf.io.decode_png(tf.io.read_file(str(path))).numpy()
            np.testing.assert_array_equal(decoded[..., 0], image)
        assert sum(len(files) for _, _, files in os.walk(tmp_path / "out" / split)) == len(images)


def test_missing_and_malformed_idx_files_are_named(tmp_path):
    with pytest.raises(prepare_data.PrepareError, match="not found.*train-images-idx3-ubyte.gz"):
        prepare_data.prepare_fashion_mnist(str(tmp_path / "out"), str(tmp_path))
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x0D, 1) + struct.pack(">I", 2) + b"\0" * 8)
    with pytest.raises(prepare_data.PrepareError, match="not an IDX file of unsigned bytes"):
        prepare_data.read_idx(str(bad))
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, 1) + struct.pack(">I", 5) + b"\1\2")
    with pytest.raises(prepare_data.PrepareError, match="holds 2 values; its header says"):
        prepare_data.read_idx(str(short))


def test_synthetic_classes_differ_in_colour():
    images, labels = prepare_data.synthetic_images(6, num_classes=4, size=16)
    assert images.shape == (24, 16, 16, 3) and images.dtype == np.uint8
    means = np.stack([images[labels == k].reshape(-1, 3).mean(0) for k in range(4)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(4, dtype=bool)].min() > 20
