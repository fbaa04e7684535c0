"""Writes datasets the user has offline as image folders the training command reads.

Two sources:
  - `fashion_mnist`: the IDX files of Fashion-MNIST (Debian's package
    dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist):
    60,000 training and 10,000 test images of 28x28 grey clothing, 10 classes.
    They become train/ (55,000), val/ (5,000 of the training images, 500 per class,
    chosen by --seed) and test/ (the 10,000 test images). A run's learning-rate
    decisions look at val/ only; test/ is what the run reports at its end.
    --train_per_class=N keeps N training images per class (chosen by --seed), for
    a small-dataset run; val/ and test/ stay whole.
  - `synthetic`: a tiny generated set of class-coloured, class-oriented stripe
    images, for smoke tests and demos that must run with no data at all.

    python -m alexnet_tf.prepare_data --source=fashion_mnist --output=data/fashion_mnist
    python -m alexnet_tf.prepare_data --source=fashion_mnist --train_per_class=150 \\
        --output=data/fashion_mnist_1500
    python -m alexnet_tf.prepare_data --source=synthetic --output=/tmp/synthetic

Files are named after their index in the IDX file they come from. The output is
written beside its destination and renamed into place when complete; an existing
output is replaced only if this command wrote it (its prepared.json says how).
"""

import gzip
import json
import os
import struct
import sys

import numpy as np

from alexnet_tf import data, files

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = (
    "t_shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
# Held out of Fashion-MNIST's training set for validation, per class (5,000 in all).
FASHION_MNIST_VAL_PER_CLASS = 500
# What marks a directory as this command's output, and so replaceable.
PREPARED_FILE = "prepared.json"
_IDX_UBYTE = 0x08


class PrepareError(RuntimeError):
    """Missing or malformed input files, or an output that must not be replaced."""


def read_idx(path):
    """An IDX file (gzip or not) of unsigned bytes as a NumPy array."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            contents = f.read()
    except (OSError, EOFError) as e:
        raise PrepareError(f"Cannot read IDX file {path}: {e}") from e
    if len(contents) < 4:
        raise PrepareError(f"{path} is too short to be an IDX file.")
    zero, dtype, ndim = struct.unpack(">HBB", contents[:4])
    if zero != 0 or dtype != _IDX_UBYTE:
        raise PrepareError(f"{path} is not an IDX file of unsigned bytes.")
    shape = struct.unpack(f">{ndim}I", contents[4 : 4 + 4 * ndim])
    body = np.frombuffer(contents, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise PrepareError(f"{path} holds {body.size} values; its header says {shape}.")
    return body.reshape(shape)


def per_class_choice(labels, count, seed):
    """Sorted indices of `count` examples of every class (all of a smaller class),
    chosen by `seed`."""
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == label))[:count]
              for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def split_fashion_mnist(train_labels, seed=0, val_per_class=FASHION_MNIST_VAL_PER_CLASS,
                        train_per_class=None):
    """(training indices, validation indices) into Fashion-MNIST's training set: the
    validation images are val_per_class of each class, the rest train (or
    train_per_class of each class of the rest); both chosen by `seed`."""
    validation = per_class_choice(train_labels, val_per_class, seed)
    rest = np.setdiff1d(np.arange(len(train_labels)), validation)
    if train_per_class:
        rest = rest[per_class_choice(train_labels[rest], train_per_class, seed + 1)]
    return rest, validation


def _read_split(source_dir, split):
    paths = [os.path.join(source_dir, f) for f in FASHION_MNIST_FILES[split]]
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
    return images, labels


def _check_replaceable(output):
    if not os.path.exists(os.path.join(output, PREPARED_FILE)):
        raise PrepareError(
            f"{output} exists and was not written by alexnet_tf.prepare_data (no "
            f"{PREPARED_FILE}); nothing was changed. Choose another --output.")


def prepare_fashion_mnist(output, source_dir=FASHION_MNIST_DIR, seed=0, train_per_class=None,
                          val_per_class=FASHION_MNIST_VAL_PER_CLASS):
    """Writes train/, val/ and test/ of Fashion-MNIST under output. Returns the counts."""
    train_images, train_labels = _read_split(source_dir, "train")
    test_images, test_labels = _read_split(source_dir, "test")
    train, validation = split_fashion_mnist(train_labels, seed, val_per_class, train_per_class)
    parts = {
        data.TRAIN_FOLDER: (train_images, train_labels, train),
        data.VALIDATION_FOLDER: (train_images, train_labels, validation),
        data.TEST_FOLDER: (test_images, test_labels, np.arange(len(test_labels))),
    }
    counts = {}
    with files.staged_directory(output, _check_replaceable) as staging:
        for folder, (images, labels, indices) in parts.items():
            data.write_image_folder(images[indices], labels[indices], FASHION_MNIST_CLASSES,
                                    os.path.join(staging, folder), desc=f"fashion_mnist {folder}",
                                    names=[f"{i:06d}" for i in indices])
            counts[folder] = len(indices)
        with open(os.path.join(staging, PREPARED_FILE), "w") as f:
            json.dump({"source": "fashion_mnist", "seed": seed,
                       "train_per_class": train_per_class, "counts": counts}, f, indent=2)
    return counts


def prepare_synthetic(output):
    """Writes the generated train/ and val/ (data.prepare_synthetic) under output, by
    the same replace rule as Fashion-MNIST. Returns the counts."""
    with files.staged_directory(output, _check_replaceable) as staging:
        data.prepare_synthetic(staging)
        counts = {folder: sum(len(names) for _, _, names in os.walk(os.path.join(staging, folder)))
                  for folder in (data.TRAIN_FOLDER, data.VALIDATION_FOLDER)}
        with open(os.path.join(staging, PREPARED_FILE), "w") as f:
            json.dump({"source": "synthetic", "counts": counts}, f, indent=2)
    return counts


def main(values):
    try:
        if values["source"] == "fashion_mnist":
            counts = prepare_fashion_mnist(
                values["output"], values["source_dir"] or FASHION_MNIST_DIR, values["seed"],
                values["train_per_class"])
        else:
            if values["train_per_class"]:
                raise PrepareError("--train_per_class applies to --source=fashion_mnist.")
            counts = prepare_synthetic(values["output"])
    except (PrepareError, FileExistsError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {values['output']}: " + ", ".join(f"{k}/ {v}" for k, v in counts.items()))


if __name__ == "__main__":
    from absl import flags

    from alexnet_tf import command

    command.run(main, {
        "source": flags.DEFINE_enum("source", "fashion_mnist", ["fashion_mnist", "synthetic"],
                                    "What to write."),
        "output": flags.DEFINE_string("output", None, "Directory to write train/, val/ (and "
                                      "test/) into.", required=True),
        "source_dir": flags.DEFINE_string(
            "source_dir", None, f"Where the IDX files are (default {FASHION_MNIST_DIR})."),
        "seed": flags.DEFINE_integer("seed", 0, "Chooses the validation images (and the "
                                     "training subset)."),
        "train_per_class": flags.DEFINE_integer(
            "train_per_class", None, "Keep this many training images per class.",
            lower_bound=1),
    })
