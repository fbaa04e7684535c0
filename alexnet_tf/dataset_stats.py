"""Training-set statistics for the paper's preprocessing (Sections 2 and 4.1).

One streaming pass over the training images, each rescaled to its central
image_size x image_size square, yields:

- the per-pixel mean image [S, S, 3] that Section 2 subtracts from every input;
- the 3x3 covariance of all RGB pixel values and its eigenvalues and eigenvectors,
  the principal components that Section 4.1's PCA lighting moves along.

All in 0..255 pixel units. The result is written once to a .npz file that training
and export read with `load_stats`:

    python -m alexnet_tf.dataset_stats --dataset=imagenet2012 --data_dir=TFDS_DIR \\
        --manual_dir=TARS_DIR --output=stats/imagenet2012_256.npz
"""

import dataclasses
import io
import sys
import zipfile

import numpy as np
import tensorflow as tf
import tqdm
from absl import flags

from alexnet_tf import corrupt_images, data, files, input_pipeline, preprocessing

STATS_FORMAT_VERSION = 1
_ARRAYS = ("mean_image", "covariance", "eigenvalues", "eigenvectors")
# Pixel values are accumulated about mid-grey, so that the raw second moments stay small
# and covariance = E[xx^T] - E[x]E[x]^T loses no precision in float64.
_PIXEL_SHIFT = 128.0


@dataclasses.dataclass(frozen=True)
class DatasetStats:
    """Mean image and RGB principal components of a training set, in 0..255 units.

    `eigenvectors[:, i]` is the unit principal component for `eigenvalues[i]`; the
    eigenvalues descend, and each eigenvector's largest-magnitude entry is positive
    (the sign is arbitrary for the lighting, which draws symmetric a_i).
    """

    mean_image: np.ndarray
    covariance: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    num_examples: int

    @property
    def image_size(self):
        return int(self.mean_image.shape[0])

    @property
    def mean_rgb(self):
        return self.mean_image.mean(axis=(0, 1), dtype=np.float64)


def rgb_principal_components(covariance):
    """(eigenvalues descending, eigenvectors as columns) of a symmetric 3x3 covariance."""
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(covariance, np.float64))
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    largest = eigenvectors[np.argmax(np.abs(eigenvectors), axis=0), np.arange(3)]
    return eigenvalues, eigenvectors * np.where(largest < 0, -1.0, 1.0)


def _batch_moments(images):
    """Sums over a batch [B, S, S, 3] float32: of images, of shifted pixels, of their products."""
    images = tf.cast(images, tf.float64)
    pixels = tf.reshape(images, [-1, 3]) - _PIXEL_SHIFT
    return {
        "count": tf.shape(images, out_type=tf.int64)[0],
        "image_sum": tf.reduce_sum(images, axis=0),
        "pixel_sum": tf.reduce_sum(pixels, axis=0),
        "pixel_products": tf.matmul(pixels, pixels, transpose_a=True),
    }


def compute_stats(
    examples,
    image_size=preprocessing.PAPER_IMAGE_SIZE,
    max_examples=None,
    seed=0,
    batch_size=32,
    shuffle_buffer=1024,
    corrupt_counter=None,
    total=None,
    dct_method=preprocessing.DEFAULT_DCT_METHOD,
    progress=True,
):
    """The mean image and RGB covariance of `examples`, in one pass with a progress bar.

    `examples` yields dicts whose "image" is encoded bytes or decoded uint8 [H, W, C];
    each image is rescaled to its central image_size square first, as in training.
    With `max_examples`, a random subset of that many is used: the stream is shuffled
    with a `shuffle_buffer` seeded by `seed` before taking them (so pass a stream that
    is already shuffled at file level, as `Source.encoded_train` is). `total` (the
    number of examples, if known) sizes the progress bar.
    """
    encoded = examples.element_spec["image"].dtype == tf.string
    # The image, and the id that names a corrupt one in the log.
    examples = examples.map(lambda example: {k: v for k, v in example.items()
                                             if k in ("image", "id")})
    if max_examples is not None:
        examples = examples.shuffle(shuffle_buffer, seed=seed).take(max_examples)
        total = max_examples if total is None else min(total, max_examples)
    if encoded:
        batches = corrupt_images.map_and_batch_skipping_corrupt(
            examples,
            lambda index, example: preprocessing.decode_crop_and_resize(
                example["image"], image_size, image_size, 0, 0, dct_method
            ),
            corrupt_counter or corrupt_images.CorruptImageCounter(),
            batch_size,
        )
    else:
        batches = examples.map(
            lambda example: preprocessing.resize_shorter_and_center_crop(
                example["image"], image_size
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).batch(batch_size)
    moments = input_pipeline.without_autotuning(batches.map(_batch_moments).prefetch(2))

    count = 0
    image_sum = np.zeros([image_size, image_size, 3], np.float64)
    pixel_sum = np.zeros([3], np.float64)
    pixel_products = np.zeros([3, 3], np.float64)
    with tqdm.tqdm(total=total, unit="img", desc="dataset statistics", disable=not progress) as bar:
        for batch in moments.as_numpy_iterator():
            count += int(batch["count"])
            image_sum += batch["image_sum"]
            pixel_sum += batch["pixel_sum"]
            pixel_products += batch["pixel_products"]
            bar.update(int(batch["count"]))
    if count == 0:
        raise ValueError("No decodable images in the examples; cannot compute statistics.")

    num_pixels = count * image_size * image_size
    shifted_mean = pixel_sum / num_pixels
    covariance = pixel_products / num_pixels - np.outer(shifted_mean, shifted_mean)
    covariance = (covariance + covariance.T) / 2
    eigenvalues, eigenvectors = rgb_principal_components(covariance)
    return DatasetStats(
        mean_image=(image_sum / count).astype(np.float32),
        covariance=covariance,
        eigenvalues=eigenvalues,
        eigenvectors=eigenvectors,
        num_examples=count,
    )


def save_stats(stats, path):
    """Writes `stats` to a .npz file at `path` (local or any tf.io.gfile filesystem)."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        format_version=np.int64(STATS_FORMAT_VERSION),
        num_examples=np.int64(stats.num_examples),
        **{name: getattr(stats, name) for name in _ARRAYS},
    )
    files.write_bytes_atomically(path, buffer.getvalue())


def load_stats(path):
    """Reads statistics written by `save_stats`, checking that they are complete and sane."""
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"Dataset statistics file {path} does not exist. Compute it with "
            f"`python -m alexnet_tf.dataset_stats --dataset=... --data_dir=... --output={path}`."
        )
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            with np.load(io.BytesIO(f.read()), allow_pickle=False) as arrays:
                contents = {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"Dataset statistics file {path} is not a readable .npz file: {error}"
        ) from error
    missing = [name for name in (*_ARRAYS, "num_examples") if name not in contents]
    if missing:
        raise ValueError(f"Dataset statistics file {path} lacks {', '.join(missing)}.")
    stats = DatasetStats(
        mean_image=contents["mean_image"].astype(np.float32),
        covariance=contents["covariance"].astype(np.float64),
        eigenvalues=contents["eigenvalues"].astype(np.float64),
        eigenvectors=contents["eigenvectors"].astype(np.float64),
        num_examples=int(contents["num_examples"]),
    )
    shapes = {name: getattr(stats, name).shape for name in _ARRAYS}
    size = shapes["mean_image"][0] if shapes["mean_image"] else 0
    expected = {
        "mean_image": (size, size, 3),
        "covariance": (3, 3),
        "eigenvalues": (3,),
        "eigenvectors": (3, 3),
    }
    if shapes != expected or size == 0:
        raise ValueError(
            f"Dataset statistics file {path} has shapes {shapes}, expected {expected}."
        )
    if not all(np.all(np.isfinite(getattr(stats, name))) for name in _ARRAYS):
        raise ValueError(f"Dataset statistics file {path} holds non-finite values.")
    return stats


def compute_and_save(
    dataset,
    data_dir,
    output,
    manual_dir=None,
    image_size=preprocessing.PAPER_IMAGE_SIZE,
    max_examples=None,
    seed=0,
):
    """Computes the training split's statistics of a `data.load_source` dataset and saves them."""
    source = data.load_source(dataset, data_dir, manual_dir=manual_dir, seed=seed)
    stats = compute_stats(
        source.encoded_train,
        image_size=image_size,
        max_examples=max_examples,
        seed=seed,
        corrupt_counter=source.corrupt_counter,
        total=source.num_train_examples,
    )
    save_stats(stats, output)
    return stats, source.corrupt_count()


def main(values):
    try:
        stats, corrupt = compute_and_save(**values)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"images: {stats.num_examples}, skipped as corrupt: {corrupt}")
    print(f"mean RGB: {np.round(stats.mean_rgb, 3).tolist()}")
    print(f"eigenvalues: {np.round(stats.eigenvalues, 3).tolist()}")
    print(f"sqrt(eigenvalues): {np.round(np.sqrt(stats.eigenvalues), 3).tolist()}")
    print(f"eigenvectors (columns): {np.round(stats.eigenvectors, 4).tolist()}")
    print(f"wrote {values['output']}")


if __name__ == "__main__":
    from alexnet_tf import command

    flags.adopt_module_key_flags(command)  # --help lists the data flags too
    command.run(main, {
        **command.data_flags(flags, required=True),
        "output": flags.DEFINE_string("output", None, "Where to write the statistics (.npz).",
                                      required=True),
        "image_size": flags.DEFINE_integer("image_size", preprocessing.PAPER_IMAGE_SIZE,
                                           "Side of the central square."),
        "max_examples": flags.DEFINE_integer(
            "max_examples", None, "Use a random subset of this many training images."),
        "seed": flags.DEFINE_integer("seed", 0, "Seed of the file order and of the subset."),
    })
