"""bvlc_alexnet in: a generated caffemodel of the whole network in each of Caffe's
formats, converted, against an independent NumPy float64 forward pass of Caffe's
network; the model directory through the tools, the export and fine-tuning; bad files."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import caffe_reference
import caffe_writer
from alexnet_tf import caffe_proto, config as config_lib, export, import_caffe, inference
from alexnet_tf import model_dir, trainer
from test_export import FRESH_PROCESS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 10


@pytest.fixture(scope="module")
def caffe_files(tmp_path_factory):
    """bvlc_alexnet with random weights (10 classes) in both formats, and a mean."""
    tmp_path = tmp_path_factory.mktemp("caffe")
    layers = caffe_reference.bvlc_alexnet_layers(np.random.default_rng(0), NUM_CLASSES)
    paths = {}
    for fmt in ("layer", "layers"):
        paths[fmt] = str(tmp_path / f"bvlc_alexnet_{fmt}.caffemodel")
        caffe_writer.write_caffemodel(paths[fmt], layers, fmt=fmt, name="AlexNet")
    mean = np.random.default_rng(1).uniform(90, 130, (3, 256, 256)).astype(np.float32)
    caffe_writer.write_mean_binaryproto(str(tmp_path / "mean.binaryproto"), mean)
    return dict(paths=paths, layers=layers, mean=mean, mean_path=str(tmp_path / "mean.binaryproto"),
                tmp_path=tmp_path)


@pytest.fixture(scope="module")
def imported(caffe_files):
    output = str(caffe_files["tmp_path"] / "bvlc")
    import_caffe.import_caffe(caffe_files["paths"]["layers"], output,
                              mean=caffe_files["mean_path"])
    return output


@pytest.fixture(scope="module")
def imported_quiet(caffe_files):
    """Another random bvlc_alexnet whose layers halve their input's scale, so that fc7's
    features are small and a new fc8 learns from them at an ordinary rate."""
    tmp_path = caffe_files["tmp_path"]
    layers = caffe_reference.bvlc_alexnet_layers(np.random.default_rng(5), NUM_CLASSES,
                                                 scale=0.5)
    caffe_writer.write_caffemodel(str(tmp_path / "quiet.caffemodel"), layers)
    return import_caffe.import_caffe(str(tmp_path / "quiet.caffemodel"),
                                     str(tmp_path / "quiet"))


def relative_error(actual, expected):
    return np.abs(np.asarray(actual, np.float64) - expected).max() / np.abs(expected).max()


@pytest.mark.parametrize("fmt", ["layer", "layers"])
def test_the_converted_network_computes_caffes_logits(caffe_files, fmt, tmp_path):
    output = str(tmp_path / "model")
    import_caffe.import_caffe(caffe_files["paths"][fmt], output)
    restored = model_dir.restore(output)
    assert restored.network.count_params() == 60_965_224 - 4_097_000 + 4096 * NUM_CLASSES + NUM_CLASSES
    rgb = np.random.default_rng(2).normal(0.0, 50.0, (2, 227, 227, 3)).astype(np.float32)
    ours = restored.network(rgb, training=False).numpy()
    # Caffe sees the same images as BGR, channels first.
    caffe = caffe_reference.alexnet_forward(rgb[..., ::-1].transpose(0, 3, 1, 2),
                                            caffe_files["layers"])
    assert caffe.std() > 1.0  # informative logits, not a constant
    assert relative_error(ours, caffe) < 1e-4


def test_the_model_directory_records_caffes_network(imported, caffe_files):
    config = model_dir.load_config(imported)
    assert (config.crop_size, config.image_size, config.conv1_padding) == (227, 256, "valid")
    assert (config.lrn_bias, config.lrn_alpha, config.lrn_beta, config.lrn_depth_radius) == (
        1.0, 1e-4, 0.75, 2)
    assert config.lrn_alpha_convention == "authors_code" and config.lrn_across_towers
    assert config.pooling_rule == "ceil"
    assert model_dir.load_class_names(imported) == [f"class_{i}" for i in range(NUM_CLASSES)]
    stats = model_dir.load_stats(config, imported)
    np.testing.assert_array_equal(stats.mean_image, caffe_files["mean"][::-1].transpose(1, 2, 0))
    assert config_lib.load_flagfile(os.path.join(imported, "flags.txt"))[0] == config
    # conv1's kernels, in RGB order, for show_filters: Caffe's BGR kernels reversed.
    kernels = inference.load_model(imported).conv1_kernels
    caffe_conv1 = caffe_files["layers"][1].blobs[0]
    np.testing.assert_array_equal(kernels[1][..., 0], caffe_conv1[48].transpose(1, 2, 0)[..., ::-1])


def caffe_probabilities(caffe_files, images):
    """Caffe's test-time route for 256x256 images: BGR less the mean image, the centre
    227 crop (offset 14), the net, the softmax."""
    bgr = images[..., ::-1].transpose(0, 3, 1, 2).astype(np.float64) - caffe_files["mean"]
    logits = caffe_reference.alexnet_forward(bgr[:, :, 14:241, 14:241], caffe_files["layers"])
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_the_export_of_the_converted_model_serves_caffes_answers_without_the_package(
        imported, caffe_files, tmp_path):
    export_dir = export.export_from_model_dir(imported, str(tmp_path / "export"))
    images = np.random.default_rng(4).integers(0, 256, (2, 256, 256, 3)).astype(np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(image))
    (tmp_path / "images.json").write_text(json.dumps(paths))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, export_dir,
                             str(tmp_path / "images.json"), str(tmp_path / "out.npz")],
                            cwd=str(tmp_path), env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(tmp_path / "out.npz", allow_pickle=True)
    expected = caffe_probabilities(caffe_files, images)
    np.testing.assert_allclose(served["probabilities"], expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(served["uint8_probabilities"], expected, rtol=1e-4, atol=1e-6)


def test_imagenet_classes_are_the_sorted_synsets_with_wordnet_words(tmp_path):
    ids = import_caffe.imagenet_class_ids(1000)
    assert len(ids) == 1000 and ids == sorted(ids) and ids[0] == "n01440764"
    # Two lines in data.noun's format: offset, lex file, pos, word count (hex), words.
    nouns = tmp_path / "data.noun"
    nouns.write_text(
        "  1 This is WordNet's licence, not a synset.\n"
        "01440764 05 n 02 tench 0 Tinca_tinca 0 002 @ 01439121 n 0000 | a fish\n"
        "01443537 05 n 03 goldfish 0 Carassius_auratus 0 golden_fish 1 001 | a fish\n")
    assert import_caffe.wordnet_descriptions(ids[:3], str(nouns)) == [
        "tench, Tinca tinca", "goldfish, Carassius auratus, golden fish", ids[2]]
    assert import_caffe.wordnet_descriptions(ids[:2], str(tmp_path / "none")) == ids[:2]
    assert import_caffe.imagenet_class_ids(7) == [f"class_{i}" for i in range(7)]


def run_import(*flags):
    return subprocess.run([sys.executable, "-m", "alexnet_tf.import_caffe", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def test_bad_files_stop_with_one_line_naming_the_problem(caffe_files, tmp_path):
    layers = caffe_files["layers"]
    truncated = tmp_path / "truncated.caffemodel"
    with open(caffe_files["paths"]["layer"], "rb") as f:
        truncated.write_bytes(f.read()[:3_000_000])
    png = tmp_path / "image.caffemodel"
    png.write_bytes(tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8)).numpy())
    ungrouped = tmp_path / "ungrouped.caffemodel"
    shapes = [caffe_proto.CaffeLayer(layer.name, layer.type, layer.bottoms, layer.tops,
                                     list(layer.blobs), layer.params) for layer in layers]
    conv2 = next(layer for layer in shapes if layer.name == "conv2")
    conv2.blobs[0] = np.zeros((256, 96, 5, 5), np.float32)
    conv2.params = caffe_proto.ConvolutionParams(256, (5, 5), pad=(2, 2), group=1)
    caffe_writer.write_caffemodel(str(ungrouped), shapes)
    cases = {
        str(tmp_path / "missing.caffemodel"): "no such file",
        str(png): "not a Caffe model",
        str(truncated): "truncated",
        str(ungrouped): 'layer "conv2" is a Convolution of kernel, stride, padding and groups',
    }
    for path, message in cases.items():
        with pytest.raises(caffe_proto.CaffeFormatError, match=message) as raised:
            import_caffe.import_caffe(path, str(tmp_path / "out"))
        assert "\n" not in str(raised.value) and path in str(raised.value)
        assert not os.path.exists(tmp_path / "out")
    result = run_import(f"--caffemodel={ungrouped}", f"--output={tmp_path / 'out'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    # One line of ours (TensorFlow prints its start-up lines before it).
    assert [line for line in result.stderr.splitlines() if "caffemodel" in line] == [
        f"error: {ungrouped}: layer \"conv2\" is a Convolution of kernel, stride, padding and "
        "groups ((5, 5), (1, 1), (2, 2), 1); bvlc_alexnet's is a Convolution of ((5, 5), "
        "(1, 1), (2, 2), 2)."]


def test_fine_tuning_trains_a_new_fc8_and_leaves_the_frozen_layers_as_they_were(
        imported_quiet, tmp_path):
    imported = imported_quiet
    workdir = tmp_path / "tuned"
    command = [sys.executable, "-m", "alexnet_tf.train", f"--init_from={imported}",
               "--dataset=synthetic", f"--data_dir={tmp_path / 'data'}", f"--model_dir={workdir}",
               "--train_layers=fc8", "--batch_size=16", "--epochs=2", "--learning_rate=0.01",
               "--log_every_steps=1", "--eval_ten_crop=false", "--export=false"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fc8 new for 4 classes" in result.stdout
    config = model_dir.load_config(str(workdir))
    assert (config.crop_size, config.lrn_across_towers) == (227, True)  # taken from the source

    source = tf.train.load_checkpoint(tf.train.latest_checkpoint(f"{imported}/checkpoints"))
    tuned = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(workdir / "checkpoints")))
    compared = 0
    for name in source.get_variable_to_shape_map():
        if name.startswith("model/") and "fc8" not in name and "VARIABLE_VALUE" in name:
            np.testing.assert_array_equal(tuned.get_tensor(name), source.get_tensor(name), name)
            compared += 1
    assert compared == 28  # every weight and bias of conv1 .. fc7, both towers
    fc8 = [n for n in tuned.get_variable_to_shape_map() if n.startswith("model/") and "fc8" in n
           and "VARIABLE_VALUE" in n]
    assert sorted(tuned.get_variable_to_shape_map()[n] for n in fc8) == [[4], [4096, 4]]
    losses = [loss for _, loss in scalars(workdir / "train", "loss")]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3])


def scalars(event_dir, tag):
    values = {}
    for name in os.listdir(event_dir):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(event_dir, name)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return sorted(values.items())


def test_fine_tuning_refuses_another_network_and_unknown_layers(imported, tmp_path):
    config, _ = config_lib.load_flagfile(os.path.join(REPO, "configs", "smoke.flags"),
                                         data_dir=str(tmp_path / "data"), init_from=imported)
    with pytest.raises(trainer.TrainingError, match=r"--init_from=.* is another network "
                                                    r"\(--model_size: 'paper' in the source, "
                                                    r"'small' now"):
        trainer.train_and_evaluate(config, str(tmp_path / "model"))
    assert not (tmp_path / "model").exists()
    bad = config_lib.validate(config_lib.TrainConfig(data_dir="d", train_layers=("fc9",)))
    assert any("--train_layers names fc9" in e for e in bad)


def test_nan_weights_or_mean_are_refused_naming_the_layer_and_nothing_is_written(
        caffe_files, tmp_path):
    layers = [caffe_proto.CaffeLayer(layer.name, layer.type, layer.bottoms, layer.tops,
                                     list(layer.blobs), layer.params)
              for layer in caffe_files["layers"]]
    conv1 = next(layer for layer in layers if layer.name == "conv1")
    conv1.blobs[0] = np.full_like(conv1.blobs[0], np.nan)
    damaged = tmp_path / "nan.caffemodel"
    caffe_writer.write_caffemodel(str(damaged), layers)
    result = run_import(f"--caffemodel={damaged}", f"--output={tmp_path / 'out'}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "caffemodel" in line] == [
        f'error: {damaged}: layer "conv1": blob 0 has {conv1.blobs[0].size} NaN or infinite '
        f"values of {conv1.blobs[0].size}; the file is damaged."]
    assert not (tmp_path / "out").exists()

    mean = caffe_files["mean"].copy()
    mean[1, 2, 3] = np.inf
    mean_path = tmp_path / "inf.binaryproto"
    caffe_writer.write_mean_binaryproto(str(mean_path), mean)
    with pytest.raises(caffe_proto.CaffeFormatError,
                       match=r"inf.binaryproto: the mean has 1 NaN or infinite values"):
        import_caffe.import_caffe(caffe_files["paths"]["layer"], str(tmp_path / "out"),
                                  mean=str(mean_path))
    assert not (tmp_path / "out").exists()


def damaged_copy(imported, tmp_path, damage):
    """A copy of the imported model directory whose checkpoint `damage` rewrote."""
    import shutil

    copy = str(tmp_path / "damaged")
    shutil.copytree(imported, copy)
    restored = model_dir.restore(copy)
    prefix = restored.checkpoint
    damage(restored.network, prefix)
    return copy


def test_init_from_refuses_nan_weights_naming_the_layer(imported, tmp_path):
    def nan_in_conv3(network, prefix):
        kernel = network.get_layer("conv3").weights[0]
        values = kernel.numpy()
        values.reshape(-1)[::7] = np.nan
        kernel.assign(values)
        tf.train.Checkpoint(model=network).write(prefix)

    source = damaged_copy(imported, tmp_path, nan_in_conv3)
    config = dataclasses.replace(model_dir.load_config(source), init_from=source)
    model = model_dir.create_model(config, NUM_CLASSES, tower_devices=(None,) * config.towers,
                                   dtype_policy="float32")
    expected = int(np.ceil(model.get_layer("conv3").weights[0].numpy().size / 7))
    with pytest.raises(trainer.TrainingError,
                       match=rf"layer conv3 holds {expected} NaN or infinite weights"):
        trainer.init_from_source(config, model)


def test_init_from_refuses_a_layer_without_a_source(imported):
    # This run's network has a sixth convolution; the source (bvlc_alexnet) has none.
    config = dataclasses.replace(model_dir.load_config(imported), init_from=imported,
                                 conv6=True)
    model = model_dir.create_model(config, NUM_CLASSES, tower_devices=(None,) * config.towers,
                                   dtype_policy="float32")
    with pytest.raises(trainer.TrainingError, match=r"its layer conv6 has weights of shapes "
                                                    r"\[\], this network's are \[\(3, 3"):
        trainer.init_from_source(config, model)


def test_a_checkpoint_without_the_network_is_refused_by_the_tools(imported, tmp_path):
    def only_a_step(network, prefix):
        for path in tf.io.gfile.glob(prefix + ".*"):
            os.remove(path)
        tf.train.Checkpoint(step=tf.Variable(3, dtype=tf.int64)).write(prefix)

    source = damaged_copy(imported, tmp_path, only_a_step)
    with pytest.raises(model_dir.TrainingError, match="holds no weights"):
        model_dir.restore(source)
    result = subprocess.run([sys.executable, "-m", "alexnet_tf.export", f"--model_dir={source}",
                             f"--output={tmp_path / 'export'}"], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "holds no weights" in result.stderr.splitlines()[-1]
    assert not (tmp_path / "export").exists()
