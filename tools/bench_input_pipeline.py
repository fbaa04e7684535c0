"""Throughput of the training input pipeline from full-size JPEGs, against a bare one.

    python tools/bench_input_pipeline.py                      # the figures
    python tools/bench_input_pipeline.py --num_images=128 --rounds=2 --batches=4  # a quick look

Generates ImageNet-sized JPEGs (500x375, quality 90; smooth random fields at four
scales plus pixel noise, about 100 kB each, so they cost what photographs cost to
decode) in an image folder, computes their statistics, and times in the same process,
one measurement of each pipeline in turn per round, so that a load change on the
machine hits all alike:

  full           the training pipeline as training uses it:
                 input_pipeline.make_train_dataset(Source.encoded_train, ...): read,
                 then one compiled op (ops.decode_jpeg_crop_flip_and_normalize) for
                 the decode of the crop's window, resize, flip, mean subtraction and
                 PCA lighting, batching; corrupt-image skipping and counting included;
  bare           decode-resize-crop-flip only, with the same decode of the crop's
                 window, TensorFlow's resize and flip, and tf.data's fused
                 map-and-batch;
  bare_skipping  bare with full's skipping and counting of corrupt images (which
                 keeps tf.data from fusing the map with the batching);
  bare_fused     bare_skipping with full's ops: the random crop and mirror from
                 ops.augmentation_draws, then preprocessing.training_crop_from_bytes
                 with a zero mean image and no lighting, i.e. full without mean
                 subtraction and lighting, and nothing else;
  bare_central   the bare pipeline as usually written: decode the central square,
                 resize it to 256, random 224 crop, flip;
  full_decoded   the full pipeline fed decoded images (Source.train): the whole
                 image decoded, then the crop's region cut out and the same op
                 (ops.resize_flip_and_normalize) as for a PNG;
  full_prepared  the full pipeline on JPEGs rescaled to 256x256 once beforehand
                 (data.write_rescaled_image_folder, same JPEG quality).

All of them run with the training pipeline's tf.data options (one thread per image,
no autotuning thread: input_pipeline.one_thread_per_image and without_autotuning),
so that they differ only in the ops named above.

Each figure is the median over rounds of images per second (wall clock), that
divided by the cores of the machine (nproc), and images per CPU-second of this
process (its user + system time: unlike the wall clock, it does not count the time
other programs on the machine take from it). The targets: at least 500 images/s per
core, and full at least 0.9x bare.

TensorFlow's default CPU allocator returns every large freed buffer to the system, so
each 128-image float32 batch (77 MB) is page-faulted in anew, in kernel time. Its BFC
allocator keeps them; it is chosen before TensorFlow starts, by the environment:

    TF_CPU_ALLOCATOR_USE_BFC=true python tools/bench_input_pipeline.py
"""

import dataclasses
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from alexnet_tf import corrupt_images, data, dataset_stats, ops, preprocessing  # noqa: E402
from alexnet_tf import input_pipeline as ip  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer("num_images", 512, "Distinct JPEGs generated.")
_WIDTH = flags.DEFINE_integer("width", 500, "Generated image width.")
_HEIGHT = flags.DEFINE_integer("height", 375, "Generated image height.")
_QUALITY = flags.DEFINE_integer("quality", 90, "JPEG quality of the generated images.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per batch (the paper's 128).")
_BATCHES = flags.DEFINE_integer("batches", 6, "Timed batches per measurement.")
_ROUNDS = flags.DEFINE_integer("rounds", 10, "Measurements of every pipeline.")
_PIPELINES = flags.DEFINE_list(
    "pipelines",
    ["full", "bare", "bare_skipping", "bare_fused", "bare_central", "full_decoded",
     "full_prepared"],
    "Which pipelines to time.",
)
_DCT_METHOD = flags.DEFINE_enum(
    "dct_method", "INTEGER_FAST", ["INTEGER_FAST", "INTEGER_ACCURATE"], "libjpeg IDCT."
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where to write the images (default: a temp dir).")

# The targets for the figures this tool prints.
TARGET_IMAGES_PER_SECOND_PER_CORE = 500
TARGET_FULL_OVER_BARE = 0.9
NUM_CLASSES = 10
WARMUP_BATCHES = 2


def realistic_image(rng, height, width):
    """uint8 [height, width, 3]: colour fields smooth at four scales, plus pixel noise.

    At 500x375 and quality 90 these average about 100 kB, near ILSVRC-2012's 110 kB
    per training JPEG, so entropy decoding costs what it costs on ImageNet.
    """
    image = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 50.0), (16, 30.0), (64, 25.0), (160, 20.0)):
        coarse = rng.normal(size=(cells * height // width + 2, cells + 2, 3)).astype(np.float32)
        image += amplitude * tf.image.resize(coarse[None], [height, width], "bicubic")[0].numpy()
    image += rng.normal(scale=14.0, size=image.shape)
    return np.clip(image + 128.0, 0, 255).astype(np.uint8)


def write_image_folder(root, num_images, height, width, quality, seed=0):
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(num_images):
        path = os.path.join(root, "train", f"class{i % NUM_CLASSES}", f"{i:05d}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = tf.io.encode_jpeg(realistic_image(rng, height, width), quality=quality).numpy()
        with open(path, "wb") as f:
            f.write(data)
        sizes.append(len(data))
    return sum(sizes) / len(sizes)


def bare_dataset(examples, batch_size, central, dct_method, skipping=False, fused=False,
                 seed=0):
    """Decode, resize, random crop and flip only; same shuffling, parallelism and tf.data
    options as full."""
    size, crop = preprocessing.PAPER_IMAGE_SIZE, preprocessing.PAPER_CROP_SIZE
    zero_mean, zero_rgb = tf.zeros([size, size, 3]), tf.zeros([3])

    def augment(index, example):
        if fused:
            offset, flip, _ = ops.augmentation_draws(index, tf.zeros([3, 3]), seed, size, crop,
                                                     0.0)
            image = preprocessing.training_crop_from_bytes(
                example["image"], crop, zero_mean, offset, flip, zero_rgb, dct_method
            )
            return image, tf.cast(example["label"], tf.int32)
        crop_seed, _ = preprocessing.augmentation_seeds(seed, index)
        if central:
            image = preprocessing.decode_crop_and_resize(example["image"], size, size, 0, 0,
                                                         dct_method)
            image = preprocessing.random_crop_and_flip(image, crop, crop_seed)
        else:
            offset_y, offset_x, flip = preprocessing.random_crop_window(size, size, crop,
                                                                        crop_seed)
            image = preprocessing.decode_crop_and_resize(
                example["image"], size, crop, offset_y, offset_x, dct_method
            )
            image = preprocessing.flip_left_right_if(image, flip)
        return image, tf.cast(example["label"], tf.int32)

    examples = examples.shuffle(ip.DEFAULT_SHUFFLE_BUFFER, seed=seed).repeat()
    if skipping:
        counter = corrupt_images.CorruptImageCounter()
        batches = corrupt_images.map_and_batch_skipping_corrupt(
            examples, augment, counter, batch_size, True)
    else:
        batches = (
            examples.enumerate()
            .map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size, drop_remainder=True)
        )
    return ip.without_autotuning(ip.one_thread_per_image(batches.prefetch(tf.data.AUTOTUNE)))


def measure(iterator, batches, batch_size):
    """(images per wall second, images per CPU second of this process) over `batches`."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    images = batches * batch_size
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


def prepare_sources(workdir):
    """(the full-size image folder's source, the 256x256 prepared copy's), written once."""
    full_root, prepared_root = os.path.join(workdir, "full"), os.path.join(workdir, "prepared")
    if not os.path.isdir(full_root):
        mean_bytes = write_image_folder(
            full_root, _NUM_IMAGES.value, _HEIGHT.value, _WIDTH.value, _QUALITY.value
        )
        print(
            f"wrote {_NUM_IMAGES.value} JPEGs {_WIDTH.value}x{_HEIGHT.value}, quality "
            f"{_QUALITY.value}, mean {mean_bytes / 1e3:.0f} kB, in {full_root}"
        )
    source = data.load_source("image_folder", full_root)
    if not os.path.isdir(prepared_root):
        start = time.perf_counter()
        written = data.write_rescaled_image_folder(
            dataclasses.replace(source, dct_method=_DCT_METHOD.value),
            prepared_root,
            quality=_QUALITY.value,
        )
        rate = written["train"] / (time.perf_counter() - start)
        print(
            f"prepared 256x256 JPEGs once (data.write_rescaled_image_folder) at {rate:.0f} images/s"
        )
    return source, data.load_source("image_folder", prepared_root)


def pipeline_builders(source, prepared, stats):
    """{name: () -> the pipeline's dataset} of every pipeline this tool can time."""
    batch, dct = _BATCH_SIZE.value, _DCT_METHOD.value
    encoded = source.encoded_train
    return {
        "full": lambda: ip.make_train_dataset(
            encoded, stats, batch, corrupt_counter=source.corrupt_counter, dct_method=dct),
        "bare": lambda: bare_dataset(encoded, batch, False, dct),
        "bare_skipping": lambda: bare_dataset(encoded, batch, False, dct, skipping=True),
        "bare_fused": lambda: bare_dataset(encoded, batch, False, dct, skipping=True,
                                           fused=True),
        "bare_central": lambda: bare_dataset(encoded, batch, True, dct),
        # Source.train is shuffled at file level already. A shuffle buffer of decoded
        # images larger than this small data set would hold a whole epoch, decoded before
        # the timing starts, and time only its draining.
        "full_decoded": lambda: ip.make_train_dataset(
            dataclasses.replace(source, dct_method=dct).train, stats, batch, shuffle_buffer=0,
            dct_method=dct),
        "full_prepared": lambda: ip.make_train_dataset(
            prepared.encoded_train, stats, batch, corrupt_counter=prepared.corrupt_counter,
            dct_method=dct),
    }


def time_pipelines(builders):
    """{name: [(images/s, images per CPU-second) per round]}, the pipelines in turn."""
    results = {name: [] for name in _PIPELINES.value}
    for _ in range(_ROUNDS.value):
        for name in _PIPELINES.value:
            # A fresh iterator for every measurement: a live one would keep prefetching
            # in the background while the others are timed.
            iterator = iter(builders[name]())
            for _ in range(WARMUP_BATCHES):
                next(iterator)
            results[name].append(measure(iterator, _BATCHES.value, _BATCH_SIZE.value))
            del iterator
    return results


def report(results, cores):
    """Prints the medians, the targets and the ratios between pipelines."""
    print(f"{'pipeline':<15}{'images/s':>10}{'per core':>10}{'per CPU-s':>11}")
    medians = {}
    for name, runs in results.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        medians[name] = (wall, cpu)
        print(f"{name:<15}{wall:>10.0f}{wall / cores:>10.0f}{cpu:>11.0f}")

    if "full" in medians:
        wall, cpu = medians["full"]
        passed = "meets" if wall / cores >= TARGET_IMAGES_PER_SECOND_PER_CORE else "misses"
        print(
            f"\nfull: {wall / cores:.0f} images/s per core (wall / nproc), {cpu:.0f} per "
            f"CPU-second; {passed} the target of {TARGET_IMAGES_PER_SECOND_PER_CORE} by wall clock"
        )
    for bare in ("bare", "bare_skipping", "bare_fused", "bare_central"):
        if "full" not in results or bare not in results:
            continue
        ratios = [f[0] / b[0] for f, b in zip(results["full"], results[bare])]
        cpu_ratios = [f[1] / b[1] for f, b in zip(results["full"], results[bare])]
        ratio, cpu_ratio = statistics.median(ratios), statistics.median(cpu_ratios)
        passed = "meets" if ratio >= TARGET_FULL_OVER_BARE else "misses"
        print(
            f"full / {bare}: {ratio:.3f} by wall clock, {cpu_ratio:.3f} by CPU time (median of "
            f"per-round ratios); {passed} the target of {TARGET_FULL_OVER_BARE}"
        )
    if "full" in medians and "full_prepared" in medians:
        print(
            f"prepared 256 / on the fly: {medians['full_prepared'][0] / medians['full'][0]:.2f}x "
            "by wall clock"
        )


def main(argv):
    del argv
    cores = os.cpu_count()
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="bench_input_pipeline_")
    source, prepared = prepare_sources(workdir)
    stats = dataset_stats.compute_stats(source.encoded_train, progress=False)
    load_before = os.getloadavg()[0]
    results = time_pipelines(pipeline_builders(source, prepared, stats))
    load_after = os.getloadavg()[0]
    print(
        f"\nTensorFlow {tf.__version__}, {cores} cores, load average {load_before:.1f} -> "
        f"{load_after:.1f}, batch {_BATCH_SIZE.value}, {_BATCHES.value} batches x "
        f"{_ROUNDS.value} rounds, dct_method={_DCT_METHOD.value}, "
        f"TF_CPU_ALLOCATOR_USE_BFC={os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', 'unset')}; medians:"
    )
    report(results, cores)
    print(f"corrupt images skipped: {source.corrupt_count()}")


if __name__ == "__main__":
    app.run(main)
