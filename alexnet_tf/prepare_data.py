"""Writes datasets the user has offline as image folders the training command reads.

Two sources:
  - `fashion_mnist`: the IDX files of Fashion-MNIST (Debian's package
    dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist):
    60,000 training and 10,000 test images of 28x28 grey clothing, 10 classes.
    The test split becomes val/.
  - `synthetic`: a tiny generated set of class-coloured, class-oriented stripe
    images, for smoke tests and demos that must run with no data at all.

    python -m alexnet_tf.prepare_data --source=fashion_mnist --output=data/fashion_mnist
    python -m alexnet_tf.prepare_data --source=synthetic --output=/tmp/synthetic

The output holds train/<class>/<id>.png and val/<class>/<id>.png.
"""

import gzip
import os
import shutil
import struct
import sys

import numpy as np
import tensorflow as tf
from tqdm import tqdm

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "t_shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
_IDX_UBYTE = 0x08


class PrepareError(RuntimeError):
    """Missing or malformed input files."""


def read_idx(path):
    """An IDX file (gzip or not) of unsigned bytes as a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise PrepareError(f"Cannot read IDX file {path}: {e}") from e
    if len(data) < 4:
        raise PrepareError(f"{path} is too short to be an IDX file.")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != _IDX_UBYTE:
        raise PrepareError(f"{path} is not an IDX file of unsigned bytes.")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise PrepareError(f"{path} holds {body.size} values; its header says {shape}.")
    return body.reshape(shape)


def write_image_folder(images, labels, class_names, directory, desc=None):
    """Writes images [N,H,W] or [N,H,W,C] uint8 as PNGs under directory/<class>/."""
    for name in class_names:
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    for index in tqdm(range(len(images)), desc=desc or directory, unit="img", mininterval=1.0):
        image = images[index]
        if image.ndim == 2:
            image = image[..., None]
        path = os.path.join(directory, class_names[labels[index]], f"{index:06d}.png")
        tf.io.write_file(path, tf.io.encode_png(image))


def prepare_fashion_mnist(output, source_dir=FASHION_MNIST_DIR):
    for split, (images_file, labels_file) in FASHION_MNIST_FILES.items():
        paths = [os.path.join(source_dir, f) for f in (images_file, labels_file)]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise PrepareError(
                f"Fashion-MNIST file(s) not found: {', '.join(missing)}. On Debian or Ubuntu: "
                "`apt-get install dataset-fashion-mnist`, or pass --source_dir."
            )
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if len(images) != len(labels):
            raise PrepareError(f"{paths[0]} has {len(images)} images but {paths[1]} "
                               f"{len(labels)} labels.")
        write_image_folder(images, labels, FASHION_MNIST_CLASSES, os.path.join(output, split),
                           desc=f"fashion_mnist {split}")


def synthetic_images(num_per_class, num_classes=4, size=48, seed=0):
    """Class k: stripes at angle k * 180 / num_classes degrees, tinted with colour k,
    plus noise: easy to tell apart, so a few steps of training make progress."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    images, labels = [], []
    for label in range(num_classes):
        angle = np.pi * label / num_classes
        colour = np.array([np.cos(2 * np.pi * label / num_classes),
                           np.sin(2 * np.pi * label / num_classes), 0.5]) * 0.5 + 0.5
        for _ in range(num_per_class):
            phase = rng.uniform(0, 2 * np.pi)
            stripes = 0.5 + 0.5 * np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 0.6 + phase)
            image = stripes[..., None] * colour * 200 + rng.normal(0, 20, (size, size, 3))
            images.append(np.clip(image, 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(images), np.array(labels)


def prepare_synthetic(output, num_per_class=24, val_per_class=8, num_classes=4, size=48):
    names = [f"class_{k}" for k in range(num_classes)]
    for split, count, seed in (("train", num_per_class, 0), ("val", val_per_class, 1)):
        images, labels = synthetic_images(count, num_classes, size, seed)
        write_image_folder(images, labels, names, os.path.join(output, split), desc=f"synthetic {split}")


def ensure_synthetic(output, **kwargs):
    """Writes the synthetic set to `output` unless it is already there.

    The workers of a multi-worker run may all call this at once: each writes a copy
    beside `output` and renames its splits into place, train/ last since its presence
    means the set is complete; a rename that finds the split there already gives way.
    """
    if os.path.isdir(os.path.join(output, "train")):
        return output
    staging = f"{os.path.normpath(output)}.tmp-{os.getpid()}"
    prepare_synthetic(staging, **kwargs)
    os.makedirs(output, exist_ok=True)
    for split in ("val", "train"):
        try:
            os.rename(os.path.join(staging, split), os.path.join(output, split))
        except OSError:
            pass
    shutil.rmtree(staging, ignore_errors=True)
    return output


def main(argv):
    from absl import flags

    del argv
    flags_ = flags.FLAGS
    try:
        if flags_.source == "fashion_mnist":
            prepare_fashion_mnist(flags_.output, flags_.source_dir or FASHION_MNIST_DIR)
        else:
            prepare_synthetic(flags_.output)
    except PrepareError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {flags_.output}/train and {flags_.output}/val")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_enum("source", "fashion_mnist", ["fashion_mnist", "synthetic"], "What to write.")
    flags.DEFINE_string("output", None, "Directory to write train/ and val/ into.", required=True)
    flags.DEFINE_string("source_dir", None, f"Where the IDX files are (default {FASHION_MNIST_DIR}).")
    app.run(main)
