"""Top-1 and top-5 error of trained networks and of their ensemble (Section 6, Table 2).

    python -m alexnet_tf.evaluate --model_dir=runs/a --model_dir=runs/b/export \\
        [--dataset=... --data_dir=... --split=validation] [--output=errors.json]

Each model is a training run's model directory, evaluated with the centre crop and with
the softmax averaged over ten crops (Section 4.1), or a SavedModel, evaluated with the
crop mode it was exported with. With several models the table ends with their ensemble:
the members' softmax averaged, image by image, as in Table 2's "5 CNNs" row. The data
flags default to the first model directory's training data.
"""

import collections
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from alexnet_tf import command, inference, optim

TOP_KS = (1, 5)  # Section 6 reports top-1 and top-5 error rates
ENSEMBLE = "ensemble"
_MODE_TITLES = {inference.CENTER: "centre", inference.TEN_CROP: "10-crop"}


def _errors(misses, count):
    return {f"top{k}_error": float(m) / count for k, m in zip(TOP_KS, misses)}


def evaluate(models, source, split="validation", batch_size=64, max_examples=None,
             keep_probabilities=False):
    """Top-1 and top-5 errors of each `inference.LoadedModel` and of their ensemble.

    Returns {"split", "examples", "corrupt", "models": [{"path", crop mode: {"top1_error",
    "top5_error"}, ...}, ...], "ensemble": {crop mode: {...}}}. The ensemble is there with
    two or more models, for the crop modes they all offer. With keep_probabilities also
    "ids" and "labels" [N] and "probabilities": {(model index or "ensemble", crop mode):
    [N, C]}.
    """
    inference.check_same_classes(models)
    if models[0].class_names != list(source.class_names):
        raise inference.InferenceError(
            f"{models[0].path} has {models[0].num_classes} classes, the {source.name} data "
            f"{source.num_classes}" + (" with other names" if models[0].num_classes ==
                                         source.num_classes else "") + ".")
    members = [(i, mode) for i, model in enumerate(models) for mode in model.crop_modes]
    ensemble_modes = [mode for mode in inference.CROP_MODES
                      if len(models) > 1 and all(mode in m.crop_modes for m in models)]
    misses = collections.defaultdict(lambda: np.zeros(len(TOP_KS), np.int64))
    kept, kept_labels, kept_ids, count = collections.defaultdict(list), [], [], 0
    total = inference.split_size(source, split)
    progress = tqdm(total=min(total, max_examples or total), unit="img", desc=f"evaluating {split}",
                    mininterval=1.0)
    for encoded, labels, ids in inference.split_batches(source, split, batch_size, max_examples):
        probabilities = {(i, mode): models[i].predict(encoded, mode)["probabilities"]
                         for i, mode in members}
        for mode in ensemble_modes:
            probabilities[(ENSEMBLE, mode)] = np.mean(
                [probabilities[(i, mode)] for i in range(len(models))], axis=0)
        for key, p in probabilities.items():
            misses[key] += [int(optim.top_k_misses(p, labels, k)) for k in TOP_KS]
            if keep_probabilities:
                kept[key].append(p)
        kept_labels.append(labels)
        kept_ids.extend(i.decode() for i in ids)
        count += len(labels)
        progress.update(len(labels))
    progress.close()
    if count == 0:
        raise inference.InferenceError(f"No image of the {split} split could be decoded.")
    result = {
        "split": split, "examples": count, "corrupt": source.corrupt_count(),
        "models": [{"path": model.path, **{mode: _errors(misses[(i, mode)], count)
                                          for mode in model.crop_modes}}
                   for i, model in enumerate(models)],
    }
    if len(models) > 1:
        result[ENSEMBLE] = {mode: _errors(misses[(ENSEMBLE, mode)], count)
                            for mode in ensemble_modes}
    if keep_probabilities:
        result["ids"], result["labels"] = kept_ids, np.concatenate(kept_labels)
        result["probabilities"] = {key: np.concatenate(p) for key, p in kept.items()}
    return result


def format_table(result):
    """The result as a text table: a row per model, and the ensemble's last."""
    columns = [(mode, k) for mode in inference.CROP_MODES for k in TOP_KS]
    header = ["model"] + [f"{_MODE_TITLES[mode]} top-{k}" for mode, k in columns]
    rows = [(m["path"], m) for m in result["models"]]
    if ENSEMBLE in result:
        rows.append((f"ensemble of {len(result['models'])} (mean softmax)", result[ENSEMBLE]))
    lines = [[name] + [f"{100 * errors[mode][f'top{k}_error']:.2f}%" if mode in errors else "-"
                       for mode, k in columns] for name, errors in rows]
    widths = [max(len(line[c]) for line in [header] + lines) for c in range(len(header))]
    text = [f"{result['split']} split: {result['examples']} images"
            + (f" ({result['corrupt']} undecodable skipped)" if result["corrupt"] else "")
            + ", error rates"]
    for line in [header] + lines:
        text.append("  ".join([line[0].ljust(widths[0])]
                              + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]))
    return "\n".join(text)


def main(values):
    """The command, given its flags' values by name."""
    try:
        paths = [p for value in values["model_dir"] for p in value.split(",") if p]
        models = [inference.load_model(path) for path in paths]
        source, _ = inference.load_data_source(
            models, values["dataset"], values["data_dir"], values["manual_dir"])
        result = evaluate(models, source, values["split"], values["batch_size"],
                          values["max_examples"])
        print(format_table(result))
        if values["output"]:
            os.makedirs(os.path.dirname(os.path.abspath(values["output"])), exist_ok=True)
            with open(values["output"], "w") as f:
                json.dump(result, f, indent=2)
            print(f"wrote {values['output']}")
    except inference.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    return result


if __name__ == "__main__":
    from absl import flags

    holders = {
        **inference.define_model_flags(flags, "Also write the errors as JSON here.",
                                       multiple=True),
        **command.data_flags(flags, "default: the first model directory's",
                             split_default="validation"),
        "batch_size": flags.DEFINE_integer("batch_size", 64, "Images per batch.", lower_bound=1),
        "max_examples": flags.DEFINE_integer("max_examples", None, "Evaluate on the first N "
                                             "images of the split only.", lower_bound=1),
    }
    # --help lists the shared flags too.
    flags.adopt_module_key_flags(inference)
    flags.adopt_module_key_flags(command)
    command.run(main, holders)
