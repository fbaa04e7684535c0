"""AlexNet the way `keras.applications` ships every other ImageNet model.

    import alexnet_tf
    model = alexnet_tf.AlexNet(weights="runs/bvlc_alexnet")  # a model directory
    probabilities = model.predict(images)  # [N, crop, crop, 3], pixel values 0-255
    alexnet_tf.decode_predictions(probabilities, top=5)

`AlexNet(weights=None)` is the paper's network with the paper's initialisation;
`weights=MODEL_DIR` takes a model directory's network, weights, classes and mean image
(one trained by `alexnet_tf.train`, or Caffe's bvlc_alexnet imported by
`alexnet_tf.import_caffe`). The model holds its preprocessing as its first layer
(`SubtractMean`: the centre crop of the mean image at the crop size; with no model
directory, ImageNet's per-channel means), so it takes RGB crops of the crop size with
pixel values 0-255, as Keras' applications take their images. It fine-tunes with
`model.fit`, and saves to and loads from a `.keras` file (`keras.models.load_model`
after `import alexnet_tf`: every layer is registered with Keras).
"""

import keras
import numpy as np

from alexnet_tf import config as config_lib, import_caffe, preprocessing, settings
from alexnet_tf import model as model_lib

# ImageNet's per-channel means in RGB, the preprocessing of AlexNet(weights=None).
IMAGENET_RGB_MEAN = import_caffe.CAFFE_BGR_MEAN[::-1]
CLASSIFIER_ACTIVATIONS = ("softmax", None)

# The classes of the model AlexNet last built from a model directory, for
# decode_predictions: [(class id, description)].
_last_classes = []


@keras.saving.register_keras_serializable(package="alexnet_tf")
class SubtractMean(keras.layers.Layer):
    """x - mean, the mean an [H, W, 3] image (or [3] per-channel means) kept as a
    non-trainable weight, so that `.keras` files carry it."""

    def __init__(self, mean_shape, **kwargs):
        super().__init__(**kwargs)
        self.mean_shape = tuple(mean_shape)
        self.mean = self.add_weight(shape=self.mean_shape, initializer="zeros",
                                    trainable=False, name="mean")

    def call(self, inputs):
        return keras.ops.cast(inputs, self.compute_dtype) - keras.ops.cast(
            self.mean, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mean_shape": list(self.mean_shape)}


def _from_model_dir(path, classes):
    """(network, mean crop, [(class id, description)]) of a model directory."""
    from alexnet_tf import model_dir

    restored = model_dir.restore(path)
    if classes not in (None, 1000, len(restored.class_names)):
        raise ValueError(f"weights={path!r} has {len(restored.class_names)} classes, not "
                         f"classes={classes}; leave classes at its default.")
    mean = preprocessing.center_crop(np.asarray(restored.stats.mean_image, np.float32),
                                     restored.config.crop_size).numpy()
    return (restored.network, mean,
            list(zip(restored.class_names, restored.class_descriptions)))


def _paper_init(size, input_shape, classes):
    config = config_lib.TrainConfig(model_size=size)
    crop = (input_shape or model_lib.SIZES[size].input_shape)[0]
    network = model_lib.build_alexnet(
        classes, size=size, input_shape=(crop, crop, 3), tower_devices=(None,) * config.towers,
        seed=config.seed)
    return network, np.asarray(IMAGENET_RGB_MEAN, np.float32), [
        (f"class_{i}", f"class_{i}") for i in range(classes)]


def AlexNet(include_top=True, weights=None, input_shape=None, classes=1000,  # noqa: N802
            classifier_activation="softmax", size="paper"):
    """AlexNet as a Keras model of RGB crops [N, crop, crop, 3] with values 0-255.

    Args:
      include_top: end at fc8's class probabilities (or logits); False ends at fc7's
        4096-d features (512 for the small size), the paper's image representation
        (Section 6.1, Figure 4).
      weights: None for the paper's initialisation (Section 5), or the path of a model
        directory (alexnet_tf.train's, or alexnet_tf.import_caffe's).
      input_shape: (crop, crop, 3); default the size's (224 for the paper) or the
        model directory's crop.
      classes: fc8's width with weights=None; with a model directory, its classes.
      classifier_activation: "softmax" or None (logits), for include_top.
      size: "paper" or "small", with weights=None.
    """
    if size not in settings.MODEL_SIZES:
        raise ValueError(f"size must be one of {settings.MODEL_SIZES}, got {size!r}.")
    if classifier_activation not in CLASSIFIER_ACTIVATIONS:
        raise ValueError(f"classifier_activation must be one of {CLASSIFIER_ACTIVATIONS}, "
                         f"got {classifier_activation!r}.")
    if weights is None:
        network, mean, class_list = _paper_init(size, input_shape, classes)
    else:
        network, mean, class_list = _from_model_dir(weights, classes)
    crop = network.input.shape[1]
    if input_shape is not None and tuple(input_shape) != (crop, crop, 3):
        raise ValueError(f"input_shape must be ({crop}, {crop}, 3) for these weights, got "
                         f"{tuple(input_shape)}.")
    images = keras.Input((crop, crop, 3), name="images")
    subtract = SubtractMean(mean.shape, name="subtract_mean")
    x = subtract(images)
    subtract.mean.assign(mean)
    body = network if include_top else model_lib.feature_model(network)
    x = body(x)
    if include_top and classifier_activation == "softmax":
        x = keras.layers.Activation("softmax", dtype="float32", name="predictions")(x)
    _last_classes[:] = class_list
    return keras.Model(images, x, name="alexnet" if include_top else "alexnet_features")


def decode_predictions(preds, top=5):
    """[[(class id, description, probability)] * top] per row of preds, the classes
    those of the model AlexNet built last (the model directory's), as
    `keras.applications.imagenet_utils.decode_predictions` returns them."""
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != len(_last_classes):
        raise ValueError(f"decode_predictions expects [N, {len(_last_classes)}] predictions "
                         f"of the last AlexNet built, got shape {preds.shape}.")
    results = []
    for row in preds:
        order = np.argsort(-row, kind="stable")[:top]
        results.append([(*_last_classes[i], float(row[i])) for i in order])
    return results
