"""Exports a trained network as a SavedModel that serving tools load.

The graph holds only standard TensorFlow ops: the network is rebuilt by the
same builder with the LRN computed by `ops.local_response_normalization_reference`
(numerically the compiled op) and no device placement, so `tf.saved_model.load`
and `saved_model_cli` work in a process that has never imported alexnet_tf.
`keep_custom_op=True` keeps the compiled op instead (the loader must then load
its library first).

Signatures, both with the paper's preprocessing in the graph (shorter side to
`image_size`, centre crop, mean image subtracted, centre `crop_size` crop or the
softmax averaged over ten crops):
  serving_default(images: string [N])       JPEG or PNG bytes of any size.
  serve_images(images: uint8 [N, H, W, 3])  a batch of decoded images of one size.
Outputs: probabilities [N, C], top5_classes int32 [N, 5], top5_probabilities
[N, 5], top5_class_names string [N, 5], features float32 [N, 4096] (fc7).

    python -m alexnet_tf.export --model_dir=MODEL_DIR [--output=DIR] [--ten_crop]
"""

import json
import os
import shutil
import sys

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import input_pipeline, model as model_lib

TOP_K = 5
# Beside saved_model.pb: what a reader needs to know without running the graph.
INFO_FILE = "alexnet_tf.json"


class ServingModule(tf.Module):
    """The network, its mean image and class names, behind two serving functions."""

    def __init__(self, network, mean_image, class_names, image_size, crop_size, ten_crop):
        super().__init__()
        features = model_lib.feature_model(network)
        self.logits_and_features = keras.Model(network.inputs, [network.output, features.output])
        # The tf.Variables behind the Keras variables, tracked directly: without them
        # the SavedModel's restore op does not cover the variables its functions
        # read, and TF1-style loaders (saved_model_cli run) fail.
        self.tf_variables = [v.value for v in network.weights]
        self.mean_image = tf.Variable(tf.constant(mean_image, tf.float32), trainable=False,
                                      name="mean_image")
        self.class_names = tf.Variable(tf.constant(list(class_names)), trainable=False,
                                       name="class_names")
        self.image_size = int(image_size)
        self.crop_size = int(crop_size)
        self.ten_crop = bool(ten_crop)

    def _predict(self, images):
        """float32 [N, image_size, image_size, 3] pixels -> the output dict."""
        centred = input_pipeline.subtract_mean(images, self.mean_image)
        if self.ten_crop:
            crops = tf.map_fn(
                lambda image: input_pipeline.ten_crop(image, self.crop_size), centred,
                fn_output_signature=tf.TensorSpec([10, self.crop_size, self.crop_size, 3],
                                                  tf.float32),
            )
            flat = tf.reshape(crops, [-1, self.crop_size, self.crop_size, 3])
            logits, features = self.logits_and_features(flat, training=False)
            probabilities = tf.reduce_mean(
                tf.reshape(tf.nn.softmax(tf.cast(logits, tf.float32)),
                           [-1, 10, tf.shape(logits)[-1]]), axis=1)
            features = tf.reduce_mean(
                tf.reshape(tf.cast(features, tf.float32), [-1, 10, tf.shape(features)[-1]]),
                axis=1)
        else:
            crops = input_pipeline.center_crop(centred, self.crop_size)
            logits, features = self.logits_and_features(crops, training=False)
            probabilities = tf.nn.softmax(tf.cast(logits, tf.float32))
            features = tf.cast(features, tf.float32)
        k = min(TOP_K, probabilities.shape[-1])
        top = tf.math.top_k(probabilities, k=k)
        return {
            "probabilities": probabilities,
            "top5_classes": top.indices,
            "top5_probabilities": top.values,
            "top5_class_names": tf.gather(self.class_names, top.indices),
            "features": features,
        }

    def _resize(self, image):
        return input_pipeline.resize_shorter_and_center_crop(image, self.image_size)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def serve_encoded(self, images):
        def decode(encoded):
            image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
            return self._resize(image)

        resized = tf.map_fn(
            decode, images,
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32),
        )
        return self._predict(resized)

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    def serve_images(self, images):
        resized = tf.map_fn(
            self._resize, images,
            fn_output_signature=tf.TensorSpec([self.image_size, self.image_size, 3], tf.float32),
        )
        return self._predict(resized)


def export_saved_model(model_config, num_classes, weights, stats, class_names, export_dir,
                       ten_crop=False, keep_custom_op=False):
    """Writes the SavedModel of a network with `weights` (from the same builder and
    config) to export_dir, replacing what was there only once the new one is complete.
    Returns export_dir."""
    from alexnet_tf import trainer

    network = trainer.create_model(
        model_config, num_classes,
        tower_devices=(None,) * model_config.towers,
        dtype_policy="float32",
        lrn_use_reference=not keep_custom_op,
        dropout_rate=model_config.dropout_rate,
    )
    network.set_weights([np.asarray(w, np.float32) for w in weights])
    module = ServingModule(network, stats.mean_image, class_names, model_config.image_size,
                           model_config.crop_size, ten_crop)
    staging = export_dir.rstrip("/") + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    tf.saved_model.save(
        module, staging,
        signatures={"serving_default": module.serve_encoded, "serve_images": module.serve_images},
        # Serving needs no gradients, and the towers' are device-placed functions.
        options=tf.saved_model.SaveOptions(experimental_custom_gradients=False),
    )
    with open(os.path.join(staging, INFO_FILE), "w") as f:
        json.dump({"num_classes": num_classes, "image_size": model_config.image_size,
                   "crop_size": model_config.crop_size, "ten_crop": ten_crop,
                   "standard_ops_only": not keep_custom_op}, f, indent=2)
    if os.path.exists(export_dir):
        shutil.rmtree(export_dir)
    os.replace(staging, export_dir)
    return export_dir


def export_from_model_dir(model_dir, output=None, ten_crop=False, keep_custom_op=False):
    """Exports the latest checkpoint of a training run's model directory."""
    from alexnet_tf import inference, trainer

    config, network, class_names, stats, _ = inference.restore_model_dir(model_dir)
    return export_saved_model(config, len(class_names), network.get_weights(), stats,
                              class_names, output or os.path.join(model_dir, trainer.EXPORT_DIR),
                              ten_crop=ten_crop, keep_custom_op=keep_custom_op)


def main(argv):
    from absl import flags

    from alexnet_tf import trainer

    del argv
    f = flags.FLAGS
    try:
        path = export_from_model_dir(f.model_dir, f.output, f.ten_crop, f.keep_custom_op)
    except (trainer.TrainingError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"Exported {f.model_dir} to {path}")


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("model_dir", None, "A training run's model directory.", required=True)
    flags.DEFINE_string("output", None, "Where to write the SavedModel (default MODEL_DIR/export).")
    flags.DEFINE_bool("ten_crop", False, "Average the softmax over ten crops.")
    flags.DEFINE_bool("keep_custom_op", False,
                      "Keep the compiled LRN op (loaders must load alexnet_tf's library).")
    app.run(main)
