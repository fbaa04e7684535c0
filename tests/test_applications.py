"""alexnet_tf.AlexNet in keras.applications' shape: the SavedModel's probabilities,
fine-tuning with fit, a .keras round trip, and the README's Keras section as written."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import alexnet_tf
from alexnet_tf import applications, export, preprocessing
from test_export import export_trained, trained  # noqa: F401 (the fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def centre_crops(paths, image_size, crop):
    """(uint8 images, float32 0-255 crops [N, crop, crop, 3]): the centre crops that the
    export's preprocessing takes (with a zero mean image: before the mean)."""
    images = np.stack([tf.io.decode_png(tf.io.read_file(p), channels=3).numpy() for p in paths])
    no_mean = np.zeros((image_size, image_size, 3), np.float32)
    return images, np.stack([preprocessing.eval_crops_from_pixels(image, no_mean, crop).numpy()
                             for image in images])


def test_the_model_directory_s_alexnet_gives_the_saved_model_s_probabilities(trained):  # noqa: F811
    model = alexnet_tf.AlexNet(weights=trained["workdir"])
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 4)
    images, crops = centre_crops(trained["images"], 36, 32)
    served = tf.saved_model.load(export_trained(trained, "export_keras"))
    expected = served.signatures["serve_images"](images=tf.constant(images))["probabilities"]
    np.testing.assert_allclose(model.predict(crops, verbose=0), expected.numpy(), atol=1e-5)
    decoded = alexnet_tf.decode_predictions(expected.numpy(), top=2)
    for row, p in zip(decoded, expected.numpy()):
        order = np.argsort(-p)[:2]
        assert [(name, prob) for name, _, prob in row] == [
            (trained["class_names"][c], pytest.approx(float(p[c]))) for c in order]

    features = alexnet_tf.AlexNet(weights=trained["workdir"], include_top=False)
    expected_features = served.signatures["serve_images"](images=tf.constant(images))["features"]
    np.testing.assert_allclose(features.predict(crops, verbose=0), expected_features.numpy(),
                               rtol=1e-4, atol=1e-4)
    logits = alexnet_tf.AlexNet(weights=trained["workdir"], classifier_activation=None)
    np.testing.assert_allclose(tf.nn.softmax(logits.predict(crops, verbose=0)).numpy(),
                               expected.numpy(), atol=1e-5)


def test_the_paper_s_alexnet_has_the_paper_s_parameters_and_imagenet_s_mean():
    model = alexnet_tf.AlexNet()
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    mean = model.get_layer("subtract_mean").mean.numpy()
    np.testing.assert_allclose(mean, applications.IMAGENET_RGB_MEAN)
    # Figure 2's 60,965,224 parameters, and the 3 means, which are not trainable.
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 60_965_224
    assert model.count_params() == 60_965_224 + 3


def test_one_epoch_of_fit_lowers_the_loss(tmp_path):
    # Two classes of noisy images, one dark, one bright, 64 each, as an image folder.
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, level in (("dark", 60), ("bright", 190)):
        (tmp_path / label).mkdir()
        for i in range(64):
            pixels = np.clip(rng.normal(level, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    images = keras.utils.image_dataset_from_directory(
        tmp_path, image_size=(32, 32), batch_size=8, shuffle=True, seed=0, verbose=False).cache()
    model = alexnet_tf.AlexNet(weights=None, size="small", classes=2)
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss="sparse_categorical_crossentropy")
    before = model.evaluate(images, verbose=0)
    model.fit(images, epochs=1, verbose=0)
    after = model.evaluate(images, verbose=0)
    assert after < 0.5 * before, (before, after)


RELOAD = r"""
import sys
import numpy as np
import keras
import alexnet_tf
model = keras.models.load_model(sys.argv[1])
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
"""


def test_a_keras_file_round_trip_is_bit_identical_in_a_fresh_process(
        trained, tmp_path):  # noqa: F811
    model = alexnet_tf.AlexNet(weights=trained["workdir"])
    _, crops = centre_crops(trained["images"], 36, 32)
    path = str(tmp_path / "alexnet.keras")
    model.save(path)
    np.save(tmp_path / "crops.npy", crops)
    result = subprocess.run([sys.executable, "-c", RELOAD, path, str(tmp_path / "crops.npy"),
                             str(tmp_path / "reloaded.npy")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = np.load(tmp_path / "reloaded.npy")
    assert np.array_equal(reloaded.view(np.uint32),
                          model.predict(crops, verbose=0).view(np.uint32))


def test_the_readme_s_keras_section_runs_as_written(trained, tmp_path, monkeypatch):  # noqa: F811
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        section = f.read().split("## Using it from Keras", 1)[1]
    code = re.search(r"```python\n(.*?)\n```", section, re.S).group(1)
    image_dir = os.path.join(os.path.dirname(trained["images"][0]), os.pardir)
    code = code.replace('model_dir = "runs/fashion_mnist"', f'model_dir = {trained["workdir"]!r}')
    code = code.replace('image_dir = "data/fashion_mnist/val"', f"image_dir = {image_dir!r}")
    assert trained["workdir"] in code and image_dir in code
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    assert os.path.exists(tmp_path / "fine_tuned.keras")
    np.testing.assert_array_equal(namespace["reloaded"].predict(namespace["batch"], verbose=0),
                                  namespace["model"].predict(namespace["batch"], verbose=0))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="size must be one of"):
        alexnet_tf.AlexNet(size="huge")
    with pytest.raises(ValueError, match="classifier_activation must be one of"):
        alexnet_tf.AlexNet(classifier_activation="sigmoid")
