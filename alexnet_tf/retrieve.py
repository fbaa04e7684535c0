"""Figure 4, right: the training images whose fc7 features lie nearest to a query's.

    # once: the fc7 features of a split, written to the directory INDEX
    python -m alexnet_tf.retrieve --model_dir=MODEL_DIR --index=INDEX --build_index
    # then, as often as wanted
    python -m alexnet_tf.retrieve --model_dir=MODEL_DIR --index=INDEX --output=nn.png QUERY ...

MODEL_DIR is a training run's model directory or its SavedModel; the data flags
(default: the model directory's training data, split train) say what to index.
`--build_index` writes the index unless INDEX already holds one of the same model and
split; without it a missing index is an error. The figure has a row per query: the
query, then its --k nearest indexed images by Euclidean distance, nearest first.

The search reads the index once per batch of queries: in chunks, |x|^2 - 2 x.q from a
float32 matrix product shortlists each chunk's nearest rows, and the shortlist is
ranked by exact float64 distances (ties by position), so the answer is a brute-force
float64 search's. The features are a .npy file, memory-mapped, so an index larger
than memory is searched all the same. tools/bench_retrieve.py times it.
"""

import dataclasses
import json
import os
import sys

import numpy as np
from tqdm import tqdm

from alexnet_tf import command, data, files, inference

INDEX_INFO = "index.json"
FEATURES = "features.npy"
SQUARED_NORMS = "squared_norms.npy"
LABELS = "labels.npy"
IDS = "ids.npy"
PAPER_NEIGHBOURS = 6  # Figure 4 shows the six nearest training images of each query
CHUNK_ROWS = 32768  # 512 MiB of 4096-d float32 rows: bounded memory for any index size
QUERY_BLOCK = 1024  # queries scored together: 128 MiB of float32 scores per chunk
# float32 rounding of |x|^2 - 2 x.q can reorder rows closer than its error; the exact
# ranking needs only the true nearest to be among this many more.
SHORTLIST_EXTRA = 32
SPACING = 2  # white pixels between images
QUERY_GAP = 10  # white pixels between the query column and its neighbours


@dataclasses.dataclass
class FeatureIndex:
    """fc7 features [N, D] of a split's images with their labels, ids and provenance."""

    path: str
    features: np.ndarray
    squared_norms: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    info: dict

    def search(self, queries, k):
        return nearest_neighbours(self.features, queries, k, self.squared_norms)


def nearest_neighbours(features, queries, k, squared_norms=None, chunk_rows=CHUNK_ROWS):
    """(indices int64 [M, k], distances float64 [M, k]): the k rows of `features` [N, D]
    nearest to each of `queries` [M, D] by Euclidean distance, nearest first, ties by
    row. `squared_norms` [N] (|x|^2 of the rows) saves computing them."""
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    if len(features) == 0:
        raise inference.InferenceError("The index is empty.")
    if queries.shape[1] != features.shape[1]:
        raise inference.InferenceError(f"Queries have {queries.shape[1]} features, the index "
                                       f"{features.shape[1]}: another model built it.")
    if squared_norms is None:
        squared_norms = np.concatenate([
            np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)
            for chunk in _chunks(features, chunk_rows)])
    found = [_nearest_in_block(features, squared_norms, queries[start:start + QUERY_BLOCK],
                               min(k, len(features)), chunk_rows)
             for start in range(0, len(queries), QUERY_BLOCK)]
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _chunks(features, chunk_rows):
    for start in range(0, len(features), chunk_rows):
        yield np.asarray(features[start:start + chunk_rows], np.float32)


def _nearest_in_block(features, squared_norms, queries, k, chunk_rows):
    candidates = []
    for number, chunk in enumerate(_chunks(features, chunk_rows)):
        start = number * chunk_rows
        # |x - q|^2 without |q|^2, the same for every row.
        scores = (squared_norms[start:start + len(chunk)].astype(np.float32)[None, :]
                  - 2.0 * (queries @ chunk.T))
        keep = min(k + SHORTLIST_EXTRA, len(chunk))
        if keep < len(chunk):
            rows = np.argpartition(scores, keep - 1, axis=1)[:, :keep]
        else:
            rows = np.broadcast_to(np.arange(len(chunk)), scores.shape)
        candidates.append(rows + start)
    candidates = np.concatenate(candidates, axis=1)
    indices = np.empty((len(queries), k), np.int64)
    distances = np.empty((len(queries), k), np.float64)
    for q, (query, rows) in enumerate(zip(queries, candidates)):
        rows = np.sort(rows)  # in file order for the memory map, and ties go to the lower row
        exact = np.sqrt(((np.asarray(features[rows], np.float64) - query) ** 2).sum(axis=1))
        order = np.argsort(exact, kind="stable")[:k]
        indices[q], distances[q] = rows[order], exact[order]
    return indices, distances


def _data_info(config):
    return {field: getattr(config, field)
            for field in ("dataset", "data_dir", "manual_dir", "val_fraction", "seed")}


def build_index(model, source, data_config, split, path, batch_size=64, max_examples=None):
    """Writes the fc7 features of a split's images (the model's first crop mode) to the
    directory `path`, replacing it only once complete. Returns the FeatureIndex."""
    total = min(inference.split_size(source, split), max_examples or float("inf"))
    with files.staged_directory(path, _check_replaceable) as staging:
        count = _write_features(model, source, split, staging, total, batch_size, max_examples)
        info = {"model": model.path, "model_identity": model.identity,
                "crop_mode": model.crop_modes[0], "split": split, "count": count,
                "corrupt": source.corrupt_count(), "class_names": list(source.class_names),
                "data": _data_info(data_config)}
        with open(os.path.join(staging, INDEX_INFO), "w") as f:
            json.dump(info, f, indent=2)
    return load_index(path)


def _check_replaceable(path):
    if not os.path.exists(os.path.join(path, INDEX_INFO)):
        raise inference.InferenceError(
            f"{path} exists and is not an index (no {INDEX_INFO}); nothing was changed. "
            "Choose another --index.")


def _write_features(model, source, split, directory, total, batch_size, max_examples):
    """Writes the split's fc7 features, their squared norms, labels and ids into
    `directory`; returns how many images were indexed."""
    features, norms, labels, ids, count = None, [], [], [], 0
    progress = tqdm(total=total, unit="img", desc=f"fc7 features of {split}", mininterval=1.0)
    for encoded, batch_labels, batch_ids in inference.split_batches(source, split, batch_size,
                                                                    max_examples):
        batch = model.predict(encoded)["features"]
        if features is None:
            features = np.lib.format.open_memmap(os.path.join(directory, FEATURES), "w+",
                                                 np.float32, (total, batch.shape[1]))
        features[count:count + len(batch)] = batch
        norms.append(np.einsum("ij,ij->i", batch.astype(np.float64), batch))
        labels.append(batch_labels)
        ids.extend(i.decode() for i in batch_ids)
        count += len(batch)
        progress.update(len(batch))
    progress.close()
    if features is None:
        raise inference.InferenceError(f"No image of the {split} split could be decoded.")
    features.flush()
    del features
    np.save(os.path.join(directory, SQUARED_NORMS), np.concatenate(norms))
    np.save(os.path.join(directory, LABELS), np.concatenate(labels).astype(np.int64))
    np.save(os.path.join(directory, IDS), np.array(ids, dtype=str))
    return count


def load_index(path):
    """The FeatureIndex in the directory `path`, its features memory-mapped."""
    info_path = os.path.join(path, INDEX_INFO)
    if not os.path.exists(info_path):
        raise inference.InferenceError(
            f"Index {path} does not exist (no {info_path}); build it with --build_index.")
    with open(info_path) as f:
        info = json.load(f)
    try:
        count = info["count"]
        return FeatureIndex(
            path, np.load(os.path.join(path, FEATURES), mmap_mode="r")[:count],
            np.load(os.path.join(path, SQUARED_NORMS)), np.load(os.path.join(path, LABELS)),
            np.load(os.path.join(path, IDS)), info)
    except (KeyError, ValueError, OSError) as e:
        raise inference.InferenceError(f"Index {path} is incomplete or damaged ({e}); rebuild "
                                       "it with --build_index.") from e


def ensure_index(model, source, data_config, split, path, batch_size=64, max_examples=None):
    """The index at `path` if it was built by this model over this split, else a new one."""
    if os.path.exists(os.path.join(path, INDEX_INFO)):
        index = load_index(path)
        wanted = {"model_identity": model.identity, "split": split,
                  "data": _data_info(data_config)}
        if all(index.info.get(key) == value for key, value in wanted.items()):
            print(f"Reusing the index in {path} ({index.info['count']} images).")
            return index
        print(f"The index in {path} was built from other weights or data; rebuilding it.")
    return build_index(model, source, data_config, split, path, batch_size, max_examples)


def index_images(index, rows):
    """The encoded images of the index's entries `rows`: files of an image folder read
    directly, other sources by one pass over the split that picks them out."""
    info = index.info["data"]
    wanted = [str(i) for i in index.ids[np.asarray(rows)]]
    if info["dataset"] in (data.IMAGE_FOLDER, data.SYNTHETIC):
        return [inference.read_image_file(os.path.join(info["data_dir"], i)) for i in wanted]
    source = data.load_source(info["dataset"], info["data_dir"],
                              manual_dir=info["manual_dir"] or None,
                              val_fraction=info["val_fraction"], seed=info["seed"])
    return pick_images(inference.split_examples(source, index.info["split"]), wanted)


def pick_images(examples, ids):
    """The "image" of the examples with these ids, in the order of `ids`, from one pass
    over `examples` that stops once it has them all."""
    found, missing = {}, set(ids)
    for example in examples.as_numpy_iterator():
        example_id = example["id"].decode()
        if example_id in missing:
            found[example_id] = example["image"]
            missing.remove(example_id)
            if not missing:
                break
    if missing:
        raise inference.InferenceError(f"{len(missing)} indexed images are no longer in the "
                                       f"data, e.g. {sorted(missing)[0]}; rebuild the index.")
    return [found[i] for i in ids]


def query_features(model, index, encoded):
    """fc7 features of encoded query images, with the crop mode the index was built with."""
    if model.identity != index.info["model_identity"]:
        print(f"warning: {index.path} was built with {index.info['model_identity']}, the "
              f"queries use {model.identity}.", file=sys.stderr)
    return model.predict(encoded, index.info["crop_mode"])["features"]


def neighbour_grid(rows, size):
    """uint8 image: a row per list of encoded images (the query, then its neighbours),
    each as a size x size thumbnail, QUERY_GAP after the first column."""
    columns = max(len(row) for row in rows)
    height = SPACING + len(rows) * (size + SPACING)
    width = SPACING + columns * (size + SPACING) + QUERY_GAP - SPACING
    grid = np.full((height, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        for c, encoded in enumerate(row):
            y, x = cell_origin(r, c, size)
            grid[y:y + size, x:x + size] = inference.thumbnail(encoded, size)
    return grid


def cell_origin(row, column, size):
    """(y, x) of a thumbnail in `neighbour_grid`."""
    x = SPACING + column * (size + SPACING) + (QUERY_GAP - SPACING if column else 0)
    return SPACING + row * (size + SPACING), x


def main(values):
    """The command, given its flags' values by name (`queries`: the query image files)."""
    try:
        model = inference.load_model(values["model_dir"])
        if values["build_index"]:
            source, config = inference.load_data_source(
                [model], values["dataset"], values["data_dir"], values["manual_dir"])
            index = ensure_index(model, source, config, values["split"], values["index"],
                                 values["batch_size"], values["max_examples"])
        else:
            index = load_index(values["index"])
        if not values["queries"]:
            print(f"{values['index']}: {index.info['count']} images of the "
                  f"{index.info['split']} split, {index.features.shape[1]}-d features")
            return index, None
        if not values["output"]:
            raise inference.InferenceError("--output (the figure's PNG) is needed with queries.")
        encoded = [inference.read_image_file(path) for path in values["queries"]]
        indices, distances = index.search(query_features(model, index, encoded), values["k"])
        neighbours = index_images(index, indices.ravel())
        rows = [[query] + neighbours[q * indices.shape[1]:(q + 1) * indices.shape[1]]
                for q, query in enumerate(encoded)]
        inference.write_png(neighbour_grid(rows, values["thumbnail"]), values["output"])
    except inference.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    class_names = index.info["class_names"]
    for path, row, row_distances in zip(values["queries"], indices, distances):
        print(path)
        for rank, (i, d) in enumerate(zip(row, row_distances), 1):
            print(f"  {rank}. {index.ids[i]}  ({class_names[index.labels[i]]})  distance {d:.4f}")
    print(f"wrote {values['output']}")
    return index, (indices, distances)


if __name__ == "__main__":
    from absl import flags

    holders = {
        **inference.define_model_flags(flags, "The PNG to write (with queries)."),
        "index": flags.DEFINE_string("index", None, "The index directory.", required=True),
        "build_index": flags.DEFINE_bool("build_index", False, "Build the index unless it "
                                         "holds this model's features of this split already."),
        **command.data_flags(flags, "default: the first model directory's",
                             split_default="train"),
        "batch_size": flags.DEFINE_integer("batch_size", 64, "Images per batch when indexing.",
                                           lower_bound=1),
        "max_examples": flags.DEFINE_integer("max_examples", None, "Index only the first N "
                                             "images of the split.", lower_bound=1),
        "k": flags.DEFINE_integer("k", PAPER_NEIGHBOURS, "Neighbours per query.", lower_bound=1),
        "thumbnail": flags.DEFINE_integer("thumbnail", 96, "Side of each image in the figure.",
                                          lower_bound=8),
    }
    # --help lists the shared flags too.
    flags.adopt_module_key_flags(inference)
    flags.adopt_module_key_flags(command)
    command.run(main, holders, positional="queries")
