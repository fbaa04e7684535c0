"""The evaluation and figure tools on one smoke model trained for this module: their
numbers against NumPy computed from the network itself, their PNGs' sizes and pixels,
the model directory and its SavedModel giving the same answers, and bad inputs."""

import glob
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from alexnet_tf import compress, dataset_stats, evaluate, export, inference, input_pipeline, predict
from alexnet_tf import retrieve
from alexnet_tf import figures, show_filters, trainer
from alexnet_tf import preprocessing
from alexnet_tf import model_dir, optim
from test_train import REPO, smoke_config

CLASSES = ["class_0", "class_1", "class_2", "class_3"]  # the synthetic data's
RED = (214, 39, 40)  # predict's bar for the true label


def write_model_dir(workdir, directory, network, class_names):
    """A model directory with workdir's config and statistics and network's weights."""
    os.makedirs(directory)
    for name in (model_dir.CONFIG_FILE, model_dir.STATS_FILE):
        shutil.copy(os.path.join(workdir, name), directory)
    with open(os.path.join(directory, model_dir.CLASSES_FILE), "w") as f:
        json.dump(class_names, f)
    checkpoints = os.path.join(directory, model_dir.CHECKPOINT_DIR)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=network), checkpoints, 1).save()
    return str(directory)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("tools")
    config = smoke_config(tmp_path, epochs=1, eval_ten_crop=False)
    workdir = str(tmp_path / "model")
    trainer.train_and_evaluate(config, workdir)
    network = model_dir.create_model(config, len(CLASSES))
    latest = tf.train.latest_checkpoint(os.path.join(workdir, model_dir.CHECKPOINT_DIR))
    tf.train.Checkpoint(model=network).read(latest).expect_partial()

    # A second, different model of the same classes, for the ensemble.
    rng = np.random.default_rng(0)
    other = model_dir.create_model(config, len(CLASSES))
    other.set_weights([w * (1 + 0.3 * rng.standard_normal(w.shape)).astype(np.float32)
                       for w in network.get_weights()])
    other_dir = write_model_dir(workdir, tmp_path / "other", other, CLASSES)

    data_dir = str(tmp_path / "data")
    return dict(
        config=config, workdir=workdir, export_dir=os.path.join(workdir, model_dir.EXPORT_DIR),
        network=network, other=other, other_dir=other_dir, data_dir=data_dir,
        stats=dataset_stats.load_stats(os.path.join(workdir, model_dir.STATS_FILE)),
        train=sorted(glob.glob(os.path.join(data_dir, "train", "*", "*.png"))),
        val=sorted(glob.glob(os.path.join(data_dir, "val", "*", "*.png"))),
        model=inference.load_model(workdir),
        saved_model=inference.load_model(os.path.join(workdir, model_dir.EXPORT_DIR)),
        tmp_path=tmp_path, references={},
    )


def reference(trained, paths, network="network", ten_crop=False):
    """(probabilities, fc7 features) of image files by the evaluation preprocessing and
    the in-memory network (the compiled LRN), here, all images in one batch; remembered
    for the module."""
    key = (network, ten_crop, tuple(paths))
    if key not in trained["references"]:
        config, model = trained["config"], trained[network]
        crops = []
        for path in paths:
            image = tf.io.decode_png(tf.io.read_file(path), channels=3)
            image_crops = preprocessing.eval_crops_from_pixels(
                image, trained["stats"].mean_image, config.crop_size, ten_crop=ten_crop)
            crops.append(image_crops if ten_crop else image_crops[None])
        both = keras.Model(model.inputs, [model.output, model.get_layer("fc7").output])
        logits, features = both(tf.concat(crops, 0), training=False)
        per_image = [len(paths), -1, logits.shape[-1]]
        trained["references"][key] = (
            tf.nn.softmax(logits).numpy().reshape(per_image).mean(axis=1),
            features.numpy().reshape(per_image[:2] + [features.shape[-1]]).mean(axis=1))
    return trained["references"][key]


def read_png(path):
    return tf.io.decode_png(tf.io.read_file(str(path)), channels=3).numpy()


def label_of(path):
    return CLASSES.index(os.path.basename(os.path.dirname(path)))


def numpy_errors(probabilities, labels):
    ranked = np.argsort(-probabilities, axis=1)
    return {f"top{k}_error": float(np.mean([label not in row[:k] for row, label in
                                            zip(ranked, labels)])) for k in (1, 5)}


def test_model_dir_and_saved_model_give_the_networks_answers(trained):
    paths = trained["val"][::4]
    encoded = [open(p, "rb").read() for p in paths]
    model, saved_model = trained["model"], trained["saved_model"]
    assert model.crop_modes == (inference.CENTER, inference.TEN_CROP)
    assert saved_model.crop_modes == (inference.CENTER,)  # exported without ten crops
    assert model.class_names == saved_model.class_names == CLASSES
    for mode in inference.CROP_MODES:
        probabilities, features = reference(trained, paths, ten_crop=mode == inference.TEN_CROP)
        outputs = model.predict(encoded, mode)
        np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(outputs["features"], features, rtol=1e-4, atol=1e-5)
    outputs = saved_model.predict(encoded)
    probabilities, features = reference(trained, paths)
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(outputs["features"], features, rtol=1e-4, atol=1e-5)


def test_top_k_misses_against_argsort():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(10), size=200)
    labels = rng.integers(0, 10, 200)
    ranked = np.argsort(-probabilities, axis=1)
    for k in (1, 3, 5):
        expected = [label not in row[:k] for row, label in zip(ranked, labels)]
        assert float(optim.top_k_misses(probabilities, labels, k)) == sum(expected)
        # Image by image, as the count is made of.
        for i in range(0, 200, 7):
            assert float(optim.top_k_misses(probabilities[i:i + 1], labels[i:i + 1], k)) == (
                expected[i])


def test_evaluate_errors_and_ensemble_against_numpy(trained):
    model, other, saved_model = trained["model"], inference.load_model(trained["other_dir"]), \
        trained["saved_model"]
    source, _ = inference.load_data_source([model])
    result = evaluate.evaluate([model, other, saved_model], source, batch_size=10,
                               keep_probabilities=True)

    paths = [os.path.join(trained["data_dir"], i) for i in result["ids"]]
    assert sorted(paths) == trained["val"] and result["examples"] == 32
    labels = [label_of(p) for p in paths]
    np.testing.assert_array_equal(result["labels"], labels)
    centre = {}
    for i, network in enumerate(["network", "other"]):
        for mode in inference.CROP_MODES:
            probabilities, _ = reference(trained, paths, network, mode == inference.TEN_CROP)
            np.testing.assert_allclose(result["probabilities"][(i, mode)], probabilities,
                                       rtol=1e-4, atol=1e-6)
            assert result["models"][i][mode] == numpy_errors(probabilities, labels)
            if mode == inference.CENTER:
                centre[i] = probabilities
    assert result["models"][2] == {"path": saved_model.path,
                                   inference.CENTER: numpy_errors(centre[0], labels)}
    assert np.abs(centre[0] - centre[1]).max() > 0.01  # two models that differ

    # The SavedModel offers the centre crop only, so the ensemble has only that.
    assert list(result["ensemble"]) == [inference.CENTER]
    members = [result["probabilities"][(i, inference.CENTER)] for i in range(3)]
    np.testing.assert_allclose(result["probabilities"][("ensemble", inference.CENTER)],
                               np.mean(members, axis=0), rtol=1e-6)
    mean = (2 * centre[0] + centre[1]) / 3
    assert result["ensemble"][inference.CENTER] == numpy_errors(mean, labels)

    itself = evaluate.evaluate([model, model], source, keep_probabilities=True)
    for mode in inference.CROP_MODES:
        assert itself["ensemble"][mode] == itself["models"][0][mode]
        np.testing.assert_allclose(itself["probabilities"][("ensemble", mode)],
                                   itself["probabilities"][(0, mode)], rtol=1e-6)


def test_evaluate_command_prints_the_table_and_writes_json(trained, tmp_path, capsys):
    output = tmp_path / "errors.json"
    evaluate.main(dict(model_dir=[f"{trained['workdir']},{trained['export_dir']}"], dataset=None,
                       data_dir=None, manual_dir=None, split="validation", batch_size=16,
                       max_examples=None, output=str(output)))
    written = json.loads(output.read_text())
    probabilities, _ = reference(trained, trained["val"])
    labels = [label_of(p) for p in trained["val"]]
    assert written["models"][0][inference.CENTER] == numpy_errors(probabilities, labels)
    assert written["models"][1][inference.CENTER] == written["models"][0][inference.CENTER]
    assert written["ensemble"][inference.CENTER] == written["models"][0][inference.CENTER]

    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:5]}
    top1 = f"{100 * written['models'][0][inference.CENTER]['top1_error']:.2f}%"
    ten_top1 = f"{100 * written['models'][0][inference.TEN_CROP]['top1_error']:.2f}%"
    assert rows[trained["workdir"]] == [top1, "0.00%", ten_top1, "0.00%"]  # 4 classes: top-5 is all
    assert rows[trained["export_dir"]] == [top1, "0.00%", "-", "-"]
    assert lines[4].startswith("ensemble of 2 (mean softmax)")


def stretched(kernel):
    """NumPy float64 contrast stretch of one [k, k, 3] kernel to 0..255."""
    kernel = kernel.astype(np.float64)
    return np.round((kernel - kernel.min()) / (kernel.max() - kernel.min()) * 255)


def test_show_filters_one_block_per_tower_each_kernel_stretched(trained, tmp_path, capsys):
    output = tmp_path / "filters.png"
    show_filters.main(dict(model_dir=trained["workdir"], output=str(output), columns=None, zoom=3))
    figure = read_png(output)
    # Small model: 2 towers of 16 kernels 5x5. Each tower one row: 1 px around and
    # between tiles, 4 px between the towers, every pixel 3x3.
    assert figure.shape == (3 * (2 * (1 + 5 + 1) + 4), 3 * (1 + 16 * 6), 3)
    assert "16 + 16 conv1 kernels of 5x5x3" in capsys.readouterr().out
    pixels = figure[::3, ::3]
    np.testing.assert_array_equal(figure, pixels.repeat(3, 0).repeat(3, 1))
    kernels = [w.numpy() for w in trained["network"].get_layer("conv1").trainable_weights
               if len(w.shape) == 4]
    for tower, top in enumerate((1, 1 + 7 + 4)):
        for i in range(16):
            tile = pixels[top:top + 5, 1 + 6 * i:1 + 6 * i + 5]
            assert tile.min() == 0 and tile.max() == 255
            assert np.abs(tile - stretched(kernels[tower][..., i])).max() <= 1
    assert (pixels[:, 0] == 255).all() and (pixels[7:11] == 255).all()  # spacing, tower gap

    saved = figures.filter_figure(trained["saved_model"].conv1_kernels, zoom=3)
    np.testing.assert_array_equal(saved, figure)
    wrapped = figures.filter_figure(trained["model"].conv1_kernels, columns=5, zoom=1)
    assert wrapped.shape == (2 * (1 + 4 * 6) + 4, 1 + 5 * 6, 3)  # 16 kernels in 4 rows of 5


def test_show_filters_paper_size_96_kernels_in_two_rows():
    rng = np.random.default_rng(2)
    kernels = [rng.standard_normal((11, 11, 3, 48)) for _ in range(2)]
    figure = figures.filter_figure(kernels)
    zoom = 48 // 11  # about 48 pixels a kernel
    assert figure.shape == (zoom * (2 * (1 + 11 + 1) + 4), zoom * (1 + 48 * 12), 3)
    tile = figure[zoom * (13 + 4 + 1):, zoom * (1 + 12 * 47):][:zoom * 11:zoom, :zoom * 11:zoom]
    np.testing.assert_array_equal(tile, stretched(kernels[1][..., 47]))


def red_rows(figure, rows):
    """Whether each of the figure's `rows` horizontal bands holds the true-label red."""
    red = np.all(figure == RED, axis=-1)
    return [bool(band.sum() > 50) for band in np.array_split(red, rows)]


def read_table(output):
    """[(path, [(class, probability)], error)] of predict's CSV or JSON lines table."""
    if str(output).endswith(".csv"):
        import csv

        return [(row["path"], [(row[f"top{k}_class"], float(row[f"top{k}_probability"]))
                               for k in range(1, 6) if row[f"top{k}_class"]], row["error"])
                for row in csv.DictReader(open(output, newline=""))]
    return [(row["path"], [(t["class"], t["probability"]) for t in row["top5"]],
             row["error"] or "") for row in map(json.loads, open(output))]


@pytest.mark.parametrize("extension", [".csv", ".jsonl"])
def test_predict_writes_a_table_for_a_folder_with_a_row_for_each_undecodable_file(
        trained, tmp_path, capsys, extension):
    # 96 images in three levels of folders (two batches of 64), a corrupt JPEG, a text file.
    folder = tmp_path / "photos"
    (folder / "nested" / "deeper").mkdir(parents=True)
    copies = {}
    for index, path in enumerate(trained["train"]):
        subfolder = ("nested/deeper", "nested", ".")[index % 3]
        copies[str(folder / subfolder / f"{index:03d}.png")] = path
        shutil.copy(path, folder / subfolder / f"{index:03d}.png")
    bad = [str(folder / "nested" / "corrupt.jpg"), str(folder / "notes.txt")]
    (folder / "nested" / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / f"out{extension}"
    written, failed = predict.main(dict(model_dir=trained["workdir"], output=str(output),
                                        labels=None, images=[str(folder)]))
    assert (written, failed) == (len(copies) + 2, 2)
    assert f"{len(copies)} images predicted, 2 files that do not decode" in capsys.readouterr().out
    rows = read_table(output)
    assert sorted(path for path, _, _ in rows) == sorted(list(copies) + bad)
    assert sorted(path for path, _, error in rows if error) == sorted(bad)
    assert all("cannot be decoded" in error and not top for _, top, error in rows if error)
    predicted = [(path, top) for path, top, error in rows if not error]
    probabilities, _ = reference(trained, [copies[path] for path, _ in predicted])
    for (path, top), p in zip(predicted, probabilities):
        order = np.argsort(-p)[:5]  # the data has 4 classes, so 4 columns are filled
        assert [name for name, _ in top] == [CLASSES[c] for c in order], path
        np.testing.assert_allclose([q for _, q in top], p[order], rtol=1e-4, atol=1e-6)
    assert not list(tmp_path.glob("*.partial*"))


def test_predict_s_table_keeps_going_past_images_a_model_refuses(trained, tmp_path):
    # A SavedModel that takes at most 2,000 pixels an image, a 48x48 image (2,304) among
    # 32x32 ones, and a 49 KB PNG declaring 20000x20000 that is never decoded.
    from PIL import Image
    from test_export import png_bomb

    export_dir = str(tmp_path / "small_limit")
    export.export_from_model_dir(trained["workdir"], export_dir, max_image_pixels=2000)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, side in (("a.png", 32), ("b.png", 48), ("c.png", 32)):
        Image.open(trained["val"][0]).convert("RGB").resize((side, side)).save(folder / name)
    (folder / "d.png").write_bytes(png_bomb(20000, 20000))
    output = tmp_path / "table.csv"
    written, failed = predict.write_table(inference.load_model(export_dir),
                                          predict.image_paths([str(folder)]), str(output))
    assert (written, failed) == (4, 2)
    rows = {os.path.basename(path): (top, error) for path, top, error in read_table(output)}
    assert [name for name, (top, _) in sorted(rows.items()) if top] == ["a.png", "c.png"]
    assert "declares more than 2000 pixels" in rows["b.png"][1]
    assert "declares 20000x20000 pixels" in rows["d.png"][1]


def test_predict_top5_equals_argsort_and_marks_the_true_label(trained, tmp_path, capsys):
    paths = trained["val"][::8]  # one image per class
    output = tmp_path / "predictions.png"
    records = predict.main(dict(model_dir=trained["export_dir"], output=str(output), labels=None,
                                images=paths))
    probabilities, _ = reference(trained, paths)
    printed = capsys.readouterr().out
    for record, p, path in zip(records, probabilities, paths):
        top = np.argsort(-p)[:5]
        assert [c for c, _, _ in record["top"]] == list(top)
        np.testing.assert_allclose([q for _, _, q in record["top"]], p[top], rtol=1e-4)
        assert record["label"] == CLASSES[label_of(path)]
        assert f"{path} (true: {record['label']})" in printed
        assert f"  1. {CLASSES[top[0]]}  {p[top[0]]:.4f}" in printed
    figure = read_png(output)
    assert figure.shape == (4 * 200, 800, 3)  # 8 x 2 inches an image at 100 dpi
    # 4 classes: the true label is always among the bars, red where wide enough to see.
    visible = [p[label_of(path)] > 0.05 for p, path in zip(probabilities, paths)]
    assert [red for red, seen in zip(red_rows(figure, 4), visible) if seen] == [True] * sum(visible)

    # Outside a class folder the label is unknown unless given; the model directory
    # gives the SavedModel's answers.
    loose = tmp_path / "loose"
    loose.mkdir()
    copies = [shutil.copy(p, loose / f"{i}.png") for i, p in enumerate(paths[:2])]
    records, _ = predict.predict_files(trained["model"], copies)
    assert [r["label"] for r in records] == [None, None]
    np.testing.assert_allclose([r["probabilities"] for r in records], probabilities[:2],
                               rtol=1e-4, atol=1e-6)
    predict.draw_predictions(records, [open(c, "rb").read() for c in copies], str(output))
    assert red_rows(read_png(output), 2) == [False, False]
    most_probable = CLASSES[np.argmax(probabilities[0])]
    records, encoded = predict.predict_files(trained["model"], copies, labels=[most_probable, ""])
    assert [r["label"] for r in records] == [most_probable, None]
    predict.draw_predictions(records, encoded, str(output))
    assert red_rows(read_png(output), 2) == [True, False]


def test_nearest_neighbours_equal_brute_force_float64_with_ties(monkeypatch):
    monkeypatch.setattr(retrieve, "QUERY_BLOCK", 2)  # 5 queries: three blocks
    rng = np.random.default_rng(3)
    features = rng.standard_normal((50, 7)).astype(np.float32)
    features[30] = features[3]  # an exact tie, which goes to the lower row
    queries = np.concatenate([rng.standard_normal((4, 7)), features[3:4] + 1e-3]).astype(np.float32)
    distances = np.sqrt(((features.astype(np.float64)[None] - queries[:, None]) ** 2).sum(-1))
    expected = np.argsort(distances, axis=1, kind="stable")[:, :6]
    for chunk_rows in (8, 50, 1000):
        indices, found = retrieve.nearest_neighbours(features, queries, 6, chunk_rows=chunk_rows)
        np.testing.assert_array_equal(indices, expected)
        np.testing.assert_allclose(found, np.take_along_axis(distances, expected, 1), rtol=1e-12)
    assert list(indices[-1, :2]) == [3, 30]


@pytest.fixture(scope="module")
def indexes(trained):
    """Feature indexes of the training and validation images, built by the command."""
    paths = {}
    for split in ("train", "validation"):
        paths[split] = str(trained["tmp_path"] / f"index_{split}")
        retrieve.main(dict(model_dir=trained["workdir"], index=paths[split], build_index=True,
                           dataset=None, data_dir=None, manual_dir=None, split=split,
                           batch_size=16, max_examples=None, k=5, thumbnail=24, output=None,
                           queries=[]))
    return {split: retrieve.load_index(path) for split, path in paths.items()}


def test_retrieve_neighbours_equal_brute_force_and_the_figure_shows_them(
        trained, indexes, tmp_path, capsys):
    index = indexes["train"]
    paths = [os.path.join(trained["data_dir"], i) for i in index.ids]
    assert sorted(paths) == trained["train"]
    np.testing.assert_array_equal(index.labels, [label_of(p) for p in paths])
    _, features = reference(trained, paths)
    np.testing.assert_allclose(index.features, features, rtol=1e-4, atol=1e-5)

    queries = [trained["val"][0], trained["val"][17], trained["train"][40]]  # the last is indexed
    output = tmp_path / "neighbours.png"
    values = dict(model_dir=trained["workdir"], index=index.path, build_index=True, dataset=None,
                  data_dir=None, manual_dir=None, split="train", batch_size=16,
                  max_examples=None, k=5, thumbnail=24, output=str(output), queries=queries)
    _, (indices, distances) = retrieve.main(values)
    assert "Reusing the index" in capsys.readouterr().out

    _, query_features = reference(trained, queries)
    exact = np.sqrt(((features.astype(np.float64)[None] - query_features[:, None]) ** 2).sum(-1))
    expected = np.argsort(exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(exact, expected, 1), rtol=1e-4,
                               atol=1e-4)
    assert paths[indices[2, 0]] == queries[2] and distances[2, 0] < 1e-3

    # 3 rows of 6 thumbnails of 24 px, 2 px apart, 10 px after the query column.
    figure = read_png(output)
    assert figure.shape == (2 + 3 * 26, 2 + 6 * 26 + 8, 3)
    for r, row in enumerate(indices):
        for c, path in enumerate([queries[r]] + [paths[i] for i in row]):
            y, x = 2 + 26 * r, 2 + 26 * c + (8 if c else 0)
            image = read_png(path).astype(np.float32)
            side = min(image.shape[:2])
            top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
            thumbnail = tf.image.resize(image[top:top + side, left:left + side], [24, 24]).numpy()
            assert np.abs(figure[y:y + 24, x:x + 24] - np.round(thumbnail)).max() <= 1

    # Sources other than image folders are read in one pass that picks the images out.
    source, _ = inference.load_data_source([trained["model"]])
    wanted = [str(index.ids[i]) for i in indices[:, :2].ravel()]
    picked = retrieve.pick_images(inference.split_examples(source, "train"), wanted)
    assert picked == [open(os.path.join(trained["data_dir"], i), "rb").read() for i in wanted]

    saved_indices, _ = retrieve.nearest_neighbours(
        index.features, retrieve.query_features(
            trained["saved_model"], index, [open(q, "rb").read() for q in queries]), 5)
    np.testing.assert_array_equal(saved_indices, indices)


def test_compress_against_numpy_and_euclidean(trained, indexes, capsys):
    rng = np.random.default_rng(4)
    codes = rng.integers(0, 256, (40, 2), dtype=np.uint8)
    queries = rng.integers(0, 256, (5, 2), dtype=np.uint8)
    bits = np.unpackbits(codes, axis=1)
    query_bits = np.unpackbits(queries, axis=1)
    hamming = (bits[None] != query_bits[:, None]).sum(-1)
    expected = np.argsort(hamming, axis=1, kind="stable")[:, :7]  # ties by row
    indices, distances = compress.hamming_neighbours(codes, queries, 7)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(distances, np.take_along_axis(hamming, expected, 1))

    index, validation = indexes["train"], indexes["validation"]
    result = compress.main(dict(index=index.path, queries=validation.path, bits=16, k=5,
                                steps=50, seed=0))
    table = capsys.readouterr().out
    exact = np.sqrt(((np.asarray(index.features, np.float64)[None]
                      - validation.features[:, None]) ** 2).sum(-1))
    euclidean = np.argsort(exact, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(result["euclidean"], euclidean)
    codes = result["encoder"].codes(index.features)
    assert codes.shape == (96, 2) and codes.dtype == np.uint8
    precisions = [np.mean(index.labels[found] == validation.labels[:, None])
                  for found in (euclidean, result["hamming"])]
    assert [row["precision"] for row in result["rows"]] == pytest.approx(precisions)
    assert [row["bits"] for row in result["rows"]] == [32 * 512, 16]
    for row in result["rows"]:
        assert f"{row['method']}" in table and f"{row['precision']:9.4f}" in table


def test_bad_inputs_stop_with_a_message_naming_them(trained, tmp_path):
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    for name in (model_dir.CONFIG_FILE, model_dir.CLASSES_FILE, model_dir.STATS_FILE):
        shutil.copy(os.path.join(trained["workdir"], name), untrained)
    with pytest.raises(SystemExit, match=f"error: No checkpoint in {untrained}/checkpoints"):
        show_filters.main(dict(model_dir=str(untrained), output=str(tmp_path / "f.png"),
                               columns=None, zoom=None))

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not the rest of a JPEG")
    with pytest.raises(SystemExit, match=f"error: Image {broken} cannot be decoded"):
        predict.main(dict(model_dir=trained["workdir"], output=str(tmp_path / "p.png"),
                          labels=None, images=[trained["val"][0], str(broken)]))
    with pytest.raises(SystemExit, match=f"error: Image {tmp_path}/missing.png does not exist"):
        predict.main(dict(model_dir=trained["workdir"], output=str(tmp_path / "p.png"),
                          labels=None, images=[str(tmp_path / "missing.png")]))

    with pytest.raises(SystemExit, match=f"error: Index {tmp_path}/no_index does not exist"):
        retrieve.main(dict(model_dir=trained["workdir"], index=str(tmp_path / "no_index"),
                           build_index=False, dataset=None, data_dir=None, manual_dir=None,
                           split="train", batch_size=16, max_examples=None, k=5, thumbnail=24,
                           output=str(tmp_path / "n.png"), queries=[trained["val"][0]]))

    five = model_dir.create_model(trained["config"], 5)
    five_dir = write_model_dir(trained["workdir"], tmp_path / "five", five, CLASSES + ["class_4"])
    evaluate_values = dict(dataset=None, data_dir=None, manual_dir=None, split="validation",
                           batch_size=16, max_examples=None, output=None)
    with pytest.raises(SystemExit, match=f"error: {five_dir} has 5 classes and "
                                         f"{trained['workdir']} has 4"):
        evaluate.main(dict(evaluate_values, model_dir=[trained["workdir"], five_dir]))
    with pytest.raises(SystemExit, match=f"error: {tmp_path}/nowhere does not exist"):
        evaluate.main(dict(evaluate_values, model_dir=[str(tmp_path / "nowhere")]))


def test_commands_exit_non_zero_with_a_one_line_error_zero_on_success_and_have_help(
        trained, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    commands = {
        "predict": [f"--model_dir={trained['workdir']}", f"--output={tmp_path / 'p.png'}",
                    str(broken)],
        "retrieve": ["--help"],
        "show_filters": [f"--model_dir={trained['export_dir']}", f"--output={tmp_path / 'f.png'}"],
    }
    processes = {
        name: subprocess.Popen([sys.executable, "-m", f"alexnet_tf.{name}", *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in commands.items()
    }
    outputs = {name: p.communicate(timeout=240) for name, p in processes.items()}
    results = {name: (processes[name].returncode, *out) for name, out in outputs.items()}
    returncode, _, stderr = results["predict"]
    assert returncode == 1 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: Image {broken} cannot be decoded")
    _, stdout, _ = results["retrieve"]  # absl's --help exits with 1
    assert "--[no]build_index" in stdout and "--k" in stdout and "--split" in stdout
    returncode, stdout, _ = results["show_filters"]
    assert returncode == 0 and stdout.startswith(f"wrote {tmp_path / 'f.png'}: 16 + 16 conv1")
