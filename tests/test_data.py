"""Data sources: TFDS's real imagenet2012 builder on tiny ILSVRC-layout tars, and image folders."""

import os

import numpy as np
import pytest
import tensorflow as tf

import ilsvrc_fixture as fx
from alexnet_tf import data
from alexnet_tf import dataset_stats
from alexnet_tf import input_pipeline as ip


def tfds_imagenet_labels():
    """The 1000 synsets in TFDS's label order, read straight from the package."""
    import tensorflow_datasets as tfds

    path = os.fspath(tfds.core.tfds_path("datasets/imagenet2012/labels.txt"))
    with open(path) as f:
        return f.read().split()


def flat_stats(image_size):
    """Statistics of a flat grey training set, enough to build the pipelines."""
    return dataset_stats.DatasetStats(
        mean_image=np.full((image_size, image_size, 3), 100.0, np.float32),
        covariance=np.diag([400.0, 100.0, 25.0]),
        eigenvalues=np.array([400.0, 100.0, 25.0]),
        eigenvectors=np.eye(3),
        num_examples=1,
    )


def assert_jpeg_close(decoded, original):
    """JPEG at quality 95 decoded with the fast IDCT: a few levels on average, rare outliers."""
    difference = np.abs(decoded.astype(np.float64) - original)
    assert decoded.shape == original.shape
    assert difference.mean() < 3.0 and difference.max() <= 16


def by_id(examples):
    return {e["id"].decode(): e for e in examples.as_numpy_iterator()}


# ----------------------------------------------------------------------------------
# ImageNet through TFDS.


SYNSETS = fx.VALIDATION_SYNSETS[:3]


def imagenet_files():
    """The tiny ILSVRC set: ({synset: {name: pixels or bytes}}, {name: pixels})."""
    train = {}
    for k, synset in enumerate(SYNSETS):
        train[synset] = {
            f"{synset}_{i}.JPEG": fx.smooth_image(10 * k + i, 30 + 10 * i, 40) for i in range(2)
        }
    train[SYNSETS[0]][f"{SYNSETS[0]}_90.JPEG"] = fx.smooth_image(50, 24, 20, channels=1)
    train[SYNSETS[1]][f"{SYNSETS[1]}_91.JPEG"] = fx.CMYK_JPEG
    # ILSVRC-2012 holds a PNG named .JPEG; this one also has an alpha channel.
    train[SYNSETS[2]][f"{SYNSETS[2]}_92.JPEG"] = np.dstack(
        [fx.smooth_image(51, 20, 22), np.full((20, 22, 1), 128, np.uint8)]
    )
    train[SYNSETS[0]][f"{SYNSETS[0]}_93.JPEG"] = fx.truncated_jpeg(52)
    train[SYNSETS[1]][f"{SYNSETS[1]}_94.JPEG"] = fx.GARBAGE
    validation = {
        f"ILSVRC2012_val_{i:08d}.JPEG": fx.smooth_image(100 + i, 36, 28) for i in range(1, 4)
    }
    return train, validation


def encode(content):
    if isinstance(content, bytes):
        return content
    return fx.png_bytes(content) if content.shape[-1] == 4 else fx.jpeg_bytes(content)


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    train, validation = imagenet_files()
    fx.write_ilsvrc_tars(
        str(root / "manual"),
        {s: {name: encode(c) for name, c in files.items()} for s, files in train.items()},
        {name: encode(c) for name, c in validation.items()},
    )
    source = data.load_source("imagenet2012", str(root / "tfds"), manual_dir=str(root / "manual"))
    return root, source, train, validation


def test_imagenet_builder_prepares_the_manual_tars(imagenet):
    _, source, train, validation = imagenet
    assert source.num_classes == 1000
    assert source.class_names == tfds_imagenet_labels()
    assert source.num_train_examples == sum(len(files) for files in train.values()) == 11
    assert source.num_validation_examples == 3


def test_imagenet_validation_labels_come_from_the_bundled_file(imagenet):
    _, source, _, validation = imagenet
    labels = tfds_imagenet_labels()
    examples = by_id(source.validation)
    assert sorted(examples) == sorted(validation)
    for i, synset in enumerate(fx.VALIDATION_SYNSETS[:3], start=1):
        example = examples[f"ILSVRC2012_val_{i:08d}.JPEG"]
        assert example["label"] == labels.index(synset)
        assert_jpeg_close(example["image"], validation[f"ILSVRC2012_val_{i:08d}.JPEG"])


def test_imagenet_training_images_decode_convert_and_skip(imagenet):
    _, source, train, _ = imagenet
    labels = tfds_imagenet_labels()
    before = source.corrupt_count()
    examples = by_id(source.train)
    assert source.corrupt_count() - before == 2
    expected_ids = {
        n for files in train.values() for n, c in files.items() if not isinstance(c, bytes)
    }
    expected_ids.add(f"{SYNSETS[1]}_91.JPEG")
    assert set(examples) == expected_ids
    for synset, files in train.items():
        for name, content in files.items():
            if name not in examples:
                continue
            example = examples[name]
            assert example["label"] == labels.index(synset)
            assert example["image"].dtype == np.uint8 and example["image"].shape[-1] == 3
            if isinstance(content, bytes):
                quadrant = example["image"][2, 2]
                np.testing.assert_allclose(quadrant, fx.CMYK_JPEG_QUADRANTS_RGB[0], atol=8)
            elif content.shape[-1] == 1:
                assert_jpeg_close(example["image"], np.repeat(content, 3, axis=2))
            elif content.shape[-1] == 4:
                np.testing.assert_array_equal(example["image"], content[..., :3])
            else:
                assert_jpeg_close(example["image"], content)


def test_imagenet_feeds_training_and_evaluation(imagenet):
    _, source, _, _ = imagenet
    before = source.corrupt_count()
    train = ip.make_train_dataset(
        source.encoded_train,
        flat_stats(16),
        3,
        16,
        12,
        num_epochs=1,
        corrupt_counter=source.corrupt_counter,
    )
    batches = list(train.as_numpy_iterator())
    assert [images.shape for images, _ in batches] == [(3, 12, 12, 3)] * 3
    assert source.corrupt_count() - before == 2
    evaluation = ip.make_eval_dataset(
        source.encoded_validation, flat_stats(16), 2, 16, 12, ten_crop=True
    )
    labels = np.concatenate([labels for _, labels in evaluation.as_numpy_iterator()])
    synsets = tfds_imagenet_labels()
    assert sorted(labels) == sorted(synsets.index(s) for s in fx.VALIDATION_SYNSETS[:3])


def test_imagenet_prepared_once_reads_without_the_tars(imagenet):
    root, _, _, _ = imagenet
    source = data.load_source("imagenet2012", str(root / "tfds"))
    assert source.num_train_examples == 11 and source.num_validation_examples == 3


def test_imagenet_missing_tar_fails_naming_it_and_the_directory(tmp_path):
    manual = tmp_path / "manual"
    fx.write_ilsvrc_tars(str(manual), {SYNSETS[0]: {}}, {})
    os.remove(manual / "ILSVRC2012_img_val.tar")
    with pytest.raises(FileNotFoundError) as error:
        data.load_source("imagenet2012", str(tmp_path / "tfds"), manual_dir=str(manual))
    assert "ILSVRC2012_img_val.tar" in str(error.value) and str(manual) in str(error.value)
    assert "ILSVRC2012_img_train.tar is" not in str(error.value)
    with pytest.raises(FileNotFoundError) as error:
        data.load_source("imagenet2012", str(tmp_path / "tfds"))
    assert "manual_dir" in str(error.value) and str(tmp_path / "tfds") in str(error.value)


# ----------------------------------------------------------------------------------
# Image folders.


@pytest.fixture
def folder(tmp_path):
    """train/{cat, dog, fish} with awkward files and val/{cat, dog}: {path: pixels or bytes}."""
    contents = {
        "train/cat/a.jpg": fx.smooth_image(1, 20, 30),
        "train/cat/b.png": fx.smooth_image(2, 16, 16, channels=1),
        "train/cat/c.PNG": np.dstack([fx.smooth_image(3, 12, 14), np.zeros((12, 14, 1), np.uint8)]),
        "train/cat/nested/d.jpeg": fx.smooth_image(4, 18, 18),
        "train/dog/e.jpg": fx.smooth_image(5, 22, 16),
        "train/dog/f.jpg": fx.CMYK_JPEG,
        "train/dog/g.jpg": fx.truncated_jpeg(6),
        "train/dog/h.jpg": fx.GARBAGE,
        "train/fish/i.png": fx.smooth_image(7, 10, 12),
        "train/fish/j.jpg": fx.smooth_image(8, 14, 10),
        "val/cat/v1.jpg": fx.smooth_image(9, 16, 20),
        "val/dog/v2.png": fx.smooth_image(10, 20, 16),
    }
    for path, content in contents.items():
        if isinstance(content, bytes):
            data_bytes = content
        elif path.lower().endswith(".png"):
            data_bytes = fx.png_bytes(content)
        else:
            data_bytes = fx.jpeg_bytes(content)
        fx.write_file(str(tmp_path / path), data_bytes)
    fx.write_file(str(tmp_path / "train/cat/notes.txt"), b"not an image")
    fx.write_file(str(tmp_path / "train/cat/.hidden.jpg"), fx.GARBAGE)
    return tmp_path, contents


def test_image_folder_reads_classes_labels_and_ids(folder):
    root, contents = folder
    source = data.load_source("image_folder", str(root))
    assert source.class_names == ["cat", "dog", "fish"] and source.num_classes == 3
    assert source.num_train_examples == 10 and source.num_validation_examples == 2
    train = by_id(source.train)
    assert source.corrupt_count() == 2
    assert set(train) == {p for p in contents if p.startswith("train/")} - {
        "train/dog/g.jpg",
        "train/dog/h.jpg",
    }
    for path, example in train.items():
        assert example["label"] == ["cat", "dog", "fish"].index(path.split("/")[1])
        content = contents[path]
        if isinstance(content, bytes):
            np.testing.assert_allclose(
                example["image"][13, 13], fx.CMYK_JPEG_QUADRANTS_RGB[3], atol=8
            )
        elif content.shape[-1] == 1:
            np.testing.assert_array_equal(example["image"], np.repeat(content, 3, axis=2))
        elif content.shape[-1] == 4:
            np.testing.assert_array_equal(example["image"], content[..., :3])
        elif path.endswith(".png"):
            np.testing.assert_array_equal(example["image"], content)
        else:
            assert_jpeg_close(example["image"], content)
    validation = by_id(source.validation)
    assert {p: int(e["label"]) for p, e in validation.items()} == {
        "val/cat/v1.jpg": 0,
        "val/dog/v2.png": 1,
    }


def test_image_folder_training_order_is_shuffled_by_the_seed(folder):
    root, _ = folder

    def order(seed):
        source = data.load_source("image_folder", str(root), seed=seed)
        return [e["id"] for e in source.encoded_train.as_numpy_iterator()]

    assert order(3) == order(3)
    assert sorted(order(3)) == sorted(order(4))
    assert any(order(3) != order(seed) for seed in range(4, 8))


def test_image_folder_feeds_the_same_training_function(folder):
    root, _ = folder
    source = data.load_source("image_folder", str(root))
    dataset = ip.make_train_dataset(
        source.encoded_train,
        flat_stats(16),
        4,
        16,
        12,
        num_epochs=1,
        corrupt_counter=source.corrupt_counter,
    )
    batches = list(dataset.as_numpy_iterator())
    assert [images.shape for images, _ in batches] == [(4, 12, 12, 3)] * 2
    assert source.corrupt_count() == 2


def write_flat_classes(root, counts):
    for name, count in counts.items():
        for i in range(count):
            fx.write_file(
                str(root / "train" / name / f"{i}.png"), fx.png_bytes(fx.smooth_image(i, 4, 4))
            )


def test_image_folder_holds_out_a_fraction_of_each_class(tmp_path):
    write_flat_classes(tmp_path, {"a": 10, "b": 5})

    def split(seed):
        source = data.load_source("image_folder", str(tmp_path), val_fraction=0.2, seed=seed)
        ids = [e["id"].decode() for e in source.encoded_validation.as_numpy_iterator()]
        train = [e["id"].decode() for e in source.encoded_train.as_numpy_iterator()]
        return source, sorted(train), sorted(ids)

    source, train, validation = split(seed=0)
    assert source.num_train_examples == 12 and source.num_validation_examples == 3
    assert sum(v.startswith("train/a/") for v in validation) == 2
    assert sum(v.startswith("train/b/") for v in validation) == 1
    assert not set(train) & set(validation) and len(set(train) | set(validation)) == 15
    assert split(seed=0)[2] == validation
    assert any(split(seed)[2] != validation for seed in range(1, 5))


def test_image_folder_without_validation_has_an_empty_one(tmp_path):
    write_flat_classes(tmp_path, {"a": 2})
    source = data.load_source("image_folder", str(tmp_path))
    assert source.num_validation_examples == 0
    assert list(source.validation.as_numpy_iterator()) == []


def test_image_folder_bad_layouts_fail_at_start_saying_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.load_source("image_folder", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "train")):
        data.load_source("image_folder", str(tmp_path))
    write_flat_classes(tmp_path, {"a": 2})
    os.makedirs(tmp_path / "train" / "empty")
    fx.write_file(str(tmp_path / "train" / "empty" / "readme.txt"), b"no images")
    with pytest.raises(ValueError, match=str(tmp_path / "train" / "empty")):
        data.load_source("image_folder", str(tmp_path))
    os.remove(tmp_path / "train" / "empty" / "readme.txt")
    os.rmdir(tmp_path / "train" / "empty")
    fx.write_file(str(tmp_path / "val" / "zebra" / "z.png"), fx.png_bytes(fx.smooth_image(0, 4, 4)))
    with pytest.raises(ValueError, match="zebra"):
        data.load_source("image_folder", str(tmp_path))
    os.rename(tmp_path / "val" / "zebra", tmp_path / "val" / "a")
    with pytest.raises(ValueError, match="val_fraction"):
        data.load_source("image_folder", str(tmp_path), val_fraction=0.5)
    with pytest.raises(ValueError, match="manual_dir"):
        data.load_source("image_folder", str(tmp_path), manual_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Unknown dataset"):
        data.load_source("cifar10", str(tmp_path))


def test_rescaled_copy_is_an_image_folder_of_central_squares(folder, tmp_path_factory):
    root, contents = folder
    source = data.load_source("image_folder", str(root))
    output = tmp_path_factory.mktemp("rescaled")
    written = data.write_rescaled_image_folder(source, str(output), image_size=8, quality=100)
    assert written == {"train": 8, "val": 2} and source.corrupt_count() == 2
    rescaled = data.load_source("image_folder", str(output))
    assert rescaled.class_names == ["cat", "dog", "fish"]
    examples = by_id(rescaled.train)
    assert len(examples) == 8
    grey = examples["train/cat/train_cat_b.png.jpg"]
    assert grey["label"] == 0
    # b.png is a grey 16x16 square: rescaled to 8x8 it is its 2x2 block means, written as
    # a quality-100 JPEG (grey, so chroma subsampling leaves it alone) and read back with
    # the fast IDCT, which is within a few levels.
    blocks = contents["train/cat/b.png"].astype(np.float64).reshape(8, 2, 8, 2).mean(axis=(1, 3))
    error = np.abs(grey["image"] - np.repeat(blocks[..., None], 3, axis=2))
    assert error.mean() < 2.0 and error.max() <= 6
    assert {e["id"].decode() for e in rescaled.validation.as_numpy_iterator()} == {
        "val/cat/val_cat_v1.jpg",
        "val/dog/val_dog_v2.png.jpg",
    }


def epoch_ids(source, epoch):
    return [example["id"].numpy().decode() for example in source.train_for_epoch(epoch)]


def test_epoch_order_depends_only_on_seed_and_epoch(tmp_path):
    for k in range(12):
        folder = tmp_path / "train" / f"class_{k % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{k}.png").write_bytes(b"not decoded here")
    first = data.load_source("image_folder", str(tmp_path), seed=5)
    resumed = data.load_source("image_folder", str(tmp_path), seed=5)  # a new process, say
    assert epoch_ids(first, 3) == epoch_ids(first, 3) == epoch_ids(resumed, 3)
    assert sorted(epoch_ids(first, 3)) == sorted(epoch_ids(first, 4))
    assert epoch_ids(first, 3) != epoch_ids(first, 4)


def test_training_images_in_memory_give_the_same_batches_as_their_files(tmp_path):
    from alexnet_tf import input_pipeline as pipeline

    data.ensure_synthetic(str(tmp_path))
    source = data.load_source("image_folder", str(tmp_path), seed=3)
    cached = source.with_training_images_in_memory(64 << 20)
    assert cached is not source
    assert source.with_training_images_in_memory(1000) is source  # 96 images of 48x48x3 do not fit
    stats = dataset_stats.compute_stats(source.encoded_train, image_size=36)
    for epoch in (0, 1):
        batches = [list(pipeline.make_train_dataset(
            s.train_for_epoch(epoch), stats, 16, 36, 32, seed=epoch, num_epochs=1,
            corrupt_counter=s.corrupt_counter).as_numpy_iterator()) for s in (source, cached)]
        assert len(batches[0]) == len(batches[1]) == 6
        for (images, labels), (cached_images, cached_labels) in zip(*batches):
            np.testing.assert_array_equal(labels, cached_labels)
            np.testing.assert_array_equal(images, cached_images)
    first = next(iter(cached.train_for_epoch(0)))
    assert first["image"].dtype == tf.uint8 and first["image"].shape == (48, 48, 3)


def test_a_statistics_subset_is_the_same_with_the_images_in_memory_or_in_files(tmp_path):
    from alexnet_tf import config as config_lib
    from alexnet_tf import trainer

    data.ensure_synthetic(str(tmp_path))
    source = data.load_source("image_folder", str(tmp_path), seed=3)
    cached = source.with_training_images_in_memory(64 << 20)
    config = config_lib.TrainConfig(image_size=36, stats_examples=10, seed=3)
    from_files, from_memory = (trainer.load_or_compute_stats(config, s, str(tmp_path / "none"),
                                                             save=False)
                               for s in (source, cached))
    everything = trainer.load_or_compute_stats(
        config_lib.TrainConfig(image_size=36, seed=3), source, str(tmp_path / "none"), save=False)
    np.testing.assert_allclose(from_memory.mean_image, from_files.mean_image, atol=1e-4)
    # A 10-image subset's mean is not the whole set's.
    assert np.abs(from_files.mean_image - everything.mean_image).max() > 1.0
