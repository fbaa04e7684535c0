"""The SavedModel: standard ops only, loaded in a process that never imports alexnet_tf,
gives the in-memory model's answers, through tf.saved_model.load and saved_model_cli."""

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import dataset_stats, export, inference, input_pipeline, model_dir, trainer
from alexnet_tf import model as model_lib
from alexnet_tf import preprocessing

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
    network = model_dir.create_model(config, source.num_classes)
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    tf.train.Checkpoint(model=network).read(latest).expect_partial()
    stats = dataset_stats.load_stats(os.path.join(workdir, model_dir.STATS_FILE))
    images = sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(tmp_path / "data" / "val") for f in files
    )[::5][:5]
    return dict(config=config, workdir=workdir, network=network, stats=stats,
                class_names=source.class_names, images=images, tmp_path=tmp_path)


def in_memory_predictions(trained, ten_crop=False):
    """The trained network (with the compiled LRN op) on the evaluation preprocessing,
    in this process."""
    config, stats = trained["config"], trained["stats"]
    probabilities, features = [], []
    feature_net = model_lib.feature_model(trained["network"])
    for path in trained["images"]:
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        crops = preprocessing.eval_crops_from_pixels(image, stats.mean_image, config.crop_size,
                                                     ten_crop=ten_crop)
        crops = crops if ten_crop else crops[None]
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


# ----------------------------------------------------------------------------------
# What the export may overwrite, what serving says about a bad image, its size.


def run_export(*flags):
    return subprocess.run([sys.executable, "-m", "alexnet_tf.export", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def leftovers(directory):
    return [name for name in os.listdir(directory) if ".partial" in name or name.endswith(".tmp")]


def test_export_never_deletes_what_it_did_not_write(trained, tmp_path):
    workdir = trained["workdir"]
    users = tmp_path / "users_folder"
    users.mkdir()
    (users / "thesis.txt").write_text("years of work")
    refused = run_export(f"--model_dir={workdir}", f"--output={users}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert (f"error: {users} is not empty and is not a SavedModel written by "
            "alexnet_tf.export; nothing was written") in refused.stderr
    assert os.listdir(users) == ["thesis.txt"] and not leftovers(tmp_path)

    before = sorted(os.listdir(workdir))
    with pytest.raises(export.ExportError, match="is the model directory itself"):
        export.export_from_model_dir(workdir, workdir)
    with pytest.raises(export.ExportError, match="is the model directory itself"):
        export.export_from_model_dir(workdir, os.path.join(workdir, "."), overwrite=True)
    other_run = tmp_path / "other_run"
    shutil.copytree(workdir, other_run)
    with pytest.raises(export.ExportError, match="is a model directory"):
        export.export_from_model_dir(workdir, str(other_run), overwrite=True)
    assert sorted(os.listdir(workdir)) == before
    shutil.rmtree(other_run)

    a_file = tmp_path / "model.pb"
    a_file.write_bytes(b"keep")
    with pytest.raises(export.ExportError, match="exists and is not a directory"):
        export.export_from_model_dir(workdir, str(a_file))
    assert a_file.read_bytes() == b"keep" and not leftovers(tmp_path)

    target = str(tmp_path / "served")
    export.export_from_model_dir(workdir, target)
    with pytest.raises(export.ExportError, match="holds an earlier export; pass --overwrite"):
        export.export_from_model_dir(workdir, target)
    first = os.path.getmtime(os.path.join(target, "saved_model.pb"))
    time.sleep(0.01)
    export.export_from_model_dir(workdir, target, overwrite=True)
    assert os.path.getmtime(os.path.join(target, "saved_model.pb")) > first
    assert not leftovers(tmp_path)


def test_a_failed_export_leaves_no_staging_directory(trained, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(OSError, match="No space left"):
        export.export_from_model_dir(trained["workdir"], str(tmp_path / "served"))
    assert os.listdir(tmp_path) == []


def test_serving_names_the_elements_that_do_not_decode(trained):
    loaded = tf.saved_model.load(export_trained(trained, "export_bad_input"))
    serve = loaded.signatures["serving_default"]
    good = open(trained["images"][0], "rb").read()
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        serve(images=tf.constant([good, b"not an image", good, good[:40]]))
    assert re.search(r"images\[i\] is not a decodable JPEG, PNG, GIF, BMP or WebP image, "
                     r"for i in\] \[1 3\]", raised.value.message), raised.value.message
    assert serve(images=tf.constant([good, good]))["probabilities"].shape == (2, 4)


def png_bomb(width, height):
    """A 1-bit grey PNG of zeros: a few KB that decode to width x height x 3 bytes."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0,
                                                                0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


BOMB_REQUEST = r"""
import sys
import tensorflow as tf
export_dir, bomb_path, good_path = sys.argv[1:]
serve = tf.saved_model.load(export_dir).signatures["serving_default"]
try:
    serve(images=tf.constant([open(good_path, "rb").read(), open(bomb_path, "rb").read()]))
    print("served")
except tf.errors.InvalidArgumentError as e:
    print(next(line for line in e.message.splitlines() if "images[i]" in line))
# VmHWM: this process's own peak; getrusage's would also count the pytest process
# it was forked from, whose peak the kernel carries across exec.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status")
               if line.startswith("VmHWM:"))
print("peak MB", peak_kb // 1024)
"""


def test_a_decompression_bomb_is_refused_from_its_header_in_bounded_memory(trained, tmp_path):
    # 20000 x 20000 = 400 million pixels in 49 KB: decoded, 1.2 GB of RGB and several
    # times that on the way; the default limit is 2^28 pixels.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(20000, 20000))
    assert bomb.stat().st_size < 60_000
    export_dir = export_trained(trained, "export_bomb")
    result = subprocess.run([sys.executable, "-c", BOMB_REQUEST, export_dir, str(bomb),
                             trained["images"][0]], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    refusal, peak = result.stdout.splitlines()[-2:]
    assert refusal.endswith("images[i] declares more than 268435456 pixels (the export\\'s "
                            "--max_image_pixels), for i in] [1]"), refusal
    # Loading TensorFlow and the model is about 0.6 GB; decoding the bomb would be 6 GB.
    assert int(peak.split()[-1]) < 1500, peak


def test_the_pixel_limit_is_exact_for_every_format(trained, tmp_path):
    from PIL import Image

    serve = {}
    for limit in (1200, 1199):
        export_dir = str(tmp_path / f"export_{limit}")
        export.export_saved_model(
            trained["config"], 4, trained["network"].get_weights(), trained["stats"],
            trained["class_names"], export_dir, max_image_pixels=limit)
        info = json.load(open(os.path.join(export_dir, export.INFO_FILE)))
        assert info["max_image_pixels"] == limit
        serve[limit] = tf.saved_model.load(export_dir).signatures["serving_default"]
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(buffer, format=fmt)
        encoded = buffer.getvalue()
        assert [int(v) for v in preprocessing.encoded_image_size(encoded)] == [30, 40], fmt
        assert serve[1200](images=tf.constant([encoded]))["probabilities"].shape == (1, 4)
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=r"more than 1199 pixels .* \[0\]"):
            serve[1199](images=tf.constant([encoded]))


@pytest.mark.parametrize("mode,fmt,expected", [
    ("RGBA", "WEBP", [30, 40]),  # lossy with alpha: the extended (VP8X) header
    ("RGB", "GIF", [30, 40]),
])
def test_header_sizes_of_extended_formats(mode, fmt, expected):
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, (40, 30)).save(buffer, format=fmt, quality=80)
    assert buffer.getvalue()[12:16] == b"VP8X" or fmt != "WEBP"
    assert [int(v) for v in preprocessing.encoded_image_size(buffer.getvalue())] == expected
    assert [int(v) for v in preprocessing.encoded_image_size(b"not an image")] == [0, 0]


def test_an_empty_batch_gives_empty_outputs(trained):
    loaded = tf.saved_model.load(export_trained(trained, "export_empty"))
    expected = {"probabilities": (0, 4), "top5_classes": (0, 4), "top5_probabilities": (0, 4),
                "top5_class_names": (0, 4), "features": (0, 512)}
    for outputs in (loaded.signatures["serving_default"](images=tf.constant([], tf.string)),
                    loaded.signatures["serve_images"](images=tf.zeros([0, 40, 40, 3], tf.uint8))):
        assert {name: tuple(value.shape) for name, value in outputs.items()} == expected


def test_the_litert_model_gives_the_saved_model_s_outputs(trained, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    export_dir = str(tmp_path / "with_tflite")
    export.export_saved_model(
        trained["config"], 4, trained["network"].get_weights(), trained["stats"],
        trained["class_names"], export_dir, tflite=True)
    info = json.load(open(os.path.join(export_dir, export.INFO_FILE)))
    assert info["tflite"] == export.TFLITE_FILE
    images = np.stack([tf.io.decode_png(tf.io.read_file(p), channels=3).numpy()
                       for p in trained["images"]])
    saved = tf.saved_model.load(export_dir).signatures["serve_images"](images=tf.constant(images))
    runner = Interpreter(model_path=os.path.join(export_dir, export.TFLITE_FILE)
                         ).get_signature_runner(export.TFLITE_SIGNATURE)
    for batch in (images[:1], images):  # the batch size is free, as in the SavedModel
        outputs = runner(images=batch)
        np.testing.assert_allclose(outputs["probabilities"],
                                   saved["probabilities"].numpy()[:len(batch)], atol=1e-5)
        np.testing.assert_allclose(outputs["features"], saved["features"].numpy()[:len(batch)],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(outputs["top5_classes"],
                                      saved["top5_classes"].numpy()[:len(batch)])
        np.testing.assert_array_equal(outputs["top5_class_names"],
                                      saved["top5_class_names"].numpy()[:len(batch)])


def test_tflite_refuses_the_custom_op(trained, tmp_path):
    with pytest.raises(export.ExportError, match="--tflite needs the standard-op LRN"):
        export.export_saved_model(
            trained["config"], 4, trained["network"].get_weights(), trained["stats"],
            trained["class_names"], str(tmp_path / "x"), tflite=True, keep_custom_op=True)
    assert not (tmp_path / "x").exists()


def test_loading_the_export_warns_of_nothing_of_the_package_s_making(trained, tmp_path):
    # The serving functions hold the forward ops alone: no custom gradient that the
    # SavedModel cannot keep and the loader would warn about.
    export_dir = export_trained(trained, "export_quiet")
    result = subprocess.run(
        [sys.executable, "-c", "import sys, tensorflow as tf; tf.saved_model.load(sys.argv[1])",
         export_dir], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "custom gradients" not in result.stderr, result.stderr[-2000:]
    assert "WARNING:absl" not in result.stderr, result.stderr[-2000:]


def test_the_export_stores_each_weight_once(trained):
    export_dir = export_trained(trained, "export_size")
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    stored = sum(int(np.prod(shape)) for name, shape in reader.get_variable_to_shape_map().items()
                 if reader.get_variable_to_dtype_map()[name].is_floating)
    assert stored == trained["network"].count_params() + trained["stats"].mean_image.size


# ----------------------------------------------------------------------------------
# One evaluation: training's validation, the tools and the SavedModel agree.


def test_every_evaluation_route_gives_the_same_probabilities_on_jpegs(trained, tmp_path):
    # Real JPEGs of several sizes and aspect ratios, so the window decode, the resize
    # and the mean crop are all exercised; quality 90, with chroma subsampling.
    rng = np.random.default_rng(3)
    encoded = []
    for height, width in ((48, 48), (60, 44), (37, 90), (120, 80)):
        image = tf.image.resize(tf.io.decode_png(tf.io.read_file(trained["images"][0]),
                                                 channels=3), [height, width])
        noisy = np.clip(image.numpy() + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        encoded.append(tf.io.encode_jpeg(noisy, quality=90).numpy())
    config, stats = trained["config"], trained["stats"]
    workdir = trained["workdir"]
    export.export_from_model_dir(workdir, str(tmp_path / "served_ten"), ten_crop=True)
    export.export_from_model_dir(workdir, str(tmp_path / "served_centre"))

    for ten_crop in (False, True):
        examples = tf.data.Dataset.from_tensor_slices(
            {"image": tf.constant(encoded), "label": tf.zeros([4], tf.int64)})
        crops, _ = next(iter(input_pipeline.make_eval_dataset(
            examples, stats, 4, config.image_size, config.crop_size, ten_crop=ten_crop)))
        flat = tf.reshape(crops, [-1, config.crop_size, config.crop_size, 3])
        validation = tf.nn.softmax(trained["network"](flat, training=False)).numpy()
        validation = validation.reshape(4, -1, 4).mean(axis=1)
        mode = inference.TEN_CROP if ten_crop else inference.CENTER
        tool = inference.load_model(workdir).predict(encoded, mode)["probabilities"]
        served = inference.load_model(
            str(tmp_path / ("served_ten" if ten_crop else "served_centre"))).predict(encoded)
        # The same preprocessing function on the same bytes: only float rounding of
        # the network (compiled LRN against its standard-op form) remains.
        np.testing.assert_allclose(tool, validation, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(served["probabilities"], validation, rtol=1e-5, atol=1e-6)
