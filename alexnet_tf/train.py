"""Trains AlexNet with the paper's recipe, evaluates it, and exports a SavedModel.

    python -m alexnet_tf.train --flagfile=configs/paper.flags [--flag=value ...]

Flags after the flagfile override it. The resolved flags are written to
MODEL_DIR/flags.txt (a flagfile that reproduces the run); rerunning the same
command resumes from the last checkpoint in MODEL_DIR. TensorBoard:
`tensorboard --logdir MODEL_DIR`.
"""

import os
import sys

# Reuse large CPU buffers instead of mapping fresh pages for every tensor
# (see BENCHMARKS.md); must be set before TensorFlow starts.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from absl import app, flags  # noqa: E402

TRAIN_FLAGS = []  # the names _define_flags defines, in order


def _define_flags():
    from alexnet_tf import distribute, input_pipeline, optim
    from alexnet_tf import model as model_lib

    before = set(flags.FLAGS)
    f = flags
    f.DEFINE_string("model_dir", None, "Checkpoints, TensorBoard logs, statistics and the "
                    "export go here; rerunning with the same directory resumes.", required=True)
    f.DEFINE_enum("dataset", "imagenet2012", ["imagenet2012", "image_folder", "synthetic"],
                  "imagenet2012: TFDS's builder over the ILSVRC-2012 tars in --manual_dir; "
                  "image_folder: --data_dir holds train/ and optionally val/, one folder per "
                  "class; synthetic: a tiny generated image folder written to --data_dir.")
    f.DEFINE_string("data_dir", None, "TFDS data directory, or the image folder root.")
    f.DEFINE_string("manual_dir", "", "imagenet2012: where ILSVRC2012_img_train.tar and "
                    "ILSVRC2012_img_val.tar are.")
    f.DEFINE_float("val_fraction", 0.0, "image_folder without val/: the fraction of train/ "
                   "held out for validation.")
    f.DEFINE_enum("model_size", "paper", ["paper", "small"], "paper: Figure 2 on 224x224 "
                  "crops; small: the same topology for ~32x32 images.")
    f.DEFINE_integer("towers", model_lib.PAPER_TOWERS, "2: the paper's two towers; 1: the "
                     "one-tower comparison net with half the kernels (Section 3.2).")
    f.DEFINE_enum("strategy", distribute.AUTO, list(distribute.STRATEGIES),
                  "towers: the paper's two towers of one network on two devices (model "
                  "parallel); one_device; mirrored: data parallel over the local GPUs or "
                  "--devices; multi_worker: data parallel across machines, configured by the "
                  "TF_CONFIG environment variable. auto: multi_worker if TF_CONFIG is set, "
                  "else towers with two GPUs (or --tower_devices), else one_device.")
    f.DEFINE_list("devices", [], "one_device: the device (default the first GPU, else the "
                  "CPU); mirrored: the devices to replicate over (default every local GPU).")
    f.DEFINE_list("tower_devices", [], "--strategy=towers: one device per tower, e.g. "
                  "/GPU:0,/GPU:1. Default: the first two GPUs.")
    f.DEFINE_float("collective_timeout_s", 600.0, "multi_worker: an all-reduce that waits "
                   "longer than this for the other workers fails the run (0: no limit). A "
                   "worker that dies is noticed within about 10 s regardless.")
    f.DEFINE_enum("activation", "relu", ["relu", "tanh"], "Section 3.1.")
    f.DEFINE_bool("lrn", True, "Local response normalization after conv1 and conv2 (3.3).")
    f.DEFINE_bool("overlapping_pooling", True, "3x3 pools at stride 2 (3.4), else 2x2.")
    f.DEFINE_bool("conv6", False, "The extra sixth conv layer of the ILSVRC-2012 variant.")
    f.DEFINE_float("dropout_rate", model_lib.PAPER_DROPOUT_RATE, "Dropout of fc6 and fc7.")
    f.DEFINE_enum("mixed_precision", "none", ["none", "bfloat16", "float16"],
                  "Compute in float32 (none), bfloat16 or float16; variables stay float32. "
                  "float16 uses dynamic loss scaling.")
    f.DEFINE_float("loss_scale_initial", optim.LOSS_SCALE_INITIAL, "float16: the first loss "
                   "scale; halved at each step whose gradients overflow (the step is skipped).")
    f.DEFINE_integer("loss_scale_growth_steps", optim.LOSS_SCALE_GROWTH_STEPS, "float16: "
                     "the loss scale doubles after this many finite steps in a row.")
    f.DEFINE_integer("image_size", 256, "Shorter side rescaled to this, centre square kept.")
    f.DEFINE_integer("crop_size", 224, "Training and evaluation crop side.")
    f.DEFINE_enum("lighting", input_pipeline.LIGHTING_SQRT_EIGENVALUE,
                  list(input_pipeline.LIGHTING_SCALES),
                  "PCA lighting noise (Section 4.1). sqrt_eigenvalue: a_i * sqrt(lambda_i) "
                  "of 0..255 pixels, as the authors' cuda-convnet2; eigenvalue: a_i * lambda_i "
                  "of [0,1] pixels, as many reimplementations (about 2x less on PC1); none.")
    f.DEFINE_float("lighting_stddev", input_pipeline.PAPER_LIGHTING_STDDEV,
                   "Standard deviation of the lighting coefficients a_i.")
    f.DEFINE_string("stats_file", "", "Dataset statistics to use; default: computed once "
                    "into MODEL_DIR.")
    f.DEFINE_integer("stats_examples", 0, "Compute the statistics over a random subset of "
                     "this many training images (0: all).")
    f.DEFINE_integer("batch_size", 128, "Section 5.")
    f.DEFINE_integer("epochs", 90, "Section 5: roughly 90 cycles through the training set.")
    f.DEFINE_integer("steps_per_epoch", 0, "0: the whole training split each epoch.")
    f.DEFINE_float("learning_rate", optim.PAPER_LEARNING_RATE, "Initial learning rate.")
    f.DEFINE_float("momentum", optim.PAPER_MOMENTUM, "Section 5.")
    f.DEFINE_float("weight_decay", optim.PAPER_WEIGHT_DECAY, "Section 5.")
    f.DEFINE_bool("decay_biases", False, "Apply weight decay to biases too (the authors' "
                  "code decays weights only).")
    f.DEFINE_enum("schedule", "plateau", ["plateau", "step"],
                  "plateau: divide by 10 when the validation error stops improving; "
                  "step: divide by 10 at --step_boundaries.")
    f.DEFINE_integer("plateau_patience", 3, "Epochs without improvement before dividing.")
    f.DEFINE_float("plateau_min_delta", 0.001, "Smallest drop of top-1 error that counts "
                   "as an improvement.")
    f.DEFINE_integer("lr_reductions", optim.PAPER_LR_REDUCTIONS, "Most divisions by 10.")
    f.DEFINE_list("step_boundaries", ["30", "60", "80"], "Epochs where --schedule=step "
                  "divides the rate by 10.")
    f.DEFINE_bool("eval_ten_crop", True, "Also evaluate with the softmax averaged over ten "
                  "crops (Section 4.1).")
    f.DEFINE_integer("eval_batch_size", 128, "Images per evaluation batch.")
    f.DEFINE_integer("eval_steps", 0, "Evaluate on this many batches only (0: all).")
    f.DEFINE_integer("checkpoint_every_steps", 1000, "Also checkpoint every N steps.")
    f.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
    f.DEFINE_integer("log_every_steps", 50, "TensorBoard scalars every N steps.")
    f.DEFINE_bool("export", True, "Write a SavedModel to MODEL_DIR/export at the end.")
    f.DEFINE_bool("export_ten_crop", False, "The export averages the softmax over ten crops.")
    f.DEFINE_integer("seed", 0, "Seed of initialisation, data order and augmentation.")
    TRAIN_FLAGS.extend(name for name in flags.FLAGS if name not in before)


def validate(values):
    """Contradictions between flags, found before any work. Returns a list of messages."""
    from alexnet_tf import distribute

    errors = distribute.check_arguments(
        values["strategy"], values["devices"], values["tower_devices"], values["towers"],
        os.environ.get(distribute.TF_CONFIG))
    if values["dataset"] in ("image_folder", "synthetic") and not values["data_dir"]:
        errors.append(f"--dataset={values['dataset']} needs --data_dir.")
    if values["dataset"] == "imagenet2012" and not values["data_dir"]:
        errors.append("--dataset=imagenet2012 needs --data_dir (the TFDS data directory).")
    if values["crop_size"] > values["image_size"]:
        errors.append(f"--crop_size={values['crop_size']} is larger than "
                      f"--image_size={values['image_size']}.")
    if values["tower_devices"] and len(values["tower_devices"]) != values["towers"]:
        errors.append(f"--tower_devices names {len(values['tower_devices'])} devices for "
                      f"--towers={values['towers']}.")
    if not 0 <= values["val_fraction"] < 1:
        errors.append(f"--val_fraction={values['val_fraction']} must be in [0, 1).")
    for name in ("batch_size", "epochs", "eval_batch_size", "checkpoint_every_steps",
                 "keep_checkpoints", "log_every_steps", "image_size", "crop_size",
                 "loss_scale_growth_steps"):
        if values[name] < 1:
            errors.append(f"--{name}={values[name]} must be at least 1.")
    for name in ("learning_rate", "momentum", "weight_decay", "lighting_stddev",
                 "collective_timeout_s"):
        if values[name] < 0:
            errors.append(f"--{name}={values[name]} must not be negative.")
    if values["loss_scale_initial"] < 1:
        errors.append(f"--loss_scale_initial={values['loss_scale_initial']} must be at least 1.")
    if not 0 <= values["dropout_rate"] < 1:
        errors.append(f"--dropout_rate={values['dropout_rate']} must be in [0, 1).")
    try:
        [int(b) for b in values["step_boundaries"]]
    except ValueError:
        errors.append(f"--step_boundaries={','.join(values['step_boundaries'])} must be "
                      "whole numbers of epochs.")
    return errors


def resolved_flagfile(values):
    """The run's flags, resolved, as a flagfile: `--flagfile=MODEL_DIR/flags.txt` reruns it."""
    lines = [f"# python -m alexnet_tf.train --flagfile={os.path.join(values['model_dir'], 'flags.txt')}"]
    for name in TRAIN_FLAGS:
        value = values[name]
        if isinstance(value, list):
            value = ",".join(value)
        lines.append(f"--{name}={value}")
    return "\n".join(lines) + "\n"


def config_from_flags(values):
    from alexnet_tf import trainer

    fields = {f.name for f in trainer.dataclasses.fields(trainer.TrainConfig)}
    kwargs = {k: v for k, v in values.items() if k in fields}
    kwargs["tower_devices"] = tuple(values["tower_devices"])
    kwargs["devices"] = tuple(values["devices"])
    kwargs["step_boundaries"] = tuple(int(b) for b in values["step_boundaries"])
    kwargs["data_dir"] = values["data_dir"] or ""
    return trainer.TrainConfig(**kwargs)


def _writes_model_dir(values):
    """False for a multi-worker run's workers other than the chief."""
    from alexnet_tf import distribute

    tf_config = os.environ.get(distribute.TF_CONFIG)
    if values["strategy"] not in (distribute.AUTO, distribute.MULTI_WORKER) or not tf_config:
        return True
    return distribute.is_chief_task(distribute.parse_tf_config(tf_config))


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]} (flags are --name=value).")
    values = {name: flags.FLAGS[name].value for name in flags.FLAGS}
    errors = validate(values)
    if errors:
        sys.exit("error: " + "\n       ".join(errors))

    from alexnet_tf import trainer

    config = config_from_flags(values)
    model_dir = flags.FLAGS.model_dir
    try:
        trainer.check_workdir(model_dir)
        if _writes_model_dir(values):
            with open(os.path.join(model_dir, "flags.txt"), "w") as f:
                f.write(resolved_flagfile(values))
        metrics = trainer.train_and_evaluate(config, model_dir)
    except trainer.TrainingError as e:
        sys.exit(f"error: {e}")
    if metrics:
        print("final validation: " + ", ".join(
            f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))


if __name__ == "__main__":
    _define_flags()
    app.run(main)
