"""The five most probable classes of images: Figure 4 (left), or a table of any size.

    python -m alexnet_tf.predict --model_dir=MODEL_DIR --output=predictions.png IMAGE ...
        [--labels=CLASS,...]
    python -m alexnet_tf.predict --model_dir=MODEL_DIR --output=predictions.csv \
        FOLDER_OR_IMAGE ...

MODEL_DIR is a training run's model directory or its SavedModel.

A .png output is Figure 4: a row per image, the image beside bars of its top-5
probabilities; the true label's bar is drawn red when it is among them, and the true
label is written under the image. The true label is the --labels entry for the image,
else the image's folder name when that is a class name (as in an image-folder
dataset). The top-5 are printed too.

A .csv or .jsonl output is a table of every image named and every file under the
folders named (recursively, in sorted order): one row per file with its path, its
top-5 classes (the model's class names and their descriptions) and probabilities,
streamed BATCH_SIZE images at a time under a progress bar. A file that does not
decode as an image gets a row with its `error` and no classes; the command counts
them at the end. The table is written beside its destination and renamed into place
when complete.
"""

import csv
import json
import os
import sys

import numpy as np

from alexnet_tf import command, files, inference

TOP_K = 5  # Figure 4 shows the five most probable labels
BATCH_SIZE = 64
HIGHLIGHT = (214, 39, 40)  # the true label's bar
BAR = (31, 119, 180)
ROW_INCHES = 2.0
MARGIN_INCHES = 0.3
FIGURE_INCHES = 8.0
DPI = 100


def true_label(path, class_names, label=None):
    """The given label, else the image's folder name if it is a class; None if neither."""
    if label:
        if label not in class_names:
            raise inference.InferenceError(f"--labels names {label!r} for {path}, which is not "
                                           "one of the model's classes.")
        return label
    folder = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return folder if folder in class_names else None


def predict_files(model, paths, labels=None, crop_mode=None):
    """[{"path", "label" (or None), "top": [(class index, name, probability)] * 5,
    "probabilities": [C]}] for image files, in their order."""
    if labels and len(labels) != len(paths):
        raise inference.InferenceError(f"--labels has {len(labels)} entries for {len(paths)} "
                                       "images; give one per image.")
    encoded = [inference.read_image_file(path) for path in paths]
    probabilities = np.concatenate([
        model.predict(encoded[start:start + BATCH_SIZE], crop_mode)["probabilities"]
        for start in range(0, len(encoded), BATCH_SIZE)])
    records = []
    for index, (path, p) in enumerate(zip(paths, probabilities)):
        top = np.argsort(-p, kind="stable")[:TOP_K]
        label = true_label(path, model.class_names, labels[index] if labels else None)
        records.append({
            "path": path,
            "label": label,
            "label_index": None if label is None else model.class_names.index(label),
            "label_description": None if label is None else model.class_descriptions[
                model.class_names.index(label)],
            "top": [(int(c), model.class_descriptions[c], float(p[c])) for c in top],
            "probabilities": p,
        })
    return records, encoded


def draw_predictions(records, encoded, path):
    """Writes the figure: a row per record, FIGURE_INCHES x ROW_INCHES at DPI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(FIGURE_INCHES, ROW_INCHES * len(records)), dpi=DPI)
    FigureCanvasAgg(figure)
    margin = MARGIN_INCHES / figure.get_figheight()  # the same for any number of rows
    grid = figure.add_gridspec(len(records), 2, width_ratios=(1, 2), wspace=0.6, hspace=0.5,
                               left=0.04, right=0.96, bottom=margin, top=1 - margin)
    colours = {True: np.array(HIGHLIGHT) / 255, False: np.array(BAR) / 255}
    for row, (record, image) in enumerate(zip(records, encoded)):
        picture = figure.add_subplot(grid[row, 0])
        picture.imshow(inference.thumbnail(image, 128))
        picture.set_xticks([])
        picture.set_yticks([])
        picture.set_title(os.path.basename(record["path"]), fontsize=8)
        picture.set_xlabel(f"true: {record['label_description']}" if record["label"] else "",
                           fontsize=9)
        bars = figure.add_subplot(grid[row, 1])
        names = [name for _, name, _ in record["top"]]
        bars.barh(range(len(names)), [p for _, _, p in record["top"]],
                  color=[colours[c == record["label_index"]] for c, _, _ in record["top"]])
        bars.set_yticks(range(len(names)), names, fontsize=8)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=7)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    figure.savefig(path, dpi=DPI)


def format_predictions(records):
    lines = []
    for record in records:
        lines.append(record["path"] + (f" (true: {record['label']})" if record["label"] else ""))
        for rank, (c, name, p) in enumerate(record["top"], 1):
            mark = "  <- true" if c == record["label_index"] else ""
            lines.append(f"  {rank}. {name}  {p:.4f}{mark}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------
# A table of predictions.

TABLE_FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def table_format(output):
    """"csv", "jsonl", or None for the figure (.png)."""
    return TABLE_FORMATS.get(os.path.splitext(output)[1].lower())


def image_paths(arguments):
    """Every file named, and every file under each folder named, recursively, sorted."""
    paths = []
    for argument in arguments:
        if os.path.isdir(argument):
            for root, folders, names in os.walk(argument):
                folders.sort()
                paths.extend(os.path.join(root, name) for name in sorted(names))
        elif os.path.isfile(argument):
            paths.append(argument)
        else:
            raise inference.InferenceError(f"{argument} is neither an image file nor a folder.")
    return paths


def _table_columns():
    columns = ["path"]
    for rank in range(1, TOP_K + 1):
        columns += [f"top{rank}_class", f"top{rank}_description", f"top{rank}_probability"]
    return columns + ["error"]


def _rows(model, paths, crop_mode=None):
    """Yields a row per path: {"path", "top": [(class, description, probability)] * 5,
    "error"}; a batch's images are read, checked and predicted together."""
    for start in range(0, len(paths), BATCH_SIZE):
        batch, encoded, errors = paths[start:start + BATCH_SIZE], [], {}
        for path in batch:
            try:
                encoded.append(inference.read_image_file(path))
            except (inference.InferenceError, OSError) as e:
                errors[path] = " ".join(str(e).split())
        readable = [path for path in batch if path not in errors]
        by_path = _predict_each(model, readable, encoded, crop_mode, errors)
        for path in batch:
            if path in errors:
                yield {"path": path, "top": [], "error": errors[path]}
                continue
            p = by_path[path]
            top = np.argsort(-p, kind="stable")[:TOP_K]
            yield {"path": path, "error": None, "top": [
                (model.class_names[c], model.class_descriptions[c], float(p[c])) for c in top]}


def _predict_each(model, paths, encoded, crop_mode, errors):
    """{path: probabilities} of a batch; where the model refuses the batch (an image
    over a SavedModel's pixel limit, say), image by image, each refusal into errors."""
    import tensorflow as tf

    try:
        return dict(zip(paths, model.predict(encoded, crop_mode)["probabilities"] if encoded
                        else []))
    except tf.errors.InvalidArgumentError:
        pass
    by_path = {}
    for path, image in zip(paths, encoded):
        try:
            by_path[path] = model.predict([image], crop_mode)["probabilities"][0]
        except tf.errors.InvalidArgumentError as e:
            errors[path] = next((line.strip() for line in e.message.splitlines()
                                 if "images[i]" in line), " ".join(e.message.split())[:300])
    return by_path


def _write_row(out, fmt, row):
    if fmt == "jsonl":
        out.write(json.dumps({"path": row["path"], "top5": [
            {"class": c, "description": d, "probability": p} for c, d, p in row["top"]],
            "error": row["error"]}) + "\n")
        return
    cells = [row["path"]]
    for rank in range(TOP_K):
        cells += list(row["top"][rank]) if rank < len(row["top"]) else ["", "", ""]
    csv.writer(out).writerow(cells + [row["error"] or ""])


def write_table(model, paths, output, crop_mode=None):
    """Writes the table of `paths` to output (CSV or JSON lines, by its extension);
    returns (rows, rows with an error)."""
    from tqdm import tqdm

    fmt = table_format(output)
    directory = os.path.dirname(output)
    if directory:
        os.makedirs(directory, exist_ok=True)
    staging = files.staging_path(output)
    written = failed = 0
    try:
        with open(staging, "w", newline="", encoding="utf-8") as out, tqdm(
                total=len(paths), unit="img", disable=None) as progress:
            if fmt == "csv":
                csv.writer(out).writerow(_table_columns())
            for row in _rows(model, paths, crop_mode):
                _write_row(out, fmt, row)
                written, failed = written + 1, failed + (row["error"] is not None)
                progress.update(1)
        os.replace(staging, output)
    finally:
        if os.path.exists(staging):
            os.remove(staging)
    return written, failed


def main_table(values):
    paths = image_paths(values["images"])
    if not paths:
        raise inference.InferenceError(f"No files under {', '.join(values['images'])}.")
    model = inference.load_model(values["model_dir"])
    written, failed = write_table(model, paths, values["output"])
    print(f"wrote {values['output']}: {written} rows, {written - failed} images predicted, "
          f"{failed} files that do not decode as images (their rows say why)")
    return written, failed


def main(values):
    """The command, given its flags' values by name (`images`: the image files, or for a
    table the files and folders)."""
    try:
        if not values["images"]:
            raise inference.InferenceError("Name at least one image file after the flags.")
        if table_format(values["output"]):
            if values["labels"]:
                raise inference.InferenceError("--labels is for the figure (a .png --output).")
            return main_table(values)
        if not values["output"].lower().endswith(".png"):
            raise inference.InferenceError(
                f"--output={values['output']}: a .png figure, or a .csv or .jsonl table.")
        for path in values["images"]:  # before the model loads, which takes a while
            inference.read_image_file(path)
        model = inference.load_model(values["model_dir"])
        records, encoded = predict_files(model, values["images"], values["labels"])
        print(format_predictions(records))
        draw_predictions(records, encoded, values["output"])
    except inference.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    print(f"wrote {values['output']}")
    return records


if __name__ == "__main__":
    from absl import flags

    holders = {
        **inference.define_model_flags(
            flags, "The figure (.png) or the table (.csv or .jsonl) to write.",
            output_required=True),
        "labels": flags.DEFINE_list("labels", None, "The true class name of each image, in "
                                    "order (default: the image's folder name, if a class)."),
    }
    flags.adopt_module_key_flags(inference)  # --help lists the shared flags too
    command.run(main, holders, positional="images")
