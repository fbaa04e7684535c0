"""The training and evaluation datasets: the paper's preprocessing (`preprocessing`)
mapped over a source's examples, batched, with corrupt images dropped and counted
(`corrupt_images`).

Two kinds of example stream are accepted: decoded images (uint8 [H, W, C]) and
encoded image bytes (tf.string), the fast path for JPEGs.
"""

import numpy as np
import tensorflow as tf

from alexnet_tf import corrupt_images, ops, preprocessing

# Encoded examples held by the training shuffle; ImageNet JPEGs average about 110 kB.
DEFAULT_SHUFFLE_BUFFER = 4096
# The key under which a sharded stream keeps each example's position in the whole
# stream, its augmentation seed (`shard_keeping_stream_index`).
STREAM_INDEX = "stream_index"


def _is_encoded(examples):
    return examples.element_spec["image"].dtype == tf.string


def _check_stats(stats, image_size, crop_size):
    if crop_size > image_size:
        raise ValueError(f"crop_size {crop_size} is larger than image_size {image_size}.")
    shape = tuple(np.shape(stats.mean_image))
    if shape != (image_size, image_size, 3):
        raise ValueError(
            f"The mean image has shape {shape} but image_size is {image_size}: compute the "
            f"dataset statistics with image_size={image_size}."
        )


def one_thread_per_image(dataset):
    """Runs each image's ops on one thread; images still run in parallel.

    The per-image work is small (a 224x224 resize, a few 3-vectors), so splitting an op
    over TensorFlow's intra-op threads costs more than it saves while other images
    wait.
    """
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def without_autotuning(dataset):
    """The dataset without tf.data's autotuning thread.

    In TensorFlow 2.21 destroying an iterator can wait for that thread to wake by itself,
    and its wake-ups back off to one a minute: the trainer, which ends an iterator at
    every epoch and evaluation, stalled at epoch ends (BENCHMARKS.md, "The README's
    command, five seeds", has the stack). Without it, AUTOTUNE parallelism is one call per core
    (at most 16) and AUTOTUNE prefetch buffers grow whenever the consumer finds them
    empty.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def shard_keeping_stream_index(examples, num_shards, shard_index):
    """Every num_shards-th example from shard_index on, each with its position in the
    whole stream under STREAM_INDEX.

    Dropping the other examples here, after any shuffle and before decoding, leaves each
    shard its share of the decoding and augmentation but not of the reading: every
    shard reads the whole stream.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} is not in [0, {num_shards}).")
    return examples.enumerate().shard(num_shards, shard_index).map(
        lambda index, example: {**example, STREAM_INDEX: index}
    )


def make_train_dataset(
    examples,
    stats,
    batch_size,
    image_size=preprocessing.PAPER_IMAGE_SIZE,
    crop_size=preprocessing.PAPER_CROP_SIZE,
    lighting=preprocessing.LIGHTING_SQRT_EIGENVALUE,
    seed=0,
    lighting_stddev=preprocessing.PAPER_LIGHTING_STDDEV,
    shuffle_buffer=DEFAULT_SHUFFLE_BUFFER,
    num_epochs=None,
    corrupt_counter=None,
    dct_method=preprocessing.DEFAULT_DCT_METHOD,
    drop_remainder=True,
    num_shards=1,
    shard_index=0,
    crops_and_mirrors=True,
):
    """Batches of (float32 [B, crop, crop, 3] mean-subtracted, int32 [B] labels) for training.

    Per image, in the paper's order: central square rescaled to image_size, the mean
    image subtracted, a random crop_size patch, a random mirror, PCA lighting (scale as
    `lighting`, one of LIGHTING_SCALES), computed from the region the crop covers
    (`preprocessing.training_crop_from_bytes`). `examples` yields dicts with "image"
    (encoded bytes, or decoded [H, W, 1 or 3] uint8, which gives the same crops as its
    PNG would) and "label".

    Repeats `num_epochs` times (None: forever). Every image drawn gets fresh crop, flip
    and lighting draws from (seed, its position in the stream), so two epochs differ
    but two runs with the same seed are identical. Examples that fail to decode are
    dropped and added to `corrupt_counter`.

    With `num_shards` > 1, one of several data-parallel input pipelines: every shard
    shuffles the same stream, keeps the examples at positions shard_index,
    shard_index + num_shards, ... and augments each as the unsharded pipeline does
    (its position in the whole stream is its seed). So the k-th batches of all the
    shards together hold the k-th batch of the unsharded pipeline with num_shards
    times the batch size, augmented alike.

    Without `crops_and_mirrors` every image gives its centre crop, unmirrored (the crop
    evaluation takes), with its lighting drawn as before: Section 4.1's first form of
    augmentation switched off, the second kept.
    """
    if lighting not in preprocessing.LIGHTING_SCALES:
        raise ValueError(f"Unknown lighting {lighting!r}; expected one of "
                         f"{preprocessing.LIGHTING_SCALES}.")
    _check_stats(stats, image_size, crop_size)
    mean_image = tf.constant(np.asarray(stats.mean_image, np.float32))
    # Computed once here rather than for every image; no lighting is a zero basis.
    if lighting == preprocessing.LIGHTING_NONE:
        basis = tf.zeros([3, 3])
    else:
        basis = preprocessing.lighting_basis(stats.eigenvalues, stats.eigenvectors, lighting)
    crop = (_crop_from_bytes(crop_size, mean_image, dct_method) if _is_encoded(examples)
            else _crop_from_pixels(image_size, crop_size, mean_image))

    def augment(index, example):
        # random_crop_window and pca_lighting_rgb's draws for this image's
        # augmentation_seeds, in one op.
        offset, flip, rgb = ops.augmentation_draws(
            example.get(STREAM_INDEX, index), basis, seed, image_size, crop_size,
            lighting_stddev,
        )
        if not crops_and_mirrors:
            offset, flip = tf.fill([2], (image_size - crop_size) // 2), tf.zeros_like(flip)
        return crop(example["image"], offset, flip, rgb), tf.cast(example["label"], tf.int32)

    if shuffle_buffer:
        examples = examples.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    examples = examples.repeat(num_epochs)
    if num_shards > 1:
        examples = shard_keeping_stream_index(examples, num_shards, shard_index)
    batches = _map_and_batch(examples, augment, corrupt_counter, batch_size, drop_remainder)
    return without_autotuning(one_thread_per_image(batches.prefetch(tf.data.AUTOTUNE)))


def _map_and_batch(examples, fn, corrupt_counter, batch_size, drop_remainder=False):
    """Batches of fn(index, example); encoded images that fail to decode are dropped and
    counted (decoded ones cannot fail)."""
    if _is_encoded(examples):
        return corrupt_images.map_and_batch_skipping_corrupt(
            examples, fn, corrupt_counter or corrupt_images.CorruptImageCounter(), batch_size,
            drop_remainder)
    return (examples.enumerate()
            .map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=drop_remainder))


def _crop_from_bytes(crop_size, mean_image, dct_method):
    def crop(image_bytes, offset, flip, rgb):
        return preprocessing.training_crop_from_bytes(
            image_bytes, crop_size, mean_image, offset, flip, rgb, dct_method)

    return crop


def _crop_from_pixels(image_size, crop_size, mean_image):
    """The training crop of a decoded image: what `_crop_from_bytes` gives for its PNG."""

    def crop(image, offset, flip, rgb):
        region = preprocessing.crop_region_of_pixels(
            image, image_size, crop_size, offset[0], offset[1])
        return ops.resize_flip_and_normalize(region, crop_size, mean_image, offset, flip, rgb)

    return crop


def make_eval_dataset(
    examples,
    stats,
    batch_size,
    image_size=preprocessing.PAPER_IMAGE_SIZE,
    crop_size=preprocessing.PAPER_CROP_SIZE,
    ten_crop=False,
    corrupt_counter=None,
    num_shards=1,
    shard_index=0,
):
    """Batches of (mean-subtracted float32 crops, int32 labels) for evaluation, one pass.

    Images are [B, crop, crop, 3] centre crops, or with `ten_crop` [B, 10, crop, crop, 3]
    groups (`preprocessing.ten_crop` order) whose softmax the paper averages: the crops
    of `preprocessing.eval_crops_from_bytes` (or `_from_pixels` for decoded images),
    which the SavedModel computes too. The last batch may be smaller. `examples` is as
    for `make_train_dataset`. With `num_shards` > 1, only the examples at positions
    shard_index, shard_index + num_shards, ...
    """
    _check_stats(stats, image_size, crop_size)
    mean_image = tf.constant(np.asarray(stats.mean_image, np.float32))
    crops = (preprocessing.eval_crops_from_bytes if _is_encoded(examples)
             else preprocessing.eval_crops_from_pixels)

    def preprocess(index, example):
        del index
        images = crops(example["image"], mean_image, crop_size, ten_crop=ten_crop)
        return images, tf.cast(example["label"], tf.int32)

    if num_shards > 1:
        examples = examples.shard(num_shards, shard_index)
    batches = _map_and_batch(examples, preprocess, corrupt_counter, batch_size)
    return without_autotuning(one_thread_per_image(batches.prefetch(tf.data.AUTOTUNE)))
