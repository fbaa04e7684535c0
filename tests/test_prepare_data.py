"""IDX parsing and image-folder writing against by-hand data."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import prepare_data
from alexnet_tf import data


def write_idx(path, array):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(source, rng, train_count=40, test_count=6):
    """Random IDX files in Fashion-MNIST's layout; returns {prefix: (images, labels)}."""
    source.mkdir()
    written = {}
    for prefix, count in (("train", train_count), ("t10k", test_count)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", labels)
        written[prefix] = (images, labels)
    return written


def folder_contents(root):
    """{file stem: (class folder, pixels)} of an image folder split."""
    found = {}
    for class_name in os.listdir(root):
        for name in os.listdir(root / class_name):
            pixels = tf.io.decode_png(tf.io.read_file(str(root / class_name / name))).numpy()
            found[name[:-4]] = (class_name, pixels[..., 0])
    return found


def test_fashion_mnist_becomes_train_val_and_test_folders(tmp_path):
    written = write_fashion_mnist(tmp_path / "idx", np.random.default_rng(0))
    counts = prepare_data.prepare_fashion_mnist(str(tmp_path / "out"), str(tmp_path / "idx"),
                                                val_per_class=2)
    assert counts == {"train": 20, "val": 20, "test": 6}
    splits = {split: folder_contents(tmp_path / "out" / split) for split in counts}
    # val/ holds two training images of each class, train/ the other twenty, test/ the
    # test images: every file is the IDX image of its index, under its label's class.
    assert not set(splits["train"]) & set(splits["val"])
    assert set(splits["train"]) | set(splits["val"]) == {f"{i:06d}" for i in range(40)}
    for split, prefix in (("train", "train"), ("val", "train"), ("test", "t10k")):
        images, labels = written[prefix]
        for stem, (class_name, pixels) in splits[split].items():
            assert class_name == prepare_data.FASHION_MNIST_CLASSES[labels[int(stem)]]
            np.testing.assert_array_equal(pixels, images[int(stem)])
    val_labels = [c for c, _ in splits["val"].values()]
    assert sorted(val_labels) == sorted(list(prepare_data.FASHION_MNIST_CLASSES) * 2)


def test_fashion_mnist_training_subset_and_seed(tmp_path):
    write_fashion_mnist(tmp_path / "idx", np.random.default_rng(0), train_count=60)
    subset = prepare_data.prepare_fashion_mnist(
        str(tmp_path / "a"), str(tmp_path / "idx"), seed=1, train_per_class=3, val_per_class=1)
    assert subset == {"train": 30, "val": 10, "test": 6}
    train = folder_contents(tmp_path / "a" / "train")
    assert sorted(c for c, _ in train.values()) == sorted(
        list(prepare_data.FASHION_MNIST_CLASSES) * 3)
    again = prepare_data.prepare_fashion_mnist(
        str(tmp_path / "b"), str(tmp_path / "idx"), seed=1, train_per_class=3, val_per_class=1)
    assert again == subset
    assert set(folder_contents(tmp_path / "b" / "train")) == set(train)
    other = prepare_data.prepare_fashion_mnist(
        str(tmp_path / "c"), str(tmp_path / "idx"), seed=2, train_per_class=3, val_per_class=1)
    assert set(folder_contents(tmp_path / "c" / "train")) != set(train)


def test_output_is_replaced_only_if_prepared_here(tmp_path):
    write_fashion_mnist(tmp_path / "idx", np.random.default_rng(0))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(prepare_data.PrepareError, match="not written by alexnet_tf.prepare_data"):
        prepare_data.prepare_fashion_mnist(str(mine), str(tmp_path / "idx"), val_per_class=2)
    assert os.listdir(mine) == ["notes.txt"]
    assert not [p for p in os.listdir(tmp_path) if "partial" in p]
    out = str(tmp_path / "out")
    prepare_data.prepare_fashion_mnist(out, str(tmp_path / "idx"), val_per_class=2)
    assert prepare_data.prepare_fashion_mnist(out, str(tmp_path / "idx"), val_per_class=1)[
        "val"] == 10


def test_an_output_that_may_not_be_replaced_is_refused_before_any_work(tmp_path, monkeypatch):
    write_fashion_mnist(tmp_path / "idx", np.random.default_rng(0))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "class_0").mkdir()

    def must_not_write(*args, **kwargs):
        raise AssertionError("images were written for an output that is refused")

    monkeypatch.setattr(data, "write_image_folder", must_not_write)
    for prepare in (lambda: prepare_data.prepare_fashion_mnist(str(mine), str(tmp_path / "idx")),
                    lambda: prepare_data.prepare_synthetic(str(mine))):
        with pytest.raises(prepare_data.PrepareError, match="not written by"):
            prepare()
    assert os.listdir(mine) == ["class_0"]


def test_synthetic_output_follows_the_same_replace_rule(tmp_path):
    out = tmp_path / "synthetic"
    assert prepare_data.prepare_synthetic(str(out)) == {"train": 96, "val": 32}
    assert sorted(os.listdir(out)) == ["prepared.json", "train", "val"]
    assert len(os.listdir(out / "train" / "class_3")) == 24
    assert prepare_data.prepare_synthetic(str(out)) == {"train": 96, "val": 32}


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
    images, labels = data.synthetic_images(6, num_classes=4, size=16)
    assert images.shape == (24, 16, 16, 3) and images.dtype == np.uint8
    means = np.stack([images[labels == k].reshape(-1, 3).mean(0) for k in range(4)])
    distances = np.linalg.norm(means[:, None] - means[None], axis=-1)
    assert distances[~np.eye(4, dtype=bool)].min() > 20
