"""The SavedModel: standard ops only, loaded in a process that never imports alexnet_tf,
gives the in-memory model's answers, through tf.saved_model.load and saved_model_cli."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import dataset_stats, export, input_pipeline, trainer

FRESH_PROCESS = r"""
import json, sys
import numpy as np
import tensorflow as tf
export_dir, images_path, out_path = sys.argv[1:]
loaded = tf.saved_model.load(export_dir)
encoded = tf.constant([open(p, "rb").read() for p in json.load(open(images_path))])
outputs = loaded.signatures["serving_default"](images=encoded)
uint8 = tf.stack([tf.io.decode_png(e, channels=3) for e in encoded])
outputs_uint8 = loaded.signatures["serve_images"](images=uint8)
assert not any(m == "alexnet_tf" or m.startswith("alexnet_tf.") for m in sys.modules), "imported"
np.savez(out_path, **{k: v.numpy() for k, v in outputs.items()},
         **{"uint8_" + k: v.numpy() for k, v in outputs_uint8.items()})
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("export")
    config = trainer.TrainConfig(
        dataset="synthetic", data_dir=str(tmp_path / "data"), model_size="small",
        image_size=36, crop_size=32, batch_size=16, epochs=1, eval_batch_size=16,
        eval_ten_crop=False, export=False,
    )
    workdir = str(tmp_path / "model")
    trainer.train_and_evaluate(config, workdir)
    source = trainer.load_source(config)
    network = trainer.create_model(config, source.num_classes)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    tf.train.Checkpoint(model=network).read(latest).expect_partial()
    stats = dataset_stats.load_stats(os.path.join(workdir, trainer.STATS_FILE))
    images = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(tmp_path / "data" / "val") for f in files
    )[::5][:5]
    return dict(config=config, workdir=workdir, network=network, stats=stats,
                class_names=source.class_names, images=images, tmp_path=tmp_path)


def in_memory_predictions(trained, ten_crop=False):
    """The trained network on the paper's evaluation preprocessing, in this process."""
    config, stats = trained["config"], trained["stats"]
    probabilities, features = [], []
    feature_net = trainer.model_lib.feature_model(trained["network"])
    for path in trained["images"]:
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        image = input_pipeline.resize_shorter_and_center_crop(image, config.image_size)
        centred = input_pipeline.subtract_mean(image, stats.mean_image)
        crops = (input_pipeline.ten_crop(centred, config.crop_size) if ten_crop
                 else input_pipeline.center_crop(centred, config.crop_size)[None])
        p = tf.nn.softmax(trained["network"](crops, training=False))
        probabilities.append(tf.reduce_mean(p, axis=0).numpy())
        features.append(tf.reduce_mean(feature_net(crops, training=False), axis=0).numpy())
    return np.stack(probabilities), np.stack(features)


def export_trained(trained, name, ten_crop=False):
    export_dir = str(trained["tmp_path"] / name)
    export.export_saved_model(
        trained["config"], len(trained["class_names"]), trained["network"].get_weights(),
        trained["stats"], trained["class_names"], export_dir, ten_crop=ten_crop,
    )
    return export_dir


def run_fresh_process(export_dir, images, tmp_path):
    images_path, out_path = tmp_path / "images.json", tmp_path / "outputs.npz"
    images_path.write_text(json.dumps(images))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, export_dir, str(images_path), str(out_path)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out_path, allow_pickle=True))  # class names are strings


@pytest.mark.parametrize("ten_crop", [False, True])
def test_export_reloads_in_a_fresh_process_with_the_same_answers(trained, ten_crop):
    export_dir = export_trained(trained, f"export_{ten_crop}", ten_crop=ten_crop)
    outputs = run_fresh_process(export_dir, trained["images"], trained["tmp_path"])
    probabilities, features = in_memory_predictions(trained, ten_crop)

    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs["features"], features, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(outputs["uint8_probabilities"], probabilities, rtol=1e-4, atol=1e-6)
    top = np.argsort(-probabilities, axis=1)[:, :4]
    np.testing.assert_array_equal(outputs["top5_classes"][:, :4], top)
    names = np.array(trained["class_names"])[top]
    assert (outputs["top5_class_names"][:, :4].astype(str) == names).all()


def test_export_graph_has_only_standard_ops(trained):
    export_dir = export_trained(trained, "export_ops")
    saved = open(os.path.join(export_dir, "saved_model.pb"), "rb").read()
    assert b"AlexnetTf>" not in saved
    assert b"LRN" not in saved  # TensorFlow's own LRN op is not it either


def test_saved_model_cli_runs_the_export(trained):
    tmp_path = trained["tmp_path"]
    export_dir = export_trained(trained, "export_cli")
    image = tf.io.decode_png(tf.io.read_file(trained["images"][0]), channels=3).numpy()
    np.save(tmp_path / "image.npy", image[None])
    cli = shutil.which("saved_model_cli") or None
    command = ([cli] if cli else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"])
    result = subprocess.run(
        command + ["run", "--dir", export_dir, "--tag_set", "serve",
                   "--signature_def", "serve_images",
                   "--inputs", f"images={tmp_path / 'image.npy'}",
                   "--outdir", str(tmp_path / "cli_out"), "--overwrite"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = np.load(tmp_path / "cli_out" / "probabilities.npy")
    expected, _ = in_memory_predictions(dict(trained, images=trained["images"][:1]))
    np.testing.assert_allclose(probabilities, expected, rtol=1e-4, atol=1e-6)


def test_export_tool_from_model_dir_and_its_errors(trained, tmp_path):
    output = export.export_from_model_dir(trained["workdir"], str(tmp_path / "exported"))
    assert os.path.exists(os.path.join(output, "saved_model.pb"))
    with pytest.raises(trainer.TrainingError, match="not a model directory"):
        export.export_from_model_dir(str(tmp_path / "nothing_here"))
