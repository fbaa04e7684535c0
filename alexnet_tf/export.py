"""Exports a trained network as a SavedModel that serving tools load.

The graph holds only standard TensorFlow ops: the network is rebuilt by the
same builder with the LRN computed by `ops.local_response_normalization_portable`
(numerically the compiled op where the squares are finite) and no device placement, so `tf.saved_model.load`
and `saved_model_cli` work in a process that has never imported alexnet_tf.
`keep_custom_op=True` keeps the compiled op instead (the loader must then load
its library first). Each weight is stored once.

Signatures, one serving function (`ServingModule.predict_crops`) behind both, with the
evaluation preprocessing that training's validation uses too
(`preprocessing.eval_crops_from_bytes` / `_from_pixels`: the centre crop of the
rescaled central square with the mean image subtracted, or the softmax averaged over
ten crops):
  serving_default(images: string [N])       JPEG, PNG, GIF, BMP or WebP bytes of any size.
  serve_images(images: uint8 [N, H, W, 3])  a batch of decoded images of one size.
Outputs: probabilities [N, C], top5_classes int32 [N, 5], top5_probabilities
[N, 5], top5_class_names string [N, 5], features float32 [N, 4096] (fc7).
An element of `images` that does not decode fails the request with an
InvalidArgumentError naming its index in the batch, and so does one whose header
declares more than `max_image_pixels` pixels (default 2^28, 268 million: a 16384 x
16384 image, past any camera's photograph), before any pixel is decoded, so that a
decompression bomb (a few KB of PNG that decode to gigabytes) costs a server
milliseconds and no memory. An empty batch returns empty outputs.

    python -m alexnet_tf.export --model_dir=MODEL_DIR [--output=DIR] [--ten_crop] [--overwrite]
        [--max_image_pixels=N] [--tflite]

With --tflite the export also holds `model.tflite`: the `serve_images` signature as a
LiteRT (TensorFlow Lite) model, converted by TensorFlow's own converter, for phones
and edge devices; it takes the same uint8 [N, H, W, 3] batch and returns the same
outputs.

The output must not exist (or be an empty directory), unless it is a SavedModel this
command wrote before and --overwrite is given; a model directory is never accepted as
the output. The SavedModel is written beside it and renamed into place when complete,
so a failure leaves nothing behind.
"""

import json
import os
import sys

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import files, model_dir, preprocessing
from alexnet_tf import conv_gradients
from alexnet_tf import model as model_lib

TOP_K = 5
# The most pixels serving_default decodes in one image: its decoded RGB is 768 MiB.
DEFAULT_MAX_IMAGE_PIXELS = 2**28
# Beside saved_model.pb: what a reader needs to know without running the graph, and the
# mark of a SavedModel this module wrote.
INFO_FILE = "alexnet_tf.json"
# Beside it with --tflite: serve_images as a LiteRT model.
TFLITE_FILE = "model.tflite"
TFLITE_SIGNATURE = "serve_images"


class ExportError(model_dir.TrainingError):
    """An export that would overwrite what it must not; nothing was written."""


class ServingModule(tf.Module):
    """The network, its mean image and class names, behind two serving functions."""

    def __init__(self, network, mean_image, class_names, crop_size, ten_crop,
                 max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__()
        features = model_lib.feature_model(network)
        # Not tracked as an attribute: the SavedModel would store the Keras variables
        # and the tf.Variables behind them, each weight twice. The functions capture
        # the tf.Variables, tracked once here, which TF1-style loaders (saved_model_cli
        # run) also need.
        object.__setattr__(self, "_logits_and_features",
                           keras.Model(network.inputs, [network.output, features.output]))
        self.tf_variables = [v.value for v in network.weights]
        self.mean_image = tf.Variable(tf.constant(mean_image, tf.float32), trainable=False,
                                      name="mean_image")
        self.class_names = tf.Variable(tf.constant(list(class_names)), trainable=False,
                                       name="class_names")
        self.crop_size = int(crop_size)
        self.ten_crop = bool(ten_crop)
        self.max_image_pixels = int(max_image_pixels)
        self.num_classes = int(network.output.shape[-1])
        self.num_features = int(features.output.shape[-1])

    def predict_crops(self, crops):
        """The output dict of a batch of evaluation inputs: [N, crop, crop, 3], or
        [N, 10, crop, crop, 3] whose softmax (and fc7 feature) is averaged; empty
        outputs for N = 0, which the network's convolutions do not take."""
        return tf.cond(tf.shape(crops)[0] > 0, lambda: self._predict(crops), self._no_outputs)

    def _no_outputs(self):
        k = min(TOP_K, self.num_classes)
        return {
            "probabilities": tf.zeros([0, self.num_classes], tf.float32),
            "top5_classes": tf.zeros([0, k], tf.int32),
            "top5_probabilities": tf.zeros([0, k], tf.float32),
            "top5_class_names": tf.fill([0, k], ""),
            "features": tf.zeros([0, self.num_features], tf.float32),
        }

    def _predict(self, crops):
        with conv_gradients.forward_only():  # serving is never differentiated
            return self._predict_outputs(crops)

    def _predict_outputs(self, crops):
        count = 10 if self.ten_crop else 1
        if self.ten_crop:
            crops = model_lib.flatten_crops(crops)
        logits, features = self._logits_and_features(crops, training=False)
        probabilities = model_lib.crop_probabilities(logits, count)
        features = model_lib.average_over_crops(features, count)
        k = min(TOP_K, probabilities.shape[-1])
        top = tf.math.top_k(probabilities, k=k)
        return {
            "probabilities": probabilities,
            "top5_classes": top.indices,
            "top5_probabilities": top.values,
            "top5_class_names": tf.gather(self.class_names, top.indices),
            "features": features,
        }

    def _crop_spec(self):
        shape = [self.crop_size, self.crop_size, 3]
        return tf.TensorSpec([10] + shape if self.ten_crop else shape, tf.float32)

    def _decode(self, index, encoded):
        """(index, crops, too large): the crops of one encoded image, or zeros without
        decoding it where its header declares more than max_image_pixels pixels."""
        height, width = preprocessing.encoded_image_size(encoded)
        too_large = height * width > self.max_image_pixels
        crops = tf.cond(
            too_large, lambda: tf.zeros(self._crop_spec().shape, tf.float32),
            lambda: preprocessing.eval_crops_from_bytes(
                encoded, self.mean_image, self.crop_size, ten_crop=self.ten_crop))
        return index, crops, too_large

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        count = tf.shape(images, out_type=tf.int64)[0]
        # tf.data, so that an element that does not decode is dropped rather than
        # failing the batch with a message that names no element; the request then
        # fails below, naming the missing ones.
        # Each request builds and ends its own iterator: without tf.data's autotuning
        # thread (which ending it would wait for) and its graph rewrites, which cost more
        # per request than they save on a few images.
        options = tf.data.Options()
        options.autotune.enabled = False
        options.experimental_optimization.apply_default_optimizations = False
        decoded = (
            tf.data.Dataset.from_tensor_slices(images).enumerate()
            .map(self._decode).ignore_errors(log_warning=False)
            .batch(tf.maximum(count, 1))).with_options(options)
        empty = (tf.zeros([0], tf.int64), tf.zeros([0] + self._crop_spec().shape, tf.float32),
                 tf.zeros([0], tf.bool))
        indices, crops, too_large = decoded.reduce(
            empty, lambda done, batch: tuple(tf.concat([d, b], 0) for d, b in zip(done, batch)))
        missing = tf.sparse.to_dense(tf.sets.difference(tf.range(count)[None], indices[None]))[0]
        checks = [
            tf.debugging.Assert(
                tf.logical_not(tf.reduce_any(too_large)),
                [f"images[i] declares more than {self.max_image_pixels} pixels (the export's "
                 "--max_image_pixels), for i in", tf.boolean_mask(indices, too_large)],
                summarize=64),
            tf.debugging.Assert(
                tf.equal(tf.size(missing), 0),
                ["images[i] is not a decodable JPEG, PNG, GIF, BMP or WebP image, for i in",
                 missing], summarize=64),
        ]
        with tf.control_dependencies(checks):
            crops = tf.identity(crops)
        return self.predict_crops(crops)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(self, images):
        crops = tf.map_fn(
            lambda image: preprocessing.eval_crops_from_pixels(
                image, self.mean_image, self.crop_size, ten_crop=self.ten_crop),
            images, fn_output_signature=self._crop_spec())
        return self.predict_crops(crops)


def is_export(directory):
    """True for a SavedModel directory written by this module."""
    return (os.path.isfile(os.path.join(directory, "saved_model.pb"))
            and os.path.isfile(os.path.join(directory, INFO_FILE)))


def check_output(export_dir, overwrite):
    """Refuses an output that the export would have to delete and did not write.

    Raises:
      ExportError: for a model directory, a file, a non-empty directory that is not an
        alexnet_tf export, or an existing export without `overwrite`.
    """
    if model_dir.is_model_dir(export_dir):
        raise ExportError(f"{export_dir} is a model directory; the SavedModel goes in a "
                          f"directory of its own (by default {model_dir.EXPORT_DIR}/ inside it).")
    if not os.path.lexists(export_dir):
        return
    if not os.path.isdir(export_dir):
        raise ExportError(f"{export_dir} exists and is not a directory; nothing was written.")
    if not os.listdir(export_dir):
        return
    if not is_export(export_dir):
        raise ExportError(f"{export_dir} is not empty and is not a SavedModel written by "
                          "alexnet_tf.export; nothing was written. Choose another --output.")
    if not overwrite:
        raise ExportError(f"{export_dir} holds an earlier export; pass --overwrite to "
                          "replace it.")


def tflite_model(saved_model_dir):
    """The bytes of a LiteRT model of a SavedModel's serve_images signature."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[TFLITE_SIGNATURE])
    return converter.convert()


def export_saved_model(model_config, num_classes, weights, stats, class_names, export_dir,
                       ten_crop=False, keep_custom_op=False, replace=False,
                       class_descriptions=None, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                       tflite=False):
    """Writes the SavedModel of a network with `weights` (from the same builder and
    config) to export_dir. Its `top5_class_names` are the class_descriptions where
    given (words for ImageNet's synset ids), else the class names; the names are kept
    in INFO_FILE. An existing export_dir is replaced only if it is an earlier export of
    this module and `replace` is set (see `check_output`). Returns export_dir.
    """
    check_output(export_dir, replace)
    if tflite and keep_custom_op:
        raise ExportError("--tflite needs the standard-op LRN: LiteRT has no alexnet_tf op; "
                          "leave out --keep_custom_op.")
    if max_image_pixels < 1:
        raise ExportError(f"--max_image_pixels must be at least 1, got {max_image_pixels}.")
    network = model_dir.create_model(
        model_config, num_classes,
        tower_devices=(None,) * model_config.towers,
        dtype_policy="float32",
        lrn_use_reference=not keep_custom_op,
        dropout_rate=model_config.dropout_rate,
    )
    network.set_weights([np.asarray(w, np.float32) for w in weights])
    module = ServingModule(network, stats.mean_image, class_descriptions or class_names,
                           model_config.crop_size, ten_crop, max_image_pixels)
    with files.staged_directory(export_dir, lambda path: check_output(path, replace)) as staging:
        tf.saved_model.save(
            module, staging,
            signatures={"serving_default": module.serve_encoded,
                        "serve_images": module.serve_images},
            # Serving needs no gradients, and the towers' are device-placed functions.
            options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
        )
        with open(os.path.join(staging, INFO_FILE), "w") as f:
            json.dump({"num_classes": num_classes, "image_size": model_config.image_size,
                       "crop_size": model_config.crop_size, "ten_crop": ten_crop,
                       "max_image_pixels": max_image_pixels,
                       "standard_ops_only": not keep_custom_op,
                       "tflite": TFLITE_FILE if tflite else None,
                       "class_names": list(class_names)}, f, indent=2)
        if tflite:
            files.write_bytes_atomically(os.path.join(staging, TFLITE_FILE),
                                         tflite_model(staging))
    return export_dir


def export_from_model_dir(workdir, output=None, ten_crop=False, keep_custom_op=False,
                          overwrite=False, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                          tflite=False):
    """Exports the newest intact checkpoint of a training run's model directory."""
    export_dir = output or os.path.join(workdir, model_dir.EXPORT_DIR)
    if os.path.abspath(export_dir) == os.path.abspath(workdir):
        raise ExportError(f"--output={output} is the model directory itself; the SavedModel "
                          "goes in a directory of its own.")
    check_output(export_dir, overwrite)
    restored = model_dir.restore(workdir)
    return export_saved_model(restored.config, len(restored.class_names),
                              restored.network.get_weights(), restored.stats,
                              restored.class_names, export_dir, ten_crop=ten_crop,
                              keep_custom_op=keep_custom_op, replace=overwrite,
                              class_descriptions=restored.class_descriptions,
                              max_image_pixels=max_image_pixels, tflite=tflite)


def main(values):
    try:
        path = export_from_model_dir(
            values["model_dir"], values["output"], values["ten_crop"], values["keep_custom_op"],
            values["overwrite"], values["max_image_pixels"], values["tflite"])
    except (model_dir.TrainingError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"Exported {values['model_dir']} to {path}")


if __name__ == "__main__":
    from absl import flags

    from alexnet_tf import command

    command.run(main, {
        "model_dir": flags.DEFINE_string("model_dir", None, "A training run's model directory.",
                                         required=True),
        "output": flags.DEFINE_string(
            "output", None, "Where to write the SavedModel (default MODEL_DIR/export); must "
            "not exist, or be an earlier export with --overwrite."),
        "ten_crop": flags.DEFINE_bool("ten_crop", False, "Average the softmax over ten crops."),
        "keep_custom_op": flags.DEFINE_bool(
            "keep_custom_op", False,
            "Keep the compiled LRN op (loaders must load alexnet_tf's library)."),
        "overwrite": flags.DEFINE_bool(
            "overwrite", False, "Replace an earlier export of this command at --output."),
        "max_image_pixels": flags.DEFINE_integer(
            "max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS, "serving_default refuses an image "
            "whose header declares more pixels, before decoding it.", lower_bound=1),
        "tflite": flags.DEFINE_bool(
            "tflite", False, f"Also write {TFLITE_FILE}: serve_images as a LiteRT model."),
    })
