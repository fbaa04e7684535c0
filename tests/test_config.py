"""The run's one schema: flags defined from it, flagfiles read by one loader, the
record written into a model directory, and the resume rule."""

import dataclasses
import glob
import os
import subprocess
import sys

import pytest

from alexnet_tf import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_shipped_flagfile_loads_and_validates(monkeypatch):
    # A flagfile's own --flagfile lines are relative to the working directory (absl's
    # rule); the commands run from the repository's root.
    monkeypatch.chdir(REPO)
    for path in sorted(glob.glob(os.path.join(REPO, "configs", "*.flags"))):
        config, _ = config_lib.load_flagfile(path, data_dir="/data")
        assert config_lib.validate(config) == [], path


def test_the_small_recipe_read_from_its_flagfile_with_overrides():
    config, model_dir = config_lib.load_flagfile(
        os.path.join(REPO, "configs", "small.flags"), data_dir="/data", epochs=1, export=False)
    assert model_dir is None
    assert (config.dataset, config.model_size, config.towers) == ("image_folder", "small", 2)
    assert (config.image_size, config.crop_size, config.batch_size) == (36, 32, 128)
    assert config.lighting_stddev == 0.1 and config.export is False
    assert (config.epochs, config.data_dir) == (1, "/data")
    # Everything the flagfile does not set keeps the schema's one default.
    defaults = config_lib.TrainConfig()
    assert (config.momentum, config.weight_decay, config.seed) == (
        defaults.momentum, defaults.weight_decay, defaults.seed)


def test_bad_flagfiles_name_the_flag(tmp_path):
    bad = tmp_path / "bad.flags"
    bad.write_text("# a comment\n--model_size=small\n--no_such_setting=1\n")
    with pytest.raises(ValueError, match="no_such_setting"):
        config_lib.load_flagfile(str(bad))
    bad.write_text("--lrn=maybe\n")
    with pytest.raises(ValueError, match="lrn"):
        config_lib.load_flagfile(str(bad))
    bad.write_text("--step_boundaries=3,x\n")
    with pytest.raises(ValueError, match="--step_boundaries=3,x: every item must be a whole"):
        config_lib.load_flagfile(str(bad))
    with pytest.raises(FileNotFoundError, match="missing.flags"):
        config_lib.load_flagfile(str(tmp_path / "missing.flags"))


def test_the_resolved_flagfile_round_trips_every_field(tmp_path):
    config = dataclasses.replace(config_lib.TrainConfig(), data_dir="/d", towers=1, epochs=7,
                                 step_boundaries=(2, 5), tower_devices=("/cpu:0",),
                                 learning_rate=0.03, lrn=False)
    path = tmp_path / "flags.txt"
    path.write_text(config_lib.to_flagfile(config, "/runs/a"))
    loaded, model_dir = config_lib.load_flagfile(str(path))
    assert loaded == config and model_dir == "/runs/a"
    assert config_lib.TrainConfig.from_json(config.to_json()) == config


def test_each_field_has_help_and_each_default_is_written_once():
    for name, field in config_lib.FIELDS.items():
        assert field.metadata["help"], name
    # The command's flags are the schema's, with the schema's defaults.
    from absl import flags

    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values, model_dir_required=False)
    flag_values(["train"])
    assert config_lib.config_from_flag_values(flag_values)[0] == config_lib.TrainConfig()


def test_validation_names_each_bad_value():
    config = dataclasses.replace(config_lib.TrainConfig(), data_dir="", batch_size=0,
                                 dropout_rate=1.0, crop_size=300)
    errors = " ".join(config_lib.validate(config))
    for message in ("--batch_size=0 must be at least 1", "--dropout_rate=1.0 must be below 1",
                    "--crop_size=300 is larger than --image_size=256",
                    "--dataset=imagenet2012 needs --data_dir"):
        assert message in errors


def test_the_resume_rule_splits_changeable_from_fixed_settings():
    before = dataclasses.replace(config_lib.TrainConfig(), data_dir="/d")
    after = dataclasses.replace(before, learning_rate=0.001, epochs=120, log_every_steps=7,
                                towers=1, seed=4)
    assert config_lib.changed_on_resume(before, after) == {
        "epochs": (90, 120), "learning_rate": (0.01, 0.001), "log_every_steps": (50, 7)}
    refused = config_lib.check_resumable(before, after)
    assert [line.split(":")[0] for line in refused] == ["--towers", "--seed"]
    assert set(config_lib.ARCHITECTURE_FIELDS) <= set(config_lib.FIELDS) - set(
        config_lib.CHANGEABLE_ON_RESUME)


def test_the_network_flags_reach_the_builder():
    from alexnet_tf import model_dir

    config = dataclasses.replace(
        config_lib.TrainConfig(), model_size="small", crop_size=32, image_size=36,
        conv1_padding="valid", weight_init="paper", lrn_depth_radius=1, lrn_bias=1.5,
        lrn_alpha=2e-4, lrn_beta=0.5, lrn_alpha_convention="authors_code",
        pooling_rule="ceil")
    model = model_dir.create_model(config, 10, tower_devices=(None, None))
    lrn = model.get_layer("lrn2").stacks[0][0]
    assert (lrn.depth_radius, lrn.bias, lrn.alpha, lrn.beta, lrn.alpha_convention) == (
        1, 1.5, 2e-4, 0.5, "authors_code")
    assert model.get_layer("conv1").output[0].shape[1] == 28  # 32 - 5 + 1: no padding
    assert type(model.get_layer("pool1").stacks[0][0]).__name__ == "CeilMaxPooling2D"
    kernel = model.get_layer("conv3").stacks[0][0].kernel.numpy()
    assert abs(kernel.std() - 0.01) < 0.001  # "paper": N(0, 0.01) at any width
    tanh = model_dir.create_model(dataclasses.replace(config, activation="tanh", weight_init=""),
                                  10, tower_devices=(None, None))
    assert tanh.get_layer("input_scale").scale == pytest.approx(1 / 64)


def test_the_flag_schema_and_help_load_without_tensorflow():
    # What `python -m alexnet_tf.train --help` imports: the package under "-m", the
    # command's module, the schema; nothing of TensorFlow's or Keras'.
    probe = ("import sys; sys.argv = ['-m']; import alexnet_tf.train, alexnet_tf.config; "
             "heavy = [m for m in ('tensorflow', 'keras') if m in sys.modules]; "
             "print(heavy)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    help_run = subprocess.run([sys.executable, "-m", "alexnet_tf.train", "--helpfull"],
                              capture_output=True, text=True, timeout=120)
    assert "--plateau_patience" in help_run.stdout  # absl exits 1 after any help


def test_every_default_the_schema_owns_is_the_library_s_default():
    # Each default is written once, in settings.py: the schema's fields and the library's
    # keyword arguments both read it there, so they cannot drift apart.
    import inspect

    from alexnet_tf import input_pipeline, model, ops, optim

    fields = config_lib.FIELDS
    owners = {
        optim.PlateauSchedule.__init__: {"initial_learning_rate": "learning_rate",
                                         "patience": "plateau_patience",
                                         "min_delta": "plateau_min_delta",
                                         "max_reductions": "lr_reductions"},
        optim.StepSchedule.__init__: {"initial_learning_rate": "learning_rate",
                                      "boundaries": "step_boundaries"},
        optim.PaperMomentumSGD.__init__: {"momentum": "momentum",
                                          "weight_decay": "weight_decay"},
        optim.DynamicLossScale.__init__: {"initial_scale": "loss_scale_initial",
                                          "growth_steps": "loss_scale_growth_steps"},
        model.build_alexnet: {"towers": "towers", "dropout_rate": "dropout_rate",
                              "activation": "activation", "pooling_rule": "pooling_rule"},
        ops.local_response_normalization: {"depth_radius": "lrn_depth_radius",
                                           "bias": "lrn_bias", "alpha": "lrn_alpha",
                                           "beta": "lrn_beta",
                                           "alpha_convention": "lrn_alpha_convention"},
        input_pipeline.make_train_dataset: {"lighting_stddev": "lighting_stddev",
                                            "lighting": "lighting",
                                            "crops_and_mirrors": "crops_and_mirrors"},
    }
    for function, arguments in owners.items():
        parameters = inspect.signature(function).parameters
        for argument, field in arguments.items():
            assert parameters[argument].default == fields[field].default, (
                function.__qualname__, argument, field)
    assert tuple(model.SIZES) == config_lib.FIELDS["model_size"].metadata["choices"]


def test_a_subnormal_lrn_bias_is_refused_in_one_line():
    errors = config_lib.validate(config_lib.TrainConfig(data_dir="d", lrn_bias=1e-40))
    assert any("--lrn_bias=1e-40 must be at least 2.351e-38" in e for e in errors), errors
    assert config_lib.validate(config_lib.TrainConfig(data_dir="d", lrn_bias=2.5e-38)) == []


def test_the_network_fields_are_the_architecture_fields_that_shape_the_weights():
    # Derived from the schema's markers: the dataset (what the outputs mean) and the
    # initialisation describe a run's model but not the shapes --init_from copies.
    assert set(config_lib.NETWORK_FIELDS) == set(config_lib.ARCHITECTURE_FIELDS) - {
        "dataset", "weight_init"}
    from alexnet_tf import data, settings

    # The choice lists the library checks against are the schema's own objects.
    assert data.DATASETS is settings.DATASETS is config_lib.FIELDS["dataset"].metadata["choices"]
    assert data.SPLITS is settings.SPLITS
