"""Dropping the examples whose image will not decode, and saying which they were.

A corrupt or truncated file must not stop an epoch halfway: the dataset builders map
their per-image work through `map_skipping_corrupt` or `map_and_batch_skipping_corrupt`,
which drop an example whose map raises (tf.data's `ignore_errors`) and find the gaps
in the stream's indices. Each dropped example is reported in one log line naming it
(its "id": an image folder's file path, or the TFDS file name) and why it failed, and
counted in the source's `CorruptImageCounter`.
"""

import threading

import numpy as np
import tensorflow as tf
from absl import logging

from alexnet_tf import preprocessing

# Examples whose ids are noted at a time, ahead of the map that may drop them: one
# Python call per this many examples keeps the cost off the per-image path.
_ID_NOTE_BATCH = 256


def decode_failure(image_bytes):
    """Why `image_bytes` does not decode, in one line; None if it does."""
    try:
        preprocessing.decode_image(image_bytes).numpy()
    except tf.errors.OpError as e:
        return e.message.strip().splitlines()[0]
    return None


class CorruptImageCounter:
    """The examples dropped so far because their image could not be decoded.

    Shared by every pipeline built from one source and safe to read while they run.
    Images are counted when the pipeline reaches them, which prefetching puts a few
    batches ahead of the training step.

    explain: example id -> why its image does not decode (one line), for the log;
      e.g. a source of files reads the file again and decodes it. Default: no reason.
    """

    def __init__(self, explain=None):
        self._lock = threading.Lock()
        self._count = 0
        self._explain = explain

    def add(self, example_ids):
        """Counts the dropped examples (their ids, b"" where unknown), one log line each."""
        for example_id in example_ids:
            with self._lock:
                self._count += 1
                total = self._count
            name = example_id.decode(errors="replace") if example_id else "an image"
            reason = None
            if example_id and self._explain is not None:
                reason = self._explain(name)
            logging.warning("Skipped %s: %s (%d undecodable so far).", name,
                            reason or "it could not be decoded", total)
        return total if example_ids else self.count()

    def count(self):
        with self._lock:
            return self._count


class _StreamIds:
    """The ids of one stream's examples by index, noted before the map that may drop
    them, so that a gap can be reported by name; forgotten once past."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = {}

    def note(self, indices, ids):
        with self._lock:
            self._ids.update(zip(indices.numpy().tolist(), ids.numpy().tolist()))
        return np.int64(0)

    def take(self, missing, up_to):
        """The ids of the `missing` indices; everything up to `up_to` is forgotten."""
        with self._lock:
            ids = [self._ids.get(index, b"") for index in missing]
            for index in [i for i in self._ids if i <= up_to]:
                del self._ids[index]
        return ids


def _noting_ids(indexed, stream_ids):
    """(index, example) unchanged, with each batch of ids noted in stream_ids."""
    if "id" not in indexed.element_spec[1]:
        return indexed

    def note(indices, examples):
        noted = tf.py_function(stream_ids.note, [indices, examples["id"]], tf.int64)
        with tf.control_dependencies([noted]):
            return tf.identity(indices), examples

    return indexed.batch(_ID_NOTE_BATCH).map(note).unbatch()


# Appended to every finite stream of encoded examples: an 8x8 grey JPEG whose comment
# segment (ignored by decoders) makes its bytes unlike any real image's.
_SENTINEL_COMMENT = b"alexnet_tf: end of pass"


def _sentinel_jpeg():
    jpeg = tf.io.encode_jpeg(tf.fill([8, 8, 3], tf.constant(128, tf.uint8))).numpy()
    comment = b"\xff\xfe" + (len(_SENTINEL_COMMENT) + 2).to_bytes(2, "big") + _SENTINEL_COMMENT
    return jpeg[:2] + comment + jpeg[2:]


def _sentinel_like(element_spec):
    """A valid example with the given structure: the sentinel JPEG and zeros elsewhere."""
    sentinel = {}
    for key, spec in element_spec.items():
        if key == "image":
            sentinel[key] = tf.constant(_sentinel_jpeg())
        else:
            sentinel[key] = tf.zeros(spec.shape, spec.dtype)
    return sentinel


def _is_finite(dataset):
    return int(dataset.cardinality()) != int(tf.data.INFINITE_CARDINALITY)


def _map_indexed(examples, fn, num_parallel_calls, stream_ids):
    """(index, fn(index, example)) in order, dropping the examples fn raises on.

    A finite stream gets a valid sentinel appended, whose index closes the last gap so
    that counts are exact at the end of every pass; its elements are then
    (index, (is_real, output)), the flag read from the bytes inside the same map. An
    endless stream needs none.
    """
    finite = _is_finite(examples)
    if finite:
        sentinel = _sentinel_like(examples.element_spec)
        examples = examples.concatenate(tf.data.Dataset.from_tensors(sentinel))

    def apply(index, example):
        output = fn(index, example)
        if finite:
            return index, (tf.not_equal(example["image"], sentinel["image"]), output)
        return index, output

    indexed = _noting_ids(examples.enumerate(), stream_ids)
    mapped = indexed.map(apply, num_parallel_calls=num_parallel_calls, deterministic=True)
    # Our own line per dropped example replaces TensorFlow's multi-line warning.
    return mapped.ignore_errors(log_warning=False)


def _drop_flag(real, output):
    del real
    return output


class _BatchGapCounter:
    """Finds the indices missing before and inside each batch of an ordered stream and
    reports them.

    Python state, updated once per batch: far cheaper than a per-example `scan`. It
    follows one iterator at a time; a batch whose first index falls below the next
    expected one starts a new pass.
    """

    def __init__(self, counter, stream_ids):
        self._counter = counter
        self._stream_ids = stream_ids
        self._expected = 0

    def observe(self, indices):
        indices = indices.numpy().tolist()
        if indices[0] < self._expected:
            self._expected = 0
        present = set(indices)
        missing = [i for i in range(self._expected, indices[-1] + 1) if i not in present]
        self._expected = indices[-1] + 1
        if missing:
            self._counter.add(self._stream_ids.take(missing, indices[-1]))
        return np.int64(len(missing))


def map_skipping_corrupt(examples, fn, counter, num_parallel_calls=tf.data.AUTOTUNE):
    """fn(index, example) over a stream of encoded examples, dropping and counting failures.

    `index` counts the examples from 0 in stream order (it is the same for the same
    example in every run, so it serves as a seed). The map runs in parallel but keeps
    the order; an example whose fn raises (corrupt or truncated data, an unreadable
    file) is dropped by `ignore_errors`, reported and added to `counter`. For outputs
    of one shape, `map_and_batch_skipping_corrupt` does the same at a lower cost per
    example.
    """
    stream_ids = _StreamIds()

    def report(expected, index):
        missing = list(range(int(expected), int(index)))
        counter.add(stream_ids.take(missing, int(index)))
        return np.int64(len(missing))

    def count_gap(expected, element):
        index, output = element
        reported = tf.cond(
            index > expected,
            lambda: tf.py_function(report, [expected, index], tf.int64),
            lambda: tf.constant(0, tf.int64),
        )
        with tf.control_dependencies([reported]):
            next_expected = tf.identity(index + 1)
        return next_expected, output

    counted = _map_indexed(examples, fn, num_parallel_calls, stream_ids).scan(
        tf.constant(0, tf.int64), count_gap
    )
    if _is_finite(examples):
        counted = counted.filter(lambda real, output: real).map(_drop_flag)
    return counted


def map_and_batch_skipping_corrupt(
    examples, fn, counter, batch_size, drop_remainder=False, num_parallel_calls=tf.data.AUTOTUNE
):
    """Batches of fn(index, example), dropping and counting the examples fn raises on.

    As `map_skipping_corrupt`, for fn whose outputs all have one shape; the gaps are
    found once per batch.
    """
    finite = _is_finite(examples)
    stream_ids = _StreamIds()
    gaps = _BatchGapCounter(counter, stream_ids)

    def count(index, output):
        missing = tf.py_function(gaps.observe, [index], tf.int64)
        with tf.control_dependencies([missing]):
            return tf.nest.map_structure(tf.identity, output)

    def drop_sentinel(real, output):
        return tf.cond(
            tf.reduce_all(real),
            lambda: output,
            lambda: tf.nest.map_structure(lambda t: tf.boolean_mask(t, real), output),
        )

    def batch_length(*output):
        return tf.shape(tf.nest.flatten(output)[0])[0]

    # ignore_errors keeps the map from fusing with the batching, so the batch copies its
    # elements in parallel itself.
    batches = _map_indexed(examples, fn, num_parallel_calls, stream_ids).batch(
        batch_size,
        drop_remainder=drop_remainder and not finite,
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    batches = batches.map(count)
    if not finite:
        return batches
    batches = batches.map(drop_sentinel).filter(lambda *output: batch_length(*output) > 0)
    if drop_remainder:
        batches = batches.filter(lambda *output: batch_length(*output) == batch_size)
        batches = batches.map(lambda *output: _with_batch_dim(output, batch_size))
    return batches


def _with_batch_dim(output, batch_size):
    fixed = tf.nest.map_structure(
        lambda t: tf.ensure_shape(t, [batch_size] + t.shape[1:].as_list()), output
    )
    return fixed if len(fixed) > 1 else fixed[0]


def decode_examples(examples, counter, dct_method=preprocessing.DEFAULT_DCT_METHOD):
    """{"image": encoded bytes, ...} -> {"image": uint8 [H, W, 3], ...}, corrupt ones dropped."""
    return map_skipping_corrupt(
        examples,
        lambda index, example: {**example,
                                "image": preprocessing.decode_image(example["image"], dct_method)},
        counter,
    )
