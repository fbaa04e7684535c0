"""Figure 1 (Section 3.1): how much faster a four-layer CNN learns with ReLUs than tanh.

    python -m alexnet_tf.figure1 --data_dir=data/fashion_mnist --workdir=runs/figure1

The paper trains a four-layer convolutional network on CIFAR-10 with ReLUs and with
tanh units, "the learning rates for each network were chosen independently to make
training as fast as possible. No regularization of any kind was employed", and plots
training error against epochs: the ReLU network reaches 25% training error six times
sooner. Here the same network (`build_figure1_net`, the authors' CIFAR-10
layout) learns Fashion-MNIST at 32x32 instead, CIFAR-10 not being available offline:
28x28 grey images rescaled to 32 and repeated in three channels, the training set's
mean image subtracted, no augmentation, no dropout, no weight decay, no LRN; the
paper's momentum update (0.9) at batch 128.

The training error is measured on a fixed set of --error_examples training images,
in inference mode, every --eval_every_steps steps. A run still at chance after an
epoch (a rate too high for it) stops there and never reaches the threshold.
Fashion-MNIST is easier than CIFAR-10, so the threshold is lower than the paper's
25%: --threshold (12%), chosen so that the ReLU network needs about 2 epochs to reach
it, as it needed several on CIFAR-10.

The command first sweeps --learning_rates for each activation with --seeds' first
seed and takes, for each, the rate that reaches the threshold in the fewest steps
(the lowest final error if none does). While that rate is the smallest or largest
swept, the sweep goes on past it (0.01 -> 0.03 -> 0.1, up to --max_sweep_extensions
times), so that the chosen rate has a slower one on each side; the table says
whether it has. Then it trains that rate with every seed. It
prints and writes (WORKDIR/figure1.json, .md) the steps each run needed, the ratio
tanh / ReLU for each seed and their mean and standard deviation, and draws
WORKDIR/figure1.png in the style of Figure 1 (training error against epochs, solid
ReLU, dashed tanh). Each run is written as WORKDIR/runs/ACTIVATION_lrRATE_seedS.json
when it finishes; rerunning skips the finished ones.
"""

import itertools
import json
import math
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tqdm import tqdm  # noqa: E402

from alexnet_tf import corrupt_images, data, files, input_pipeline, optim  # noqa: E402
from alexnet_tf import preprocessing, settings, trainer  # noqa: E402

IMAGE_SIZE = 32  # CIFAR-10's
BATCH_SIZE = 128
# Figure 1: 25% training error on CIFAR-10, reached about six times sooner with ReLUs.
PAPER_THRESHOLD = 0.25
PAPER_SPEEDUP = 6.0
ACTIVATIONS = ("relu", "tanh")
# A run whose training error is still this high after an epoch has not started to
# learn at its rate (dead ReLUs, or a divergence); it stops there.
STUCK_ERROR = 0.85


# Figure 1's network (Section 3.1): "a four-layer convolutional neural network" on
# CIFAR-10. The authors' CIFAR-10 configuration in cuda-convnet
# (example-layers/layers-18pct.cfg, without its two response-normalization layers,
# as the figure's caption has no regularization of any kind): three 5x5 convolutions
# with zero padding 2, of 32, 32 and 64 kernels, each followed by 3x3 pooling at
# stride 2, max after the first and average after the others, then one fully
# connected layer to the classes. Weights N(0, sigma) with initW 0.0001 for conv1 and
# 0.01 for the rest, biases 0 (cuda-convnet's default initB), for either activation.
FIGURE1_CONV_FILTERS = (32, 32, 64)
FIGURE1_KERNEL_SIZE = 5
FIGURE1_WEIGHT_STDDEVS = (1e-4, 0.01, 0.01, 0.01)


def build_figure1_net(num_classes=10, *, activation="relu", input_shape=(32, 32, 3), seed=None,
                      name="figure1_net"):
    """Figure 1's four-layer CNN (see FIGURE1_CONV_FILTERS), mean-subtracted images to
    logits. cuda-convnet's pooling has ceil((size - 3) / 2) + 1 outputs, the last
    window inside the image as far as it reaches: Keras' "same" pooling, which pads
    only the bottom and right here (32 -> 16 -> 8 -> 4), and whose average counts only
    what is inside.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    seeds = itertools.count(seed or 0)
    images = keras.Input(shape=input_shape, name="images")
    x = images
    pools = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
             keras.layers.AveragePooling2D)
    for i, (filters, pool, stddev) in enumerate(zip(FIGURE1_CONV_FILTERS, pools,
                                                      FIGURE1_WEIGHT_STDDEVS)):
        x = keras.layers.Conv2D(
            filters, FIGURE1_KERNEL_SIZE, padding="same", activation=activation,
            kernel_initializer=keras.initializers.RandomNormal(
                stddev=stddev, seed=None if seed is None else next(seeds)),
            name=f"conv{i + 1}")(x)
        x = pool(settings.PAPER_POOL_SIZE, settings.PAPER_POOL_STRIDE, padding="same", name=f"pool{i + 1}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    logits = keras.layers.Dense(
        num_classes, kernel_initializer=keras.initializers.RandomNormal(
            stddev=FIGURE1_WEIGHT_STDDEVS[-1], seed=None if seed is None else next(seeds)),
        name="fc")(x)
    return keras.Model(images, logits, name=name)


def load_training_images(data_dir, seed=0):
    """(images float32 [N, 32, 32, 3] less the mean image, labels int32 [N], class
    names) of an image folder's training split, decoded once."""
    source = data.load_source(data.IMAGE_FOLDER, data_dir, seed=seed)

    def rescaled(index, example):
        del index
        image = preprocessing.resize_shorter_and_center_crop(
            preprocessing.decode_image(example["image"]), IMAGE_SIZE)
        return image, tf.cast(example["label"], tf.int32)

    batches = input_pipeline.without_autotuning(corrupt_images.map_and_batch_skipping_corrupt(
        source.train_for_epoch(0), rescaled, source.corrupt_counter, 1000))
    images, labels = [], []
    for image_batch, label_batch in tqdm(batches.as_numpy_iterator(), desc="decoding",
                                         total=-(-source.num_train_examples // 1000)):
        images.append(image_batch)
        labels.append(label_batch)
    images, labels = np.concatenate(images), np.concatenate(labels)
    return images - images.mean(axis=0), labels, source.class_names


def training_error(model, images, labels, batch_size=1000):
    misses = 0
    for start in range(0, len(images), batch_size):
        logits = model(images[start:start + batch_size], training=False)
        misses += int(np.sum(np.argmax(logits, axis=1) != labels[start:start + batch_size]))
    return misses / len(images)


def train_run(images, labels, activation, learning_rate, seed, epochs, eval_every_steps,
              error_examples):
    """One run: its training error every eval_every_steps steps, from step 0; it stops
    early if the loss stops being finite, or if after an epoch the error is still at
    chance (STUCK_ERROR)."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = build_figure1_net(int(labels.max()) + 1, activation=activation,
                                            seed=seed)
        optimizer = optim.PaperMomentumSGD(model.trainable_variables, weight_decay=0.0)
    step_fn = trainer.make_train_step(model, optimizer, strategy, BATCH_SIZE)
    probe = np.random.default_rng(1000).permutation(len(images))[:error_examples]
    probe_images, probe_labels = images[probe], labels[probe]
    steps_per_epoch = len(images) // BATCH_SIZE
    rate, stop = tf.constant(learning_rate, tf.float32), tf.constant(0.0)
    curve = [(0, training_error(model, probe_images, probe_labels))]
    step = 0
    for epoch in tqdm(range(epochs), desc=f"{activation} lr {learning_rate:g} seed {seed}",
                      unit="epoch"):
        order = np.random.default_rng([seed, epoch]).permutation(len(images))
        for batch in range(steps_per_epoch):
            chosen = order[batch * BATCH_SIZE:(batch + 1) * BATCH_SIZE]
            loss = step_fn(images[chosen], labels[chosen], rate, stop)[0]
            step += 1
            if step % eval_every_steps == 0:
                if not np.isfinite(float(loss)):
                    return dict(curve=curve, diverged_at=step, steps_per_epoch=steps_per_epoch)
                curve.append((step, training_error(model, probe_images, probe_labels)))
        if curve[-1][1] >= STUCK_ERROR:
            return dict(curve=curve, diverged_at=step, steps_per_epoch=steps_per_epoch)
    return dict(curve=curve, diverged_at=None, steps_per_epoch=steps_per_epoch)


def steps_to(curve, threshold):
    """The first measured step whose training error is at or below threshold, or None."""
    return next((step for step, error in curve if error <= threshold), None)


def run_path(workdir, activation, learning_rate, seed):
    return os.path.join(workdir, "runs", f"{activation}_lr{learning_rate:g}_seed{seed}.json")


def ensure_run(workdir, images, labels, activation, learning_rate, seed, settings):
    """The run's record, trained unless its file exists with the same settings."""
    path = run_path(workdir, activation, learning_rate, seed)
    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
        if record["settings"] == settings:
            return record
    started = time.perf_counter()
    result = train_run(images, labels, activation, learning_rate, seed, settings["epochs"],
                       settings["eval_every_steps"], settings["error_examples"])
    record = dict(activation=activation, learning_rate=learning_rate, seed=seed,
                  settings=settings, seconds=round(time.perf_counter() - started, 1), **result)
    files.write_text_atomically(path, json.dumps(record, indent=1))
    return record


def best_rate(records, threshold):
    """The learning rate whose run reached the threshold in the fewest steps; if none
    did, the one with the lowest final training error."""
    def key(record):
        steps = steps_to(record["curve"], threshold)
        final = record["curve"][-1][1] if record["diverged_at"] is None else 1.0
        return (steps is None, steps or 0, final)

    return min(records, key=key)["learning_rate"]


def _steps_phrase(steps):
    return "threshold not reached" if steps is None else f"{steps} steps"


def neighbour_rate(rate, up):
    """The next rate of a 1-3-10 sweep above (up) or below rate: 0.01 -> 0.03 -> 0.1;
    0.001 -> 0.0003 -> 0.0001. Other rates step by 3x."""
    exponent = math.floor(math.log10(rate) + 1e-9)
    mantissa = round(rate / 10.0 ** exponent, 6)
    if mantissa == 1:
        new = 3 * 10.0 ** (exponent if up else exponent - 1)
    elif mantissa == 3:
        new = 10.0 ** (exponent + 1 if up else exponent)
    else:
        new = rate * 3 if up else rate / 3
    return float(f"{new:.3g}")


def bracketed_sweep(train, rates, threshold, max_extensions):
    """Runs `train(rate)` (-> a run's record) for each rate, then extends the sweep past
    its smallest or largest rate while the best (`best_rate`) is that rate, at most
    max_extensions times, so that the best has a worse rate on each side.

    Returns (records in rate order, best rate, whether it is bracketed).
    """
    records = {rate: train(rate) for rate in sorted(set(rates))}
    extensions = 0
    while True:
        best = best_rate(list(records.values()), threshold)
        bracketed = min(records) < best < max(records)
        if bracketed or extensions == max_extensions:
            return [records[r] for r in sorted(records)], best, bracketed
        edge = neighbour_rate(best, up=best == max(records))
        records[edge] = train(edge)
        extensions += 1


def summarize(chosen, threshold):
    """Steps to the threshold per activation and seed, and the tanh / ReLU ratios."""
    steps = {a: {r["seed"]: steps_to(r["curve"], threshold) for r in chosen[a]}
             for a in ACTIVATIONS}
    seeds = sorted(set(steps["relu"]) & set(steps["tanh"]))
    ratios = [steps["tanh"][s] / steps["relu"][s] for s in seeds
              if steps["relu"][s] and steps["tanh"][s]]
    # Where only ReLU reached it, tanh needs more than its run's last step: a lower bound.
    last = {r["seed"]: r["curve"][-1][0] for r in chosen["tanh"]}
    ratio_bounds = {s: last[s] / steps["relu"][s] for s in seeds
                    if steps["relu"][s] and steps["tanh"][s] is None}
    return dict(
        threshold=threshold, steps=steps, seeds=seeds, ratios=ratios, ratio_bounds=ratio_bounds,
        ratio_mean=statistics.mean(ratios) if ratios else None,
        ratio_std=statistics.stdev(ratios) if len(ratios) > 1 else None,
        learning_rates={a: chosen[a][0]["learning_rate"] for a in ACTIVATIONS},
        unreached={a: [s for s in seeds if steps[a][s] is None] for a in ACTIVATIONS},
    )


def draw(chosen, summary, path):
    """Figure 1's style: training error against epochs, ReLU solid, tanh dashed."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(5.5, 4.2))
    for activation, style in (("relu", "-"), ("tanh", "--")):
        for i, record in enumerate(chosen[activation]):
            steps, errors = zip(*record["curve"])
            epochs = np.array(steps) / record["steps_per_epoch"]
            axes.plot(epochs, errors, style, color="black", linewidth=1.2 if i == 0 else 0.5,
                      label=(f"{'ReLU' if activation == 'relu' else 'tanh'} (lr "
                             f"{record['learning_rate']:g})") if i == 0 else None)
    axes.axhline(summary["threshold"], color="grey", linewidth=0.5)
    axes.set_xlabel("Epochs")
    axes.set_ylabel("Training error rate")
    axes.set_ylim(0, 0.75)
    axes.legend(frameon=False)
    axes.set_title("Fashion-MNIST at 32x32, four-layer CNN (after Figure 1)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def format_table(summary, chosen):
    lines = [f"Threshold {100 * summary['threshold']:g}% training error; learning rates "
             f"chosen by speed: ReLU {summary['learning_rates']['relu']:g}, tanh "
             f"{summary['learning_rates']['tanh']:g}.", "",
             "| seed | ReLU steps (epochs) | tanh steps (epochs) | tanh / ReLU |",
             "|---|---|---|---|"]
    per_epoch = chosen["relu"][0]["steps_per_epoch"]
    for seed in summary["seeds"]:
        relu, tanh = summary["steps"]["relu"][seed], summary["steps"]["tanh"][seed]

        def cell(steps):
            return "not reached" if steps is None else f"{steps} ({steps / per_epoch:.2f})"

        ratio = f"{tanh / relu:.2f}" if relu and tanh else "-"
        if seed in summary["ratio_bounds"]:
            ratio = f"> {summary['ratio_bounds'][seed]:.2f}"
        lines.append(f"| {seed} | {cell(relu)} | {cell(tanh)} | {ratio} |")
    for activation, sweep in summary.get("sweeps", {}).items():
        runs = "; ".join(
            f"{run['learning_rate']:g}: " + ("stuck at chance" if run["stuck"] else
                                               f"{_steps_phrase(run['steps'])}, final "
                                               f"{100 * run['final_error']:.1f}%")
            for run in sweep["runs"])
        lines.append(f"\n{activation}'s sweep (seed {sweep['seed']}): {runs}; the best "
                     + ("has a worse rate on each side." if sweep["bracketed"]
                        else "is still the sweep's edge: NOT bracketed."))
    if summary["ratio_mean"] is not None:
        spread = f" ± {summary['ratio_std']:.2f} (sd)" if summary["ratio_std"] else ""
        lines.append(f"\ntanh / ReLU: {summary['ratio_mean']:.2f}{spread} over "
                     f"{len(summary['ratios'])} seeds; the paper: about {PAPER_SPEEDUP:g}x "
                     f"to {100 * PAPER_THRESHOLD:g}% on CIFAR-10.")
    if summary["ratio_bounds"]:
        lines.append(f"\ntanh did not reach the threshold within its run with seeds "
                     f"{', '.join(map(str, summary['ratio_bounds']))}: tanh / ReLU above "
                     f"{min(summary['ratio_bounds'].values()):.2f} there.")
    return "\n".join(lines) + "\n"


def run(values):
    images, labels, _ = load_training_images(values["data_dir"])
    recipe = dict(epochs=values["epochs"], eval_every_steps=values["eval_every_steps"],
                  error_examples=values["error_examples"], examples=len(images))
    seeds = [int(s) for s in values["seeds"]]
    chosen, sweeps = {}, {}
    for activation in ACTIVATIONS:
        def train(rate, activation=activation):
            return ensure_run(values["workdir"], images, labels, activation, rate, seeds[0],
                              recipe)

        sweep, rate, bracketed = bracketed_sweep(
            train, [float(r) for r in values["learning_rates"]], values["threshold"],
            values["max_sweep_extensions"])
        sweeps[activation] = dict(bracketed=bracketed, seed=seeds[0], runs=[
            dict(learning_rate=r["learning_rate"], steps=steps_to(r["curve"], values["threshold"]),
                 final_error=r["curve"][-1][1], stuck=r["diverged_at"] is not None)
            for r in sweep])
        if not bracketed:
            print(f"warning: {activation}'s best rate {rate:g} is still the edge of its "
                  f"sweep after {values['max_sweep_extensions']} extensions.", file=sys.stderr)
        chosen[activation] = [ensure_run(values["workdir"], images, labels, activation, rate,
                                         seed, recipe) for seed in seeds]
    summary = dict(summarize(chosen, values["threshold"]), sweeps=sweeps)
    table = format_table(summary, chosen)
    draw(chosen, summary, os.path.join(values["workdir"], "figure1.png"))
    files.write_text_atomically(os.path.join(values["workdir"], "figure1.md"), table)
    files.write_text_atomically(os.path.join(values["workdir"], "figure1.json"),
                                json.dumps(summary, indent=2))
    print(table)
    print(f"wrote {values['workdir']}/figure1.png, figure1.md and figure1.json")
    return summary


def main(values):
    try:
        run(values)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from absl import flags

    from alexnet_tf import command

    holders = [
        flags.DEFINE_string("data_dir", None, "An image folder (train/ is used).",
                            required=True),
        flags.DEFINE_string("workdir", None, "Runs, table and figure go here.", required=True),
        flags.DEFINE_list("learning_rates", ["0.001", "0.003", "0.01"],
                          "The rates swept for each activation."),
        flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; the first one sweeps the rates."),
        flags.DEFINE_integer("max_sweep_extensions", 3, "While an activation's best rate is "
                             "the smallest or largest swept, the sweep goes on past it (0.01 "
                             "-> 0.03 -> 0.1), at most this many times.", lower_bound=0),
        flags.DEFINE_integer("epochs", 10, "Epochs per run.", lower_bound=1),
        flags.DEFINE_integer("eval_every_steps", 100, "Training error every N steps.",
                             lower_bound=1),
        flags.DEFINE_integer("error_examples", 5000, "Training images the error is measured "
                             "on.", lower_bound=1),
        # On Fashion-MNIST the ReLU net needs about 2 epochs to reach 12%, as Figure 1's
        # needed several to reach 25% on CIFAR-10 (BENCHMARKS.md).
        flags.DEFINE_float("threshold", 0.12, "The training error whose first crossing "
                           "counts."),
    ]
    command.run(main, {holder.name: holder for holder in holders})
