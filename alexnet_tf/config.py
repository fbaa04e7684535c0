"""A training run's settings, declared once.

`TrainConfig` is the schema: each field's name, default, help text, allowed values and
what may happen to it when a run is resumed are written here and nowhere else. The
training command defines its absl flags from it (`define_flags`), the library takes a
`TrainConfig`, a model directory records it (config.json, and flags.txt as a flagfile
that reruns the run), and every flagfile, the training command's or anyone else's, is
read by one loader (`load_flagfile`) that parses it with those same flag definitions.
"""

import dataclasses
import json
import os
import sys

from absl import flags as absl_flags

from alexnet_tf import settings

# What may differ between a run and the run it resumes (`check_resumable`):
# CHANGEABLE settings take effect from the resumed step on and are recorded; the
# others are fixed by the checkpoint's weights, statistics or data order, so a
# different value is refused.
CHANGEABLE = "changeable"
FIXED = "fixed"
# Fields that describe the network or what its outputs mean: models built from two
# configs that agree on these take the same checkpoints. The network's own (its
# weights' shapes and what its inputs are) are NETWORK fields too; the others are the
# dataset (what the outputs mean) and the initialisation.
ARCHITECTURE = "architecture"


def setting(default, help, *, choices=None, minimum=None, below=None, item_type=str,
            on_resume=FIXED, architecture=False, network=None):
    """A TrainConfig field: its default and help, what values it takes, and whether it
    may change on resume. An architecture field is a network field unless network=False.

    choices: the allowed strings (an enum flag). minimum, below: bounds of a number
      (minimum <= value, value < below). item_type: the type of a list's items.
    """
    return dataclasses.field(default=default, metadata=dict(
        help=help, choices=choices, minimum=minimum, below=below, item_type=item_type,
        on_resume=on_resume, architecture=architecture,
        network=architecture if network is None else network))


# The help texts are the command's `--help`.
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs; `python -m alexnet_tf.train --helpfull` lists the same."""

    # Data.
    dataset: str = setting(
        "imagenet2012", "imagenet2012: TFDS's builder over the ILSVRC-2012 tars in "
        "--manual_dir; image_folder: --data_dir holds train/ and optionally val/ and test/, "
        "one folder per class; synthetic: a tiny generated image folder written to --data_dir.",
        choices=settings.DATASETS, architecture=True, network=False)
    data_dir: str = setting("", "TFDS data directory, or the image folder root.",
                            on_resume=CHANGEABLE)
    manual_dir: str = setting("", "imagenet2012: where ILSVRC2012_img_train.tar and "
                              "ILSVRC2012_img_val.tar are.", on_resume=CHANGEABLE)
    val_fraction: float = setting(
        0.0, "image_folder without val/: the fraction of train/ held out for validation.",
        minimum=0.0, below=1.0)
    # Model.
    model_size: str = setting("paper", "paper: Figure 2 on 224x224 crops; small: the same "
                              "topology for ~32x32 images.", choices=settings.MODEL_SIZES,
                              architecture=True)
    towers: int = setting(settings.PAPER_TOWERS, "2: the paper's two towers; 1: the one-tower "
                          "comparison net with half the kernels (Section 3.2).", minimum=1,
                          architecture=True)
    activation: str = setting("relu", "Section 3.1.", choices=settings.ACTIVATIONS,
                              architecture=True)
    lrn: bool = setting(True, "Local response normalization after conv1 and conv2 (3.3).",
                        architecture=True)
    overlapping_pooling: bool = setting(True, "3x3 pools at stride 2 (3.4), else 2x2.",
                                        architecture=True)
    conv6: bool = setting(False, "The extra sixth conv layer of the ILSVRC-2012 variant.",
                          architecture=True)
    dropout_rate: float = setting(settings.PAPER_DROPOUT_RATE, "Dropout of fc6 and fc7.",
                                  minimum=0.0, below=1.0)
    weight_init: str = setting(
        "", "paper: N(0, 0.01) weights (Section 5); scaled: the paper's gain per layer at "
        "other widths; lecun: N(0, 1/fan-in). Empty: lecun for tanh, else the size's "
        "(paper for the paper's net, scaled for the small one).",
        choices=("",) + settings.WEIGHT_INITS, architecture=True, network=False)
    conv1_padding: str = setting(
        "", "overhang: the authors' code (224 -> 55, the last windows hang over the edge); "
        "valid: Caffe's (227 -> 55); same. Empty: the size's.",
        choices=("",) + settings.CONV1_PADDINGS, architecture=True)
    lrn_depth_radius: int = setting(
        settings.PAPER_LRN_DEPTH_RADIUS, "LRN window radius: n = 2r + 1 maps (Section 3.3: "
        "n = 5).", minimum=0, architecture=True)
    lrn_bias: float = setting(settings.PAPER_LRN_BIAS, "LRN k (Section 3.3: 2).", architecture=True)
    lrn_alpha: float = setting(settings.PAPER_LRN_ALPHA, "LRN alpha (Section 3.3: 1e-4).",
                               minimum=0.0, architecture=True)
    lrn_beta: float = setting(settings.PAPER_LRN_BETA, "LRN beta (Section 3.3: 0.75).", minimum=0.0,
                              architecture=True)
    lrn_alpha_convention: str = setting(
        settings.LRN_PAPER_TEXT, "paper_text: alpha multiplies the window's sum of squares, as the "
        "paper writes; authors_code: alpha / n does, as cuda-convnet, Caffe and PyTorch "
        "compute it.", choices=settings.LRN_ALPHA_CONVENTIONS, architecture=True)
    lrn_across_towers: bool = setting(
        False, "LRN windows cross the towers' boundary (Caffe's bvlc_alexnet); by default "
        "each tower normalizes its own maps, as the authors' two GPUs did.", architecture=True)
    pooling_rule: str = setting(
        "floor", "How many outputs a pooling layer has: floor, (size - 3) // 2 + 1; ceil, "
        "cuda-convnet's and Caffe's, whose last window may hang over the edge.",
        choices=settings.POOLING_RULES, architecture=True)
    # Starting from another model's weights (fine-tuning).
    init_from: str = setting(
        "", "A model directory (trained here, or written by alexnet_tf.import_caffe) whose "
        "weights start this run: every layer but fc8, which is new for this run's classes "
        "(initialized as the paper's). Its network settings are taken unless given.")
    train_layers: tuple = setting(
        (), "The layers that learn, e.g. fc8 or fc6,fc7,fc8; the others keep their weights. "
        "Empty: all.")
    keep_source_mean: bool = setting(
        False, "With --init_from: use that model's dataset statistics (its mean image and "
        "RGB principal components) rather than computing this dataset's.")
    # Placement and precision: the same weights train the same way on any of them.
    strategy: str = setting(
        settings.AUTO, "towers: the paper's two towers of one network on two devices (model "
        "parallel); one_device; mirrored: data parallel over the local GPUs or --devices; "
        "multi_worker: data parallel across machines, configured by the TF_CONFIG environment "
        "variable. auto: multi_worker if TF_CONFIG is set, else towers with two GPUs (or "
        "--tower_devices), else one_device.", choices=settings.STRATEGIES,
        on_resume=CHANGEABLE)
    devices: tuple = setting((), "one_device: the device (default the first GPU, else the CPU); "
                             "mirrored: the devices to replicate over (default every local GPU).",
                             on_resume=CHANGEABLE)
    tower_devices: tuple = setting((), "--strategy=towers: one device per tower, e.g. "
                                   "/GPU:0,/GPU:1. Default: the first two GPUs.",
                                   on_resume=CHANGEABLE)
    collective_timeout_s: float = setting(
        600.0, "multi_worker: an all-reduce that waits longer than this for the other workers "
        "fails the run (0: no limit). A worker that dies is noticed within about 10 s "
        "regardless.", minimum=0.0, on_resume=CHANGEABLE)
    mixed_precision: str = setting(
        "none", "Compute in float32 (none), bfloat16 or float16; variables stay float32. "
        "float16 uses dynamic loss scaling.", choices=("none", "bfloat16", "float16"),
        on_resume=CHANGEABLE)
    loss_scale_initial: float = setting(
        settings.LOSS_SCALE_INITIAL, "float16: the first loss scale; halved at each step whose "
        "gradients overflow (the step is skipped).", minimum=1.0, on_resume=CHANGEABLE)
    loss_scale_growth_steps: int = setting(
        settings.LOSS_SCALE_GROWTH_STEPS, "float16: the loss scale doubles after this many finite "
        "steps in a row.", minimum=1, on_resume=CHANGEABLE)
    # Data and augmentation.
    image_size: int = setting(settings.PAPER_IMAGE_SIZE, "Shorter side rescaled to "
                              "this, centre square kept.", minimum=1, architecture=True)
    crop_size: int = setting(settings.PAPER_CROP_SIZE, "Training and evaluation crop "
                             "side.", minimum=1, architecture=True)
    lighting: str = setting(
        settings.LIGHTING_SQRT_EIGENVALUE, "PCA lighting noise (Section 4.1). "
        "sqrt_eigenvalue: a_i * sqrt(lambda_i) of 0..255 pixels, as the authors' "
        "cuda-convnet2; eigenvalue: a_i * lambda_i of [0,1] pixels, as many "
        "reimplementations (about 2x less on PC1); none.",
        choices=settings.LIGHTING_SCALES)
    lighting_stddev: float = setting(settings.PAPER_LIGHTING_STDDEV, "Standard "
                                     "deviation of the lighting coefficients a_i.", minimum=0.0)
    crops_and_mirrors: bool = setting(
        True, "Train on random crop_size crops of the image_size images and their "
        "horizontal reflections (Section 4.1); false: the centre crop, unmirrored, every "
        "step (the lighting still applies).")
    stats_file: str = setting("", "Dataset statistics to use; default: computed once into "
                              "MODEL_DIR.")
    stats_examples: int = setting(0, "Compute the statistics over a random subset of this "
                                  "many training images (0: all).", minimum=0)
    cache_images_mb: int = setting(
        1024, "An image folder's training images are decoded once and kept in memory if "
        "they take at most this many MB decoded (0: read and decode them every epoch); so "
        "are the validation split's centre crops, which every evaluation reads, if they "
        "take at most this many MB as float32. The run is the same either way.", minimum=0,
        on_resume=CHANGEABLE)
    # Learning.
    batch_size: int = setting(128, "Section 5.", minimum=1)
    epochs: int = setting(90, "Section 5: roughly 90 cycles through the training set. "
                          "The budget unless --train_steps is set.", minimum=1,
                          on_resume=CHANGEABLE)
    train_steps: int = setting(0, "The budget in optimizer steps (0: --epochs epochs), "
                               "whatever the size of the dataset.", minimum=0,
                               on_resume=CHANGEABLE)
    steps_per_epoch: int = setting(0, "0: the whole training split each epoch.", minimum=0)
    learning_rate: float = setting(
        settings.PAPER_LEARNING_RATE, "Initial learning rate. Changed on resume, it replaces "
        "the initial rate: the run continues at the new rate times the reductions made so "
        "far.", minimum=0.0, on_resume=CHANGEABLE)
    momentum: float = setting(settings.PAPER_MOMENTUM, "Section 5.", minimum=0.0)
    weight_decay: float = setting(settings.PAPER_WEIGHT_DECAY, "Section 5.", minimum=0.0)
    decay_biases: bool = setting(False, "Apply weight decay to biases too (the authors' code "
                                 "decays weights only).")
    schedule: str = setting("plateau", "plateau: divide by 10 when the validation error "
                            "stops improving; step: divide by 10 at --step_boundaries.",
                            choices=("plateau", "step"))
    plateau_patience: int = setting(
        settings.PLATEAU_PATIENCE, "Evaluations without improvement before dividing (an "
        "evaluation each epoch, or each --eval_every_steps).", minimum=1, on_resume=CHANGEABLE)
    plateau_min_delta: float = setting(
        settings.PLATEAU_MIN_DELTA, "Smallest drop of top-1 error that counts as an "
        "improvement.", minimum=0.0, on_resume=CHANGEABLE)
    lr_reductions: int = setting(settings.PAPER_LR_REDUCTIONS, "Most divisions by 10.", minimum=0,
                                 on_resume=CHANGEABLE)
    end_at_last_plateau: bool = setting(
        False, "End the run where the validation error stops improving after the last of "
        "--lr_reductions divisions (--schedule=plateau; the paper's rate was \"reduced three "
        "times prior to termination\"), or at the budget if that comes first.",
        on_resume=CHANGEABLE)
    step_boundaries: tuple = setting(
        settings.STEP_BOUNDARIES, "Epochs where --schedule=step divides the rate by 10.",
        item_type=int)
    # Evaluation, checkpoints, logging, export.
    eval_every_steps: int = setting(0, "Evaluate on the validation split every N steps (0: "
                                    "at the end of each epoch).", minimum=0,
                                    on_resume=CHANGEABLE)
    eval_ten_crop: bool = setting(True, "The final evaluation also averages the softmax over "
                                  "ten crops (Section 4.1).", on_resume=CHANGEABLE)
    ten_crop_each_evaluation: bool = setting(False, "Every evaluation during training uses "
                                             "ten crops too, not only the final one.",
                                             on_resume=CHANGEABLE)
    eval_batch_size: int = setting(128, "Images per evaluation batch.", minimum=1,
                                   on_resume=CHANGEABLE)
    eval_steps: int = setting(0, "Evaluate on this many batches only (0: all).", minimum=0,
                              on_resume=CHANGEABLE)
    train_error_examples: int = setting(
        0, "At each evaluation and at the end, also the error of this many training "
        "images (a fixed sample: the first of the seed's first epoch), centre crop, in "
        "inference mode, beside the validation error: the gap between the two is the "
        "overfitting (0: none).", minimum=0, on_resume=CHANGEABLE)
    checkpoint_every_steps: int = setting(1000, "Also checkpoint every N steps.", minimum=1,
                                          on_resume=CHANGEABLE)
    keep_checkpoints: int = setting(3, "Checkpoints kept.", minimum=1, on_resume=CHANGEABLE)
    log_every_steps: int = setting(50, "TensorBoard scalars every N steps.", minimum=1,
                                   on_resume=CHANGEABLE)
    export: bool = setting(True, "Write a SavedModel to MODEL_DIR/export at the end.",
                           on_resume=CHANGEABLE)
    export_ten_crop: bool = setting(False, "The export averages the softmax over ten crops.",
                                    on_resume=CHANGEABLE)
    seed: int = setting(0, "Seed of initialisation, data order and augmentation.")

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """The config config.json holds; fields it lacks take their defaults."""
        values = json.loads(text)
        if "dtype_policy" in values and "mixed_precision" not in values:  # written before it
            named = {policy: name for name, policy in settings.MIXED_PRECISION_POLICIES.items()}
            values["mixed_precision"] = named.get(values["dtype_policy"], "none")
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{name: tuple(value) if isinstance(value, list) else value
                      for name, value in values.items() if name in known})


FIELDS = {field.name: field for field in dataclasses.fields(TrainConfig)}
# The fields that shape the network's weights and what its inputs are: a run that
# starts from another model's weights (--init_from) takes them from it.
NETWORK_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["network"])
LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc6", "fc7", "fc8")
ARCHITECTURE_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["architecture"])
CHANGEABLE_ON_RESUME = tuple(name for name, f in FIELDS.items()
                             if f.metadata["on_resume"] == CHANGEABLE)
# The command's own flag, beside the config's.
MODEL_DIR_FLAG = "model_dir"


# ----------------------------------------------------------------------------------
# Flags.


def define_flags(flag_values=absl_flags.FLAGS, model_dir_required=True):
    """Defines --model_dir and one absl flag per TrainConfig field on flag_values."""
    absl_flags.DEFINE_string(
        MODEL_DIR_FLAG, None, "Checkpoints, TensorBoard logs, statistics and the export go "
        "here; rerunning with the same directory resumes.", required=model_dir_required,
        flag_values=flag_values)
    for name, field in FIELDS.items():
        meta, default = field.metadata, field.default
        kwargs = dict(flag_values=flag_values)
        if meta["choices"]:
            absl_flags.DEFINE_enum(name, default, list(meta["choices"]), meta["help"], **kwargs)
        elif isinstance(default, bool):
            absl_flags.DEFINE_bool(name, default, meta["help"], **kwargs)
        elif isinstance(default, int):
            absl_flags.DEFINE_integer(name, default, meta["help"], **kwargs)
        elif isinstance(default, float):
            absl_flags.DEFINE_float(name, default, meta["help"], **kwargs)
        elif isinstance(default, tuple):
            absl_flags.DEFINE_list(name, [str(v) for v in default], meta["help"], **kwargs)
        else:
            absl_flags.DEFINE_string(name, default, meta["help"], **kwargs)


def config_from_flag_values(flag_values=absl_flags.FLAGS):
    """(TrainConfig, model_dir) from parsed flags.

    Raises:
      ValueError: for a list item of the wrong type (e.g. --step_boundaries=a).
    """
    values = {}
    for name, field in FIELDS.items():
        value = flag_values[name].value
        if isinstance(field.default, tuple):
            item_type = field.metadata["item_type"]
            try:
                value = tuple(item_type(item) for item in value)
            except ValueError as e:
                raise ValueError(f"--{name}={','.join(value)}: every item must be "
                                 f"{'a whole number' if item_type is int else item_type}.") from e
        values[name] = value
    return TrainConfig(**values), flag_values[MODEL_DIR_FLAG].value


def _flagfile_not_text(argv, error):
    """One line naming the --flagfile of argv that is not UTF-8 text, and where."""
    for arg in argv:
        if arg.startswith(("--flagfile=", "-flagfile=")):
            path = arg.split("=", 1)[1]
            try:
                with open(path, encoding="utf-8") as f:
                    f.read()
            except UnicodeDecodeError as e:
                return (f"--flagfile={path} is not UTF-8 text (byte {e.start}: "
                        f"{e.object[e.start:e.start + 1]!r}); a flagfile holds one --flag=value "
                        "per line.")
            except OSError:
                continue
    return f"a flagfile is not UTF-8 text ({error.reason} at byte {error.start})."


def parse_flags(argv, flag_values=absl_flags.FLAGS):
    """absl's parse of argv (`app.run`'s flags_parser), with its errors as one line and
    exit status 1: an unknown flag or bad value, a missing or undecodable flagfile."""
    try:
        return flag_values(argv)
    except UnicodeDecodeError as e:
        sys.exit(f"error: {_flagfile_not_text(argv[1:], e)}")
    except absl_flags.Error as e:
        message = " ".join(str(e).split()).removeprefix("ERROR:: ")
        sys.exit(f"error: {message} (--helpfull lists the flags).")


def parse_args(argv):
    """(TrainConfig, model_dir) from command-line style arguments, e.g.
    ["--flagfile=configs/small.flags", "--epochs=2"], with absl's own parser and the
    training command's flag definitions; later flags override earlier ones.

    Raises:
      ValueError: for an unknown flag or a bad value, naming it.
    """
    flag_values = absl_flags.FlagValues()
    define_flags(flag_values, model_dir_required=False)
    try:
        flag_values(["alexnet_tf.train", *argv])
    except absl_flags.Error as e:
        raise ValueError(str(e)) from e
    except UnicodeDecodeError as e:
        raise ValueError(_flagfile_not_text(argv, e)) from e
    return config_from_flag_values(flag_values)


def load_flagfile(path, **overrides):
    """(TrainConfig, model_dir) of a flagfile such as configs/small.flags, with `overrides`
    (field name -> value) applied after it, as flags after --flagfile on a command line."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Flagfile {path} does not exist.")
    args = [f"--flagfile={path}"]
    for name, value in overrides.items():
        if isinstance(value, (tuple, list)):
            value = ",".join(str(v) for v in value)
        args.append(f"--{name}={value}")
    return parse_args(args)


def to_flagfile(config, model_dir):
    """The config as a flagfile: `--flagfile=MODEL_DIR/flags.txt` reruns the run."""
    lines = [f"# python -m alexnet_tf.train --flagfile={os.path.join(model_dir, 'flags.txt')}",
             f"--{MODEL_DIR_FLAG}={model_dir}"]
    for name in FIELDS:
        value = getattr(config, name)
        if isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------
# Validation.


def _bound_errors(config):
    errors = []
    for name, field in FIELDS.items():
        value, meta = getattr(config, name), field.metadata
        if meta["minimum"] is not None and value < meta["minimum"]:
            errors.append(f"--{name}={value} must be at least {meta['minimum']}.")
        if meta["below"] is not None and value >= meta["below"]:
            errors.append(f"--{name}={value} must be below {meta['below']}.")
        if meta["choices"] and value not in meta["choices"]:
            errors.append(f"--{name}={value} is not one of {', '.join(meta['choices'])}.")
    return errors


def validate(config, tf_config=None):
    """Contradictions in a config, found before any work: a list of messages.

    tf_config: the TF_CONFIG environment variable's text, or None when it is unset.
    """
    errors = _bound_errors(config)
    from alexnet_tf import distribute  # TensorFlow: only where a config is checked

    errors += distribute.check_arguments(config.strategy, config.devices, config.tower_devices,
                                         config.towers, tf_config)
    if config.towers not in (1, 2):
        errors.append(f"--towers={config.towers} must be 1 or 2.")
    if not config.data_dir:
        what = ("the TFDS data directory" if config.dataset == settings.IMAGENET2012
                else "the images")
        errors.append(f"--dataset={config.dataset} needs --data_dir ({what}).")
    if not config.lrn_bias >= settings.MIN_LRN_BIAS:
        errors.append(f"--lrn_bias={config.lrn_bias} must be at least {settings.MIN_LRN_BIAS:.4g} "
                      "(twice float32's smallest normal value).")
    if config.crop_size > config.image_size:
        errors.append(f"--crop_size={config.crop_size} is larger than "
                      f"--image_size={config.image_size}.")
    unknown = [name for name in config.train_layers if name not in LAYERS]
    if unknown:
        errors.append(f"--train_layers names {', '.join(unknown)}; the layers are "
                      f"{', '.join(LAYERS)}.")
    if config.keep_source_mean and not config.init_from:
        errors.append("--keep_source_mean needs --init_from (the model whose mean to keep).")
    if config.tower_devices and len(config.tower_devices) != config.towers:
        errors.append(f"--tower_devices names {len(config.tower_devices)} devices for "
                      f"--towers={config.towers}.")
    if config.end_at_last_plateau and config.schedule != "plateau":
        errors.append(f"--end_at_last_plateau needs --schedule=plateau, not {config.schedule}.")
    return errors


def network_differences(source, config):
    """Messages for each network setting in which config differs from source's."""
    return [f"--{name}: {getattr(source, name)!r} in the source, {getattr(config, name)!r} now"
            for name in NETWORK_FIELDS if getattr(source, name) != getattr(config, name)]


def check_resumable(previous, current):
    """Messages for each setting that differs from the run being resumed and may not.

    `previous` is the config the model directory records. Settings marked CHANGEABLE
    may differ; the rest are fixed by what the checkpoint holds."""
    return [f"--{name}: {getattr(previous, name)!r} in the model directory, "
            f"{getattr(current, name)!r} now"
            for name in FIELDS
            if name not in CHANGEABLE_ON_RESUME
            and getattr(previous, name) != getattr(current, name)]


def changed_on_resume(previous, current):
    """{name: (previous value, current value)} of the CHANGEABLE settings that differ."""
    return {name: (getattr(previous, name), getattr(current, name))
            for name in CHANGEABLE_ON_RESUME
            if getattr(previous, name) != getattr(current, name)}
