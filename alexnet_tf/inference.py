"""A trained network for the evaluation and figure tools, from either place it is kept.

`load_model(path)` takes a training run's model directory (config.json, classes.json,
dataset_stats.npz, checkpoints/) or a SavedModel written by `alexnet_tf.export`, and
gives a `LoadedModel` whose `predict(encoded)` returns the softmax and the fc7 features
of a batch of encoded images. Both kinds run the one serving function
(`export.ServingModule`, with the evaluation preprocessing training's validation uses
too: decode, central square rescaled, mean image subtracted, centre crop or ten crops),
so they give the same numbers: a model directory in this process,
with either crop mode; a SavedModel through its `serving_default` signature, with the
crop mode it was exported with.

The rest is what the tools share: the data source of a split, its examples in batches
of encoded images (undecodable ones dropped and counted), image files read and checked,
thumbnails, and the absl flags they have in common.
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from alexnet_tf import config as config_lib
from alexnet_tf import corrupt_images, data, export, input_pipeline, model_dir, preprocessing
from alexnet_tf import model as model_lib

CENTER = "center"
TEN_CROP = "ten_crop"
CROP_MODES = (CENTER, TEN_CROP)
SPLITS = data.SPLITS


class InferenceError(model_dir.TrainingError):
    """A model, image, index or dataset the tools cannot use; the message names it.

    A TrainingError, so that callers that catch the package's user errors catch it too.
    """


# What the commands report as a one-line error rather than a traceback: bad models,
# data, images or indexes, and files that cannot be read or written.
USER_ERRORS = (model_dir.TrainingError, OSError)


@dataclasses.dataclass
class LoadedModel:
    """A trained network behind one prediction function per crop mode it offers.

    `serve[mode](encoded)` maps a string tensor [N] of encoded images to the export's
    output dict. `config` is the training configuration (None for a SavedModel).
    `conv1_kernels` are conv1's weights, one [k, k, 3, filters] array per tower.
    `identity` names the weights: the checkpoint, or the SavedModel's directory.
    `class_names` are what the data calls the classes (ImageNet's synset ids);
    `class_descriptions` what a reader calls them (their words, where known).
    """

    path: str
    class_names: list
    serve: dict
    conv1_kernels: list
    identity: str
    config: object = None
    # What `serve` needs kept alive (its functions hold their module weakly).
    owner: object = None
    class_descriptions: list = None

    def __post_init__(self):
        self.class_descriptions = self.class_descriptions or list(self.class_names)

    @property
    def num_classes(self):
        return len(self.class_names)

    @property
    def crop_modes(self):
        return tuple(self.serve)

    def predict(self, encoded, crop_mode=None):
        """{"probabilities": [N, C], "features": [N, D]} (NumPy float32) for encoded
        images (bytes), with `crop_mode` (default: the first the model offers)."""
        crop_mode = crop_mode or self.crop_modes[0]
        if crop_mode not in self.serve:
            raise InferenceError(
                f"{self.path} offers only {', '.join(self.crop_modes)} (a SavedModel keeps "
                f"the crop mode it was exported with), not {crop_mode}.")
        outputs = self.serve[crop_mode](tf.constant(list(encoded), tf.string))
        return {key: outputs[key].numpy() for key in ("probabilities", "features")}


def _load_model_dir(workdir):
    restored = model_dir.restore(workdir)
    modules = {
        mode: export.ServingModule(restored.network, restored.stats.mean_image,
                                   restored.class_descriptions, restored.config.crop_size,
                                   ten_crop=mode == TEN_CROP)
        for mode in CROP_MODES
    }
    return LoadedModel(workdir, restored.class_names,
                       {mode: module.serve_encoded for mode, module in modules.items()},
                       model_lib.conv1_kernels(restored.network), restored.checkpoint,
                       restored.config, owner=modules,
                       class_descriptions=restored.class_descriptions)


def _load_saved_model(export_dir):
    info_path = os.path.join(export_dir, export.INFO_FILE)
    if not os.path.exists(info_path):
        raise InferenceError(f"{export_dir} is a SavedModel without {export.INFO_FILE}: "
                             "not one written by alexnet_tf.export.")
    with open(info_path) as f:
        info = json.load(f)
    loaded = tf.saved_model.load(export_dir)
    signature = loaded.signatures["serving_default"]
    kernels = [v.numpy() for v in loaded.tf_variables
               if v.name.startswith("conv1/") and len(v.shape) == 4]
    mode = TEN_CROP if info["ten_crop"] else CENTER
    descriptions = [n.decode() for n in loaded.class_names.numpy()]
    return LoadedModel(
        export_dir, info.get("class_names", descriptions),
        {mode: lambda encoded: signature(images=encoded)}, kernels, os.path.abspath(export_dir),
        owner=loaded, class_descriptions=descriptions)


def load_model(path):
    """A `LoadedModel` from a model directory or an alexnet_tf SavedModel at `path`."""
    if not path or not os.path.exists(path):
        raise InferenceError(f"{path} does not exist.")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return _load_saved_model(path)
    if os.path.exists(os.path.join(path, model_dir.CONFIG_FILE)):
        return _load_model_dir(path)
    raise InferenceError(f"{path} is neither a model directory (no {model_dir.CONFIG_FILE}) nor "
                         "a SavedModel (no saved_model.pb).")


def check_same_classes(models):
    """Refuses models whose outputs mean different things (an ensemble averages them)."""
    first = models[0]
    for other in models[1:]:
        if other.class_names != first.class_names:
            raise InferenceError(
                f"{other.path} has {other.num_classes} classes and {first.path} has "
                f"{first.num_classes}" + (" with other names" if other.num_classes ==
                                           first.num_classes else "")
                + ": their predictions cannot be compared or averaged.")


# ----------------------------------------------------------------------------------
# Data.


def load_data_source(models=(), dataset=None, data_dir=None, manual_dir=None):
    """The `data.Source` named by dataset/data_dir/manual_dir; what is not given comes
    from the first model directory's training configuration (also its val_fraction and
    seed, so a held-out split is the one that run held out)."""
    config = next((m.config for m in models if m.config is not None), None)
    if config is None and not (dataset and data_dir):
        raise InferenceError("--dataset and --data_dir are needed (no model directory to "
                             "take them from).")
    base = config or config_lib.TrainConfig()
    config = dataclasses.replace(base, dataset=dataset or base.dataset,
                                 data_dir=data_dir or base.data_dir,
                                 manual_dir=manual_dir or base.manual_dir)
    try:
        source = data.load_source(config.dataset, config.data_dir,
                                  manual_dir=config.manual_dir or None,
                                  val_fraction=config.val_fraction, seed=config.seed)
    except (FileNotFoundError, ValueError) as e:
        raise InferenceError(str(e)) from e
    return source, config


def split_examples(source, split):
    """The split's encoded examples, the training split in an order fixed by the
    source's seed."""
    try:
        return source.encoded_split(split)
    except ValueError as e:
        raise InferenceError(str(e)) from e


def split_size(source, split):
    return source.split_size(split)


def split_batches(source, split, batch_size, max_examples=None):
    """NumPy (encoded images, labels, ids) batches of a split, undecodable images dropped
    and counted in `source.corrupt_counter`."""
    examples = split_examples(source, split)
    if max_examples:
        examples = examples.take(max_examples)

    def checked(index, example):
        del index
        # The image's shape comes out so that the decode cannot be pruned: the serving
        # function decodes again, and one bad image would fail its whole batch.
        shape = tf.shape(preprocessing.decode_image(example["image"]))
        return example["image"], example["label"], example["id"], shape

    batches = input_pipeline.without_autotuning(corrupt_images.map_and_batch_skipping_corrupt(
        examples, checked, source.corrupt_counter, batch_size))
    for encoded, labels, ids, _ in batches.as_numpy_iterator():
        yield encoded, labels, ids


def read_image_file(path, max_pixels=export.DEFAULT_MAX_IMAGE_PIXELS):
    """The bytes of an image file, checked to decode: its header first, so that a file
    declaring more than max_pixels pixels is refused before it is decoded."""
    if not os.path.isfile(path):
        raise InferenceError(f"Image {path} does not exist.")
    with open(path, "rb") as f:
        encoded = f.read()
    try:
        height, width = (int(v) for v in preprocessing.encoded_image_size(encoded))
        if height * width > max_pixels:
            raise InferenceError(f"Image {path} declares {height}x{width} pixels, more than "
                                 f"{max_pixels}; it is not decoded.")
        preprocessing.decode_image(encoded)
    except tf.errors.OpError as e:
        raise InferenceError(f"Image {path} cannot be decoded: {e.message}") from e
    return encoded


def thumbnail(encoded, size):
    """uint8 [size, size, 3]: an image's central square, as the network sees it, rescaled."""
    image = preprocessing.resize_shorter_and_center_crop(
        preprocessing.decode_image(encoded), size)
    return np.clip(np.round(image.numpy()), 0, 255).astype(np.uint8)


def write_png(image, path):
    """Writes uint8 [H, W, 3] as a PNG, creating its directory."""
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


# ----------------------------------------------------------------------------------
# The commands' shared flags, defined only by the commands themselves.


def define_model_flags(flags, output_help, output_required=False, multiple=False):
    """--model_dir (repeatable with `multiple`, for an ensemble) and --output."""
    if multiple:
        models = flags.DEFINE_multi_string(
            "model_dir", None, "A model directory or SavedModel; repeat it, or give a "
            "comma-separated list, for an ensemble.", required=True)
    else:
        models = flags.DEFINE_string("model_dir", None, "A training run's model directory, "
                                     "or a SavedModel written by alexnet_tf.export.",
                                     required=True)
    output = flags.DEFINE_string("output", None, output_help, required=output_required)
    return {"model_dir": models, "output": output}
