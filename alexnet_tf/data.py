"""Where the images come from: ImageNet through TFDS, or a folder of class folders.

`load_source` turns either into a `Source` whose streams all look the same: dicts of
"image", "label" (int64) and "id" (a stable string naming the example). The streams
come encoded (`encoded_train`, `encoded_validation`: "image" is the file's bytes,
what the fast training path decodes only in part) and decoded (`train`, `validation`:
"image" is uint8 [H, W, 3]). Images that cannot be decoded are dropped wherever they
are decoded and counted in `Source.corrupt_counter`; missing inputs fail here, before
anything runs, naming what is missing and where it was looked for.

ImageNet (ILSVRC-2012) is prepared by TFDS's own `imagenet2012` builder from
ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a manual directory, once;
nothing is downloaded. `write_rescaled_image_folder` optionally does Section 2's
rescale to 256 once, for any source, into an image folder that reads about twice
as fast.
"""

import dataclasses
import os
import re
import shutil
import typing

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from alexnet_tf import corrupt_images, files, input_pipeline, preprocessing

from alexnet_tf.settings import (  # noqa: F401
    DATASETS, IMAGE_FOLDER, IMAGENET2012, SPLITS, SYNTHETIC, TEST, TRAIN, VALIDATION,
)

IMAGENET_TRAIN_TAR = "ILSVRC2012_img_train.tar"
IMAGENET_VALIDATION_TAR = "ILSVRC2012_img_val.tar"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
TRAIN_FOLDER = "train"
VALIDATION_FOLDER = "val"
TEST_FOLDER = "test"


@dataclasses.dataclass(frozen=True)
class Source:
    """A dataset's training, validation and (where it has one) test examples and its
    class names.

    The validation split is what a run's learning-rate and model-selection decisions
    look at; the test split is only ever reported, at the end. `num_train_examples`,
    `num_validation_examples` and `num_test_examples` count the files, including any
    that later turn out to be corrupt (`corrupt_count()` says how many were dropped so
    far). `encoded_train` is shuffled at file level (TFDS: shard level), anew each pass,
    from the seed given to `load_source`; `train_for_epoch(epoch)` is the same stream in
    an order fixed by that seed and `epoch` alone, so that a run resumed in the middle of
    an epoch replays the epoch's order. The validation streams keep a fixed order.
    """

    name: str
    class_names: list
    num_train_examples: int
    num_validation_examples: int
    encoded_train: tf.data.Dataset
    encoded_validation: tf.data.Dataset
    corrupt_counter: corrupt_images.CorruptImageCounter
    epoch_train: typing.Callable[[int], tf.data.Dataset]
    dct_method: str = preprocessing.DEFAULT_DCT_METHOD
    num_test_examples: int = 0
    encoded_test: tf.data.Dataset = None
    seed: int = 0
    # max_bytes -> the training examples decoded into a filled tf.data cache, in file
    # order, or None if they would not fit (see with_training_images_in_memory).
    memory_cache: typing.Callable[[int], tf.data.Dataset] = None

    def train_for_epoch(self, epoch):
        """Training examples, shuffled by (seed, epoch) only: encoded, or decoded once
        kept in memory (`with_training_images_in_memory`)."""
        return self.epoch_train(epoch)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def train(self):
        """Training examples with decoded uint8 [H, W, 3] images."""
        return corrupt_images.decode_examples(
            self.encoded_train, self.corrupt_counter, self.dct_method
        )

    @property
    def validation(self):
        """Validation examples with decoded uint8 [H, W, 3] images."""
        return corrupt_images.decode_examples(
            self.encoded_validation, self.corrupt_counter, self.dct_method
        )

    def encoded_split(self, split):
        """The encoded examples of "train" (in epoch 0's order), "validation" or "test"."""
        streams = {TRAIN: lambda: self.train_for_epoch(0),
                   VALIDATION: lambda: self.encoded_validation,
                   TEST: lambda: self.encoded_test}
        if split not in streams:
            raise ValueError(f"Unknown split {split!r}; expected one of {SPLITS}.")
        if self.split_size(split) == 0:
            raise ValueError(f"The {split} split of {self.name} is empty.")
        return streams[split]()

    def split_size(self, split):
        return {TRAIN: self.num_train_examples, VALIDATION: self.num_validation_examples,
                TEST: self.num_test_examples}[split]

    def corrupt_count(self):
        """How many examples have been dropped so far because their image would not decode."""
        return self.corrupt_counter.count()

    def with_training_images_in_memory(self, max_bytes):
        """This source with its training images decoded once and kept in memory, when
        they fit in max_bytes (estimated from a sample); else this source.

        `train_for_epoch` then yields decoded images in the same order as before, which
        the training pipeline crops exactly as it crops their files (a PNG's crop comes
        from its decoded pixels either way), so a run is the same with or without it;
        only an undecodable file, dropped once here rather than in every epoch, changes
        the order. Image folders only: TFDS datasets are read as they are.
        """
        if self.memory_cache is None or max_bytes <= 0:
            return self
        decoded = self.memory_cache(max_bytes)
        if decoded is None:
            return self
        count, seed = self.num_train_examples, self.seed
        return dataclasses.replace(
            self, epoch_train=lambda epoch: decoded.shuffle(
                count, seed=_epoch_seed(seed, epoch), reshuffle_each_iteration=False))


def load_source(dataset, data_dir, manual_dir=None, val_fraction=0.0, seed=0):
    """The `Source` for `dataset` ("imagenet2012", "image_folder" or "synthetic").

    imagenet2012: `data_dir` is the TFDS data directory; if the dataset is not prepared
    there yet, TFDS's builder prepares it from the two ILSVRC-2012 tars in `manual_dir`.
    image_folder: `data_dir` holds train/ and optionally val/ and test/, each with one
    folder of JPEG or PNG files per class; without val/, `val_fraction` of each class's
    training files (chosen by `seed`) is held out for validation.
    synthetic: the image folder `ensure_synthetic` writes to `data_dir` if it is not there.
    """
    if dataset == IMAGENET2012:
        if val_fraction:
            raise ValueError(
                "val_fraction applies to image_folder; ImageNet has its own validation set."
            )
        return _load_imagenet2012(data_dir, manual_dir, seed)
    if dataset in (IMAGE_FOLDER, SYNTHETIC):
        if manual_dir:
            raise ValueError("manual_dir applies to imagenet2012 only.")
        if dataset == SYNTHETIC:
            ensure_synthetic(data_dir)
        return _load_image_folder(data_dir, val_fraction, seed)
    raise ValueError(f"Unknown dataset {dataset!r}; expected one of {DATASETS}.")


# ----------------------------------------------------------------------------------
# ImageNet through TFDS.


def _check_imagenet_tars(manual_dir, dataset_dir):
    looked = f"TFDS found no prepared imagenet2012 in {dataset_dir}"
    if not manual_dir:
        raise FileNotFoundError(
            f"{looked}, and no manual_dir was given to prepare it from. Put "
            f"{IMAGENET_TRAIN_TAR} and {IMAGENET_VALIDATION_TAR} in a directory and pass it "
            "as manual_dir (--manual_dir)."
        )
    missing = [
        name
        for name in (IMAGENET_TRAIN_TAR, IMAGENET_VALIDATION_TAR)
        if not tf.io.gfile.exists(os.path.join(manual_dir, name))
    ]
    if missing:
        raise FileNotFoundError(
            f"{looked}, and {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
            f"missing from manual_dir {manual_dir}. Both {IMAGENET_TRAIN_TAR} and "
            f"{IMAGENET_VALIDATION_TAR} (from image-net.org) are needed; nothing is downloaded."
        )


def _load_imagenet2012(data_dir, manual_dir, seed):
    # TFDS takes seconds to import; only ImageNet needs it.
    import tensorflow_datasets as tfds

    builder = tfds.builder(IMAGENET2012, data_dir=data_dir)
    if not builder.is_prepared():
        _check_imagenet_tars(manual_dir, os.fspath(builder.data_path))
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=manual_dir, try_download_gcs=False
            )
        )

    def read(split, shuffle, shuffle_seed=seed):
        examples = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False),
        )
        return examples.map(
            lambda example: {
                "image": example["image"],
                "label": example["label"],
                "id": example["file_name"],
            }
        )

    splits = builder.info.splits
    return Source(
        name=IMAGENET2012,
        class_names=list(builder.info.features["label"].names),
        num_train_examples=splits["train"].num_examples,
        num_validation_examples=splits["validation"].num_examples,
        encoded_train=read("train", shuffle=True),
        epoch_train=lambda epoch: read("train", shuffle=True,
                                       shuffle_seed=_epoch_seed(seed, epoch)),
        encoded_validation=read("validation", shuffle=False),
        corrupt_counter=corrupt_images.CorruptImageCounter(),
    )


# ----------------------------------------------------------------------------------
# A folder of class folders.


def _list_images(class_dir):
    """Paths of the image files under class_dir, sorted; hidden files and others skipped."""
    paths = []
    for directory, subdirectories, files in tf.io.gfile.walk(class_dir):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        paths.extend(
            os.path.join(directory, name)
            for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(paths)


def _class_folders(split_dir):
    if not tf.io.gfile.isdir(split_dir):
        raise FileNotFoundError(
            f"Image folder {split_dir} does not exist; expected {split_dir}/<class>/<image>"
            f" with one folder per class of {'/'.join(IMAGE_EXTENSIONS)} files."
        )
    names = sorted(
        name.rstrip("/")
        for name in tf.io.gfile.listdir(split_dir)
        if not name.startswith(".") and tf.io.gfile.isdir(os.path.join(split_dir, name))
    )
    if not names:
        raise FileNotFoundError(f"Image folder {split_dir} has no class folders.")
    return names


def _scan_split(split_dir, class_index):
    """(paths, labels) of every image in split_dir's class folders; no empty class allowed."""
    paths, labels, empty = [], [], []
    for name in _class_folders(split_dir):
        if name not in class_index:
            raise ValueError(
                f"Class folder {os.path.join(split_dir, name)} has no counterpart in the "
                "training folder, so it has no label."
            )
        images = _list_images(os.path.join(split_dir, name))
        if not images:
            empty.append(os.path.join(split_dir, name))
        paths.extend(images)
        labels.extend([class_index[name]] * len(images))
    if empty:
        raise ValueError(
            f"Class folder(s) with no {'/'.join(IMAGE_EXTENSIONS)} files: {', '.join(empty)}."
        )
    return paths, labels


def _hold_out(paths, labels, val_fraction, seed):
    """Splits off round(val_fraction * n) files of every class, chosen by seed."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction}.")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    held_out = np.zeros(len(paths), bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = min(int(round(val_fraction * len(members))), len(members) - 1)
        held_out[rng.permutation(members)[:count]] = True
    paths = np.asarray(paths, object)
    return (
        (list(paths[~held_out]), list(labels[~held_out])),
        (list(paths[held_out]), list(labels[held_out])),
    )


def _epoch_seed(seed, epoch):
    return seed * 1_000_003 + epoch


def _file_examples(paths, labels, root, shuffle_seed=None, reshuffle=True):
    """{"image": file bytes, "label", "id": path relative to root} for a file list."""
    ids = [os.path.relpath(path, root) for path in paths]
    examples = tf.data.Dataset.from_tensor_slices(
        {
            "path": tf.constant(paths, tf.string),
            "label": tf.constant(labels, tf.int64),
            "id": tf.constant(ids, tf.string),
        }
    )
    if shuffle_seed is not None and paths:
        examples = examples.shuffle(
            len(paths), seed=shuffle_seed, reshuffle_each_iteration=reshuffle
        )
    return examples.map(
        lambda example: {
            "image": tf.io.read_file(example["path"]),
            "label": example["label"],
            "id": example["id"],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _load_image_folder(data_dir, val_fraction, seed):
    if not data_dir or not tf.io.gfile.isdir(data_dir):
        raise FileNotFoundError(f"Image folder dataset directory {data_dir!r} does not exist.")
    train_dir = os.path.join(data_dir, TRAIN_FOLDER)
    validation_dir = os.path.join(data_dir, VALIDATION_FOLDER)
    test_dir = os.path.join(data_dir, TEST_FOLDER)
    class_names = _class_folders(train_dir)
    class_index = {name: index for index, name in enumerate(class_names)}
    train = _scan_split(train_dir, class_index)
    if tf.io.gfile.isdir(validation_dir):
        if val_fraction:
            raise ValueError(
                f"{validation_dir} exists, so no val_fraction of the training files is held out;"
                " remove one or the other."
            )
        validation = _scan_split(validation_dir, class_index)
    elif val_fraction:
        train, validation = _hold_out(*train, val_fraction, seed)
    else:
        validation = ([], [])
    test = _scan_split(test_dir, class_index) if tf.io.gfile.isdir(test_dir) else ([], [])
    counter = corrupt_images.CorruptImageCounter(
        explain=lambda example_id: _file_failure(data_dir, example_id))
    return Source(
        name=IMAGE_FOLDER,
        class_names=class_names,
        num_train_examples=len(train[0]),
        num_validation_examples=len(validation[0]),
        num_test_examples=len(test[0]),
        encoded_train=_file_examples(*train, data_dir, shuffle_seed=seed),
        epoch_train=lambda epoch: _file_examples(
            *train, data_dir, shuffle_seed=_epoch_seed(seed, epoch), reshuffle=False
        ),
        encoded_validation=_file_examples(*validation, data_dir),
        encoded_test=_file_examples(*test, data_dir),
        corrupt_counter=counter,
        seed=seed,
        memory_cache=lambda max_bytes: _decoded_in_memory(train, data_dir, counter, max_bytes),
    )


# Files decoded to estimate the decoded size of an image folder's training split.
_SIZE_SAMPLE = 64


def _decoded_in_memory(split, root, counter, max_bytes):
    """The split's examples decoded, in file order, in a filled in-memory tf.data cache;
    None if their decoded size, estimated from a sample of files, exceeds max_bytes."""
    paths, labels = split
    if not paths:
        return None
    sample = paths[:: max(1, len(paths) // _SIZE_SAMPLE)][:_SIZE_SAMPLE]
    sizes = []
    for path in sample:
        try:
            sizes.append(int(np.prod(preprocessing.decode_image(tf.io.read_file(path)).shape)))
        except tf.errors.OpError:
            pass
    if not sizes or np.mean(sizes) * len(paths) > max_bytes:
        return None
    decoded = corrupt_images.decode_examples(_file_examples(paths, labels, root), counter).cache()
    for _ in tqdm(decoded, total=len(paths), desc="training images into memory", unit="img",
                  mininterval=1.0):
        pass
    return decoded


def _file_failure(root, example_id):
    """Why the image file `example_id` (relative to root) does not decode."""
    path = os.path.join(root, example_id)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            image_bytes = f.read()
    except (OSError, tf.errors.OpError) as e:
        return f"cannot be read ({getattr(e, 'message', e)})"
    if not image_bytes:
        return "the file is empty"
    return corrupt_images.decode_failure(image_bytes)


# ----------------------------------------------------------------------------------
# Generated data.


def write_image_folder(images, labels, class_names, directory, desc=None, names=None):
    """Writes images [N,H,W] or [N,H,W,C] uint8 as PNGs under directory/<class>/,
    named names[i] (default: the index, six digits) plus .png."""
    for name in class_names:
        os.makedirs(os.path.join(directory, name), exist_ok=True)
    for index in tqdm(range(len(images)), desc=desc or directory, unit="img", mininterval=1.0):
        image = images[index]
        if image.ndim == 2:
            image = image[..., None]
        stem = f"{index:06d}" if names is None else names[index]
        path = os.path.join(directory, class_names[labels[index]], f"{stem}.png")
        tf.io.write_file(path, tf.io.encode_png(image))


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
    """Writes the synthetic set: train/ and val/, num_classes class folders each."""
    names = [f"class_{k}" for k in range(num_classes)]
    for split, count, seed in ((TRAIN_FOLDER, num_per_class, 0),
                               (VALIDATION_FOLDER, val_per_class, 1)):
        images, labels = synthetic_images(count, num_classes, size, seed)
        write_image_folder(images, labels, names, os.path.join(output, split),
                           desc=f"synthetic {split}")


def ensure_synthetic(output, **kwargs):
    """Writes the synthetic set to `output` unless it is already there.

    The workers of a multi-worker run may all call this at once: each writes a copy
    beside `output` and renames its splits into place, train/ last since its presence
    means the set is complete; a rename that finds the split there already gives way.
    """
    if os.path.isdir(os.path.join(output, TRAIN_FOLDER)):
        return output
    staging = files.staging_path(output)
    prepare_synthetic(staging, **kwargs)
    os.makedirs(output, exist_ok=True)
    for split in (VALIDATION_FOLDER, TRAIN_FOLDER):
        try:
            os.rename(os.path.join(staging, split), os.path.join(output, split))
        except OSError:
            pass
    shutil.rmtree(staging, ignore_errors=True)
    return output


# ----------------------------------------------------------------------------------
# Rescaling once.


def _output_name(example_id):
    """A flat, unique JPEG file name for an example id such as train/cat/a.png."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", example_id)
    return name if name.lower().endswith((".jpg", ".jpeg")) else f"{name}.jpg"


def write_rescaled_image_folder(
    source, output_dir, image_size=preprocessing.PAPER_IMAGE_SIZE, quality=95
):
    """Writes every image's central square, rescaled to image_size, as an image folder.

    The result (output_dir/train/<class>/..., output_dir/val/<class>/...) is read with
    `load_source("image_folder", output_dir)`. Section 2's rescale then happens once
    instead of on every read, and each read decodes a 256x256 JPEG instead of a
    ~500x375 one: about twice the training images/s (tools/bench_input_pipeline.py),
    for one pass over the data, the disk space and a second JPEG encoding. Corrupt
    images are skipped and counted as everywhere else. Returns {split: images written}.
    """

    def rescale(index, example):
        del index
        image = preprocessing.decode_crop_and_resize(
            example["image"], image_size, image_size, 0, 0, source.dct_method
        )
        jpeg = tf.io.encode_jpeg(tf.cast(tf.round(image), tf.uint8), quality=quality)
        return jpeg, example["label"], example["id"]

    written = {}
    splits = ((TRAIN_FOLDER, source.encoded_train), (VALIDATION_FOLDER, source.encoded_validation))
    for split, examples in splits:
        rescaled = input_pipeline.without_autotuning(
            corrupt_images.map_skipping_corrupt(examples, rescale, source.corrupt_counter))
        written[split] = 0
        for jpeg, label, example_id in rescaled.as_numpy_iterator():
            directory = os.path.join(output_dir, split, source.class_names[label])
            tf.io.gfile.makedirs(directory)
            path = os.path.join(directory, _output_name(example_id.decode()))
            with tf.io.gfile.GFile(path, "wb") as f:
                f.write(jpeg)
            written[split] += 1
    return written
