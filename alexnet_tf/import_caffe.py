"""Caffe's model-zoo AlexNet (bvlc_alexnet) as a model directory every tool accepts.

    python -m alexnet_tf.import_caffe --caffemodel=bvlc_alexnet.caffemodel \\
        [--prototxt=deploy.prototxt] [--mean=imagenet_mean.binaryproto] --output=runs/bvlc_alexnet

bvlc_alexnet is the one public ImageNet-trained network of exactly the paper's shape:
two towers as `group: 2` in conv2, conv4 and conv5, LRN after conv1 and conv2,
60,965,224 parameters for 1000 classes. The directory this writes holds its weights
as the project's network, the architecture as Caffe ran it (config.json), the mean
image (dataset_stats.npz), and the ImageNet classes in Caffe's order: classes.json
the synset ids (sorted, as TFDS's imagenet2012 lists them, so `alexnet_tf.evaluate
--dataset=imagenet2012` compares like with like) and class_descriptions.json their
words from WordNet 3.0's noun database (Debian's wordnet-base), or the ids where it
is not installed. Nothing is downloaded.

Caffe's semantics, each a setting of the project's network rather than the paper's
default (config.json records them all):
  - a 227 crop of the 256 rescale with no padding in conv1 (`conv1_padding=valid`);
  - LRN with k = 1 and alpha / n per term (`lrn_alpha_convention=authors_code`),
    across each layer's channels of both towers (`lrn_across_towers`);
  - pooling with ceil((size - 3) / 2) + 1 outputs (`pooling_rule=ceil`);
  - BGR input: conv1's kernels are reversed along their input channels and the mean
    image converted to RGB, so the network takes the RGB images every other route
    gives it and computes what Caffe computed on their BGR;
  - Caffe's [out, in, h, w] kernels as [h, w, in, out], groups as towers, and fc6's
    weights reordered from Caffe's channel-major flattening of pool5 ([c, h, w]) to
    the project's ([h, w, c] of the towers' channels side by side).
Caffe's data layer warps every image to 256x256 and crops the centre 227; the project
rescales the central square instead, so figures measured here may differ a little
from the model card's (57.1% top-1 / 80.2% top-5 accuracy, centre crop).

Every problem (not a caffemodel, a truncated file, a layer missing or of another
shape) stops the command with one line naming it; the output is written beside its
destination and renamed into place only when complete.
"""

import json
import os
import sys

import numpy as np

from alexnet_tf import caffe_proto, config as config_lib, dataset_stats, files, model_dir

CAFFE_CROP_SIZE = 227
CAFFE_IMAGE_SIZE = 256
# (kernels, input maps per group, kernel side, stride, padding, groups) of bvlc_alexnet's
# convolutions (its deploy.prototxt).
CONVOLUTIONS = {
    "conv1": (96, 3, 11, 4, 0, 1),
    "conv2": (256, 48, 5, 1, 2, 2),
    "conv3": (384, 256, 3, 1, 1, 1),
    "conv4": (384, 192, 3, 1, 1, 2),
    "conv5": (256, 192, 3, 1, 1, 2),
}
POOL5_SHAPE = (256, 6, 6)  # Caffe's [channels, height, width] of pool5 at a 227 input
FC_UNITS = 4096
LRN_LAYERS = ("norm1", "norm2")
POOL_LAYERS = ("pool1", "pool2", "pool5")
# Caffe's per-channel ImageNet means (BGR; the averages of ilsvrc_2012_mean.npy), used
# when no mean image is given.
CAFFE_BGR_MEAN = (104.0069879317889, 116.66876761696767, 122.6789143406786)
# ImageNet's RGB principal components as many reimplementations carry them
# (eigenvalues of [0, 1] pixels, eigenvectors as columns), for PCA lighting when the
# imported model is trained further: the statistics file needs them, Caffe has none.
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                         (-0.5808, -0.0045, -0.8140),
                         (-0.5836, -0.6948, 0.4203))
TFDS_LABELS = os.path.join("datasets", "imagenet2012", "labels.txt")
WORDNET_NOUNS = "/usr/share/wordnet/data.noun"
PROVENANCE_FILE = "caffe.json"


def _layers_by_name(net, path):
    layers = {layer.name: layer for layer in net.layers}
    wanted = list(CONVOLUTIONS) + ["fc6", "fc7", "fc8"]
    missing = [name for name in wanted if name not in layers]
    if missing:
        raise caffe_proto.CaffeFormatError(
            f"{path}: no layer {', '.join(missing)}; bvlc_alexnet's are conv1 .. conv5, "
            "fc6, fc7, fc8.")
    return layers


def _blob(layer, index, shape, path):
    if len(layer.blobs) <= index:
        raise caffe_proto.CaffeFormatError(
            f'{path}: layer "{layer.name}" has {len(layer.blobs)} blobs; it needs weights '
            "and biases.")
    blob = layer.blobs[index]
    if tuple(blob.shape) != tuple(shape):
        raise caffe_proto.CaffeFormatError(
            f'{path}: layer "{layer.name}": blob {index} has shape {list(blob.shape)}, '
            f"bvlc_alexnet's is {list(shape)}.")
    values = np.asarray(blob, np.float64)
    check_finite(values, f'{path}: layer "{layer.name}": blob {index}')
    return values


def check_finite(values, where):
    """Refuses NaN or infinite values: a damaged file, which would train and predict
    garbage without a word."""
    bad = np.size(values) - np.count_nonzero(np.isfinite(values))
    if bad:
        raise caffe_proto.CaffeFormatError(
            f"{where} has {bad} NaN or infinite values of {np.size(values)}; the file is "
            "damaged.")


def check_convolution(layer, path):
    """(weights [out, in, h, w], biases) of a bvlc_alexnet convolution, checked."""
    out, per_group, kernel, stride, pad, groups = CONVOLUTIONS[layer.name]
    params = layer.params
    found = (params.kernel, params.stride, params.pad, params.group)
    wanted = ((kernel, kernel), (stride, stride), (pad, pad), groups)
    if layer.type != "Convolution" or found != wanted:
        raise caffe_proto.CaffeFormatError(
            f'{path}: layer "{layer.name}" is a {layer.type} of kernel, stride, padding and '
            f"groups {found}; bvlc_alexnet's is a Convolution of {wanted}.")
    return (_blob(layer, 0, (out, per_group, kernel, kernel), path),
            _blob(layer, 1, (out,), path))


def check_fully_connected(layer, inputs, path, units=None):
    if layer.type != "InnerProduct":
        raise caffe_proto.CaffeFormatError(
            f'{path}: layer "{layer.name}" is a {layer.type}, not an InnerProduct.')
    units = units or layer.params.num_output
    if layer.params.transpose:
        raise caffe_proto.CaffeFormatError(
            f'{path}: layer "{layer.name}" stores its weights transposed; bvlc_alexnet does not.')
    return _blob(layer, 0, (units, inputs), path), _blob(layer, 1, (units,), path)


def lrn_settings(net, path):
    """The (one) LRN configuration of norm1 and norm2: Caffe's LRN, or its defaults."""
    found = {layer.name: layer.params for layer in net.layers if layer.type == "LRN"}
    params = [found[name] for name in LRN_LAYERS if name in found]
    if len(params) != 2 or params[0] != params[1]:
        raise caffe_proto.CaffeFormatError(
            f"{path}: needs two equal LRN layers norm1 and norm2; found {sorted(found)}.")
    lrn = params[0]
    if lrn.norm_region != "across_channels" or lrn.local_size % 2 == 0:
        raise caffe_proto.CaffeFormatError(
            f'{path}: layer "norm1" normalizes {lrn.norm_region} over {lrn.local_size}; '
            "the project's LRN is across channels over an odd window.")
    return lrn


def caffe_config(lrn):
    """The TrainConfig of bvlc_alexnet's network as Caffe ran it."""
    return config_lib.TrainConfig(
        dataset="imagenet2012", model_size="paper", towers=2,
        image_size=CAFFE_IMAGE_SIZE, crop_size=CAFFE_CROP_SIZE, conv1_padding="valid",
        lrn_depth_radius=(lrn.local_size - 1) // 2, lrn_bias=float(lrn.k),
        lrn_alpha=float(lrn.alpha), lrn_beta=float(lrn.beta),
        lrn_alpha_convention="authors_code", lrn_across_towers=True, pooling_rule="ceil",
    )


def _conv_kernel(weights):
    """Caffe's [out, in, h, w] as [h, w, in, out]."""
    return np.transpose(weights, (2, 3, 1, 0))


def tower_weights(layers, path):
    """{layer name: [(kernel, bias) per tower]} in the project's layout."""
    weights = {}
    for name, (out, _, _, _, _, _) in CONVOLUTIONS.items():
        kernel, bias = check_convolution(layers[name], path)
        kernel = _conv_kernel(kernel)
        if name == "conv1":  # BGR in Caffe, RGB here: reverse the input channels
            kernel = kernel[:, :, ::-1, :]
        half = out // 2
        weights[name] = [(kernel[..., k * half:(k + 1) * half], bias[k * half:(k + 1) * half])
                         for k in range(2)]
    fc6, fc6_bias = check_fully_connected(layers["fc6"], int(np.prod(POOL5_SHAPE)), path,
                                          FC_UNITS)
    # Caffe flattens pool5 as [c, h, w]; the project as [h, w, c].
    fc6 = fc6.reshape((FC_UNITS,) + POOL5_SHAPE).transpose(2, 3, 1, 0).reshape(-1, FC_UNITS)
    fc7, fc7_bias = check_fully_connected(layers["fc7"], FC_UNITS, path, FC_UNITS)
    fc8, fc8_bias = check_fully_connected(layers["fc8"], FC_UNITS, path)
    half = FC_UNITS // 2
    for name, kernel, bias in (("fc6", fc6, fc6_bias), ("fc7", fc7.T, fc7_bias)):
        weights[name] = [(kernel[:, k * half:(k + 1) * half], bias[k * half:(k + 1) * half])
                         for k in range(2)]
    weights["fc8"] = [(fc8.T, fc8_bias)]
    return weights


def load_weights(network, weights):
    """Assigns {layer name: [(kernel, bias) per tower]} to the network's towers."""
    for name, towers in weights.items():
        layer = network.get_layer(name)
        for stack, (kernel, bias) in zip(layer.stacks, towers):
            dense = [sub for sub in stack if hasattr(sub, "kernel")][0]
            dense.kernel.assign(kernel.astype(np.float32))
            dense.bias.assign(bias.astype(np.float32))


def imagenet_class_ids(num_classes):
    """ILSVRC-2012's synset ids in Caffe's (sorted) order, from TFDS's imagenet2012
    label file, for 1000 classes; class_0 .. otherwise."""
    if num_classes == 1000:
        import tensorflow_datasets as tfds

        path = os.path.join(os.path.dirname(tfds.__file__), TFDS_LABELS)
        with open(path) as f:
            ids = [line.strip() for line in f if line.strip()]
        if len(ids) == 1000:
            return ids
    return [f"class_{i}" for i in range(num_classes)]


def wordnet_descriptions(ids, nouns=WORDNET_NOUNS):
    """Each synset id's words from WordNet 3.0's noun database ("tench, Tinca tinca"), the
    id itself where the database or the synset is missing. An ImageNet id is "n" and the
    synset's offset in data.noun, the line that starts with it."""
    wanted = {i[1:]: i for i in ids if i.startswith("n") and i[1:].isdigit()}
    words = {}
    if wanted and os.path.exists(nouns):
        with open(nouns, encoding="utf-8", errors="replace") as f:
            for line in f:
                offset = line[:8]
                if offset in wanted:
                    fields = line.split()
                    count = int(fields[3], 16)
                    words[wanted[offset]] = ", ".join(
                        fields[4 + 2 * i].replace("_", " ") for i in range(count))
    return [words.get(i, i) for i in ids]


def mean_image(mean_path):
    """The RGB [256, 256, 3] mean: the binaryproto's BGR [3, 256, 256], or Caffe's
    per-channel means."""
    if mean_path is None:
        return np.broadcast_to(np.asarray(CAFFE_BGR_MEAN[::-1], np.float32),
                               (CAFFE_IMAGE_SIZE, CAFFE_IMAGE_SIZE, 3)).copy()
    mean = caffe_proto.read_mean_binaryproto(mean_path)
    if mean.shape != (3, CAFFE_IMAGE_SIZE, CAFFE_IMAGE_SIZE):
        raise caffe_proto.CaffeFormatError(
            f"{mean_path}: the mean has shape {list(mean.shape)}; bvlc_alexnet's is "
            f"[3, {CAFFE_IMAGE_SIZE}, {CAFFE_IMAGE_SIZE}].")
    check_finite(mean, f"{mean_path}: the mean")
    return np.transpose(mean[::-1], (1, 2, 0)).astype(np.float32)


def imagenet_stats(mean):
    vectors = np.asarray(IMAGENET_EIGENVECTORS, np.float64)
    values = np.asarray(IMAGENET_EIGENVALUES, np.float64) * 255.0**2
    return dataset_stats.DatasetStats(
        mean_image=mean, covariance=vectors @ np.diag(values) @ vectors.T, eigenvalues=values,
        eigenvectors=vectors, num_examples=0)


def check_pooling(net, path):
    """pool1, pool2 and pool5: max pooling of 3x3 windows at stride 2, no padding."""
    found = {layer.name: layer for layer in net.layers if layer.type == "Pooling"}
    for name in POOL_LAYERS:
        params = found[name].params if name in found else None
        if params is None or (params.method, params.kernel, params.stride, params.pad) != (
                "max", (3, 3), (2, 2), (0, 0)):
            raise caffe_proto.CaffeFormatError(
                f'{path}: layer "{name}" is {params}; bvlc_alexnet\'s is max pooling of 3x3 '
                "at stride 2.")
        if params.round_mode != "ceil":
            raise caffe_proto.CaffeFormatError(
                f'{path}: layer "{name}" rounds its output size down; Caffe\'s AlexNet rounds up.')


def check_prototxt(prototxt, net):
    """The deploy net's input is 3 x 227 x 227 and its layers agree with the weights'."""
    deploy = caffe_proto.read_prototxt(prototxt)
    shapes = [tuple(shape) for shape in deploy.inputs.values() if shape]
    if shapes and tuple(shapes[0][-3:]) != (3, CAFFE_CROP_SIZE, CAFFE_CROP_SIZE):
        raise caffe_proto.CaffeFormatError(
            f"{prototxt}: the input is {list(shapes[0])}; bvlc_alexnet takes 3 x "
            f"{CAFFE_CROP_SIZE} x {CAFFE_CROP_SIZE} images.")
    trained = {layer.name: layer for layer in net.layers}
    for layer in deploy.layers:
        if layer.name in trained and layer.params != trained[layer.name].params:
            raise caffe_proto.CaffeFormatError(
                f'{prototxt}: layer "{layer.name}" is {layer.params} here but '
                f"{trained[layer.name].params} in the caffemodel.")


def convert(caffemodel, prototxt=None, mean=None):
    """(config, network with the weights, class ids, descriptions, statistics)."""
    net = caffe_proto.read_caffemodel(caffemodel)
    layers = _layers_by_name(net, caffemodel)
    if prototxt:
        check_prototxt(prototxt, net)
    check_pooling(net, caffemodel)
    config = caffe_config(lrn_settings(net, caffemodel))
    weights = tower_weights(layers, caffemodel)
    num_classes = weights["fc8"][0][1].shape[0]
    network = model_dir.create_model(config, num_classes, tower_devices=(None, None),
                                     dtype_policy="float32")
    load_weights(network, weights)
    ids = imagenet_class_ids(num_classes)
    return config, network, ids, wordnet_descriptions(ids), imagenet_stats(mean_image(mean))


def import_caffe(caffemodel, output, prototxt=None, mean=None):
    """Writes the model directory of a bvlc_alexnet caffemodel to output."""
    import tensorflow as tf

    def refuse(path):
        if not os.path.isdir(path) or os.listdir(path):
            raise FileExistsError(f"{path} exists; choose a new --output.")

    if os.path.lexists(output):
        refuse(output)
    config, network, ids, descriptions, stats = convert(caffemodel, prototxt, mean)
    with files.staged_directory(output, refuse) as staging:
        files.write_text_atomically(os.path.join(staging, model_dir.CONFIG_FILE),
                                    config.to_json())
        files.write_text_atomically(os.path.join(staging, model_dir.FLAGS_FILE),
                                    config_lib.to_flagfile(config, output))
        model_dir.write_class_names(staging, ids, descriptions)
        dataset_stats.save_stats(stats, os.path.join(staging, model_dir.STATS_FILE))
        tf.train.Checkpoint(model=network).write(
            os.path.join(staging, model_dir.CHECKPOINT_DIR, f"{model_dir.CHECKPOINT_NAME}-0"))
        tf.compat.v1.train.update_checkpoint_state(
            os.path.join(staging, model_dir.CHECKPOINT_DIR), f"{model_dir.CHECKPOINT_NAME}-0")
        files.write_text_atomically(os.path.join(staging, PROVENANCE_FILE), json.dumps(dict(
            caffemodel=os.path.abspath(caffemodel),
            prototxt=prototxt and os.path.abspath(prototxt), mean=mean and os.path.abspath(mean),
            classes=len(ids)), indent=2))
    return output


def main(values):
    try:
        output = import_caffe(values["caffemodel"], values["output"], values["prototxt"],
                              values["mean"])
    except (caffe_proto.CaffeFormatError, FileExistsError, OSError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {output}: bvlc_alexnet as a model directory (evaluate, predict, export, "
          f"or train with --init_from={output})")


if __name__ == "__main__":
    from absl import flags

    from alexnet_tf import command

    command.run(main, {
        "caffemodel": flags.DEFINE_string("caffemodel", None, "bvlc_alexnet.caffemodel "
                                          "(either of Caffe's formats).", required=True),
        "prototxt": flags.DEFINE_string("prototxt", None,
                                        "deploy.prototxt, to check the net against."),
        "mean": flags.DEFINE_string("mean", None, "imagenet_mean.binaryproto (default: "
                                    "Caffe's per-channel means)."),
        "output": flags.DEFINE_string("output", None, "The model directory to write; must "
                                      "not exist.", required=True),
    })
