"""Section 6.1's suggestion: fc7 features compressed to short binary codes by an
auto-encoder, retrieval by Hamming distance, compared with Euclidean retrieval.

    python -m alexnet_tf.retrieve --model_dir=M --index=runs/index_train --build_index
    python -m alexnet_tf.retrieve --model_dir=M --index=runs/index_val --build_index \\
        --split=validation
    python -m alexnet_tf.compress --index=runs/index_train --queries=runs/index_val --bits=64

The auto-encoder is trained on the index's features; its code layer is logistic units
whose input gets Gaussian noise during training (the trick of Krizhevsky and Hinton's
2011 binary-code auto-encoders: to get through the noise, the units learn to saturate,
so rounding them to bits loses little). Each query image's k nearest indexed images are
found by Euclidean distance of the float32 features and by Hamming distance of the
codes, and the table gives for each the precision: the fraction of neighbours of the
query's own class, averaged over the queries.
"""

import sys

import keras
import numpy as np
import tensorflow as tf

from alexnet_tf import command, inference, retrieve

HIDDEN_UNITS = 512
CODE_NOISE_STDDEV = 4.0  # in logit units: a logistic unit must pass about +-8 to stay put
DEFAULT_BITS = 64
DEFAULT_STEPS = 2000
_BITS_SET = np.array([bin(byte).count("1") for byte in range(256)], np.int64)  # popcount of a byte


def build_autoencoder(dim, bits, hidden=HIDDEN_UNITS, noise_stddev=CODE_NOISE_STDDEV, seed=0):
    """(auto-encoder, encoder): features [N, dim] -> code probabilities [N, bits] -> features."""
    keras.utils.set_random_seed(seed)
    features = keras.Input((dim,))
    hidden_code = keras.layers.Dense(hidden, activation="relu")(features)
    # The code layer computes logits / noise_stddev, so that unit noise (all Keras's
    # GaussianNoise allows) is noise_stddev in logit units.
    scaled_logits = keras.layers.Dense(bits)(hidden_code)
    to_code = keras.Sequential([keras.layers.Rescaling(noise_stddev),
                                keras.layers.Activation("sigmoid")])
    noisy_code = to_code(keras.layers.GaussianNoise(1.0, seed=seed)(scaled_logits))
    decoder = keras.Sequential([keras.layers.Dense(hidden, activation="relu"),
                                keras.layers.Dense(dim)])
    autoencoder = keras.Model(features, decoder(noisy_code))
    return autoencoder, keras.Model(features, to_code(scaled_logits))


class BinaryEncoder:
    """fc7 features -> packed binary codes, by an auto-encoder trained on `features`."""

    def __init__(self, features, bits=DEFAULT_BITS, steps=DEFAULT_STEPS, batch_size=256, seed=0):
        if bits % 8:
            raise inference.InferenceError(f"--bits={bits} must be a multiple of 8.")
        features = np.asarray(features, np.float32)
        # The mean feature removed and one scale for all dimensions: Euclidean distances,
        # which the codes should follow, keep their order, and what sets images apart
        # is no longer a small part of a large shared component.
        self.mean = features.mean(axis=0, dtype=np.float64).astype(np.float32)
        self.scale = float(np.sqrt(np.mean((features - self.mean).astype(np.float64) ** 2))) or 1.0
        autoencoder, self.encoder = build_autoencoder(features.shape[1], bits, seed=seed)
        autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        scaled = self.normalize(features)
        batches = (tf.data.Dataset.from_tensor_slices((scaled, scaled))
                   .shuffle(min(len(scaled), 65536), seed=seed).repeat().batch(batch_size))
        autoencoder.fit(batches, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0)

    def normalize(self, features):
        return (np.asarray(features, np.float32) - self.mean) / self.scale

    def codes(self, features):
        """uint8 [N, bits / 8]: the code units rounded to bits, packed."""
        probabilities = self.encoder.predict(self.normalize(features), batch_size=1024,
                                             verbose=0)
        return np.packbits(probabilities > 0.5, axis=1)


def hamming_neighbours(codes, queries, k):
    """(indices [M, k], distances [M, k]): the k codes nearest to each query code by
    Hamming distance, nearest first, ties by row. Codes are packed uint8 rows."""
    count = len(codes)
    k = min(k, count)
    indices = np.empty((len(queries), k), np.int64)
    distances = np.empty((len(queries), k), np.int64)
    rows = np.arange(count, dtype=np.int64)
    for q, query in enumerate(queries):
        distance = _BITS_SET[np.bitwise_xor(codes, query)].sum(axis=1)
        key = distance * count + rows  # unique keys: ties broken by row
        nearest = np.argpartition(key, k - 1)[:k] if k < count else rows
        nearest = nearest[np.argsort(key[nearest])]
        indices[q], distances[q] = nearest, distance[nearest]
    return indices, distances


def same_class_precision(neighbour_labels, query_labels):
    """The fraction of neighbours [M, k] whose label is their query's, over all queries."""
    return float(np.mean(neighbour_labels == np.asarray(query_labels)[:, None]))


def compare(index, queries, bits=DEFAULT_BITS, k=10, steps=DEFAULT_STEPS, seed=0):
    """Precision of Euclidean and Hamming retrieval of `queries`' images (a FeatureIndex)
    in `index`, with the encoder trained on `index`. Returns a dict of rows and the
    neighbours found."""
    if index.info["class_names"] != queries.info["class_names"]:
        raise inference.InferenceError(f"{index.path} and {queries.path} label other classes.")
    query_features = np.asarray(queries.features)
    euclidean, _ = index.search(query_features, k)
    encoder = BinaryEncoder(index.features, bits, steps=steps, seed=seed)
    hamming, _ = hamming_neighbours(encoder.codes(index.features), encoder.codes(query_features), k)
    dim = index.features.shape[1]
    rows = [
        {"method": f"Euclidean, {dim}-d float32 fc7", "bits": 32 * dim,
         "precision": same_class_precision(index.labels[euclidean], queries.labels)},
        {"method": f"Hamming, {bits}-bit auto-encoder codes", "bits": bits,
         "precision": same_class_precision(index.labels[hamming], queries.labels)},
    ]
    return {"k": k, "queries": len(query_features), "index": len(index.labels), "rows": rows,
            "euclidean": euclidean, "hamming": hamming, "encoder": encoder}


def format_table(result):
    width = max(len(row["method"]) for row in result["rows"])
    lines = [f"{result['queries']} queries against {result['index']} images, "
             f"precision@{result['k']} (neighbours of the query's class)",
             f"{'method'.ljust(width)}  bits/image  precision"]
    lines += [f"{row['method'].ljust(width)}  {row['bits']:>10}  {row['precision']:9.4f}"
              for row in result["rows"]]
    return "\n".join(lines)


def main(values):
    """The command, given its flags' values by name."""
    try:
        result = compare(retrieve.load_index(values["index"]),
                         retrieve.load_index(values["queries"]), values["bits"], values["k"],
                         values["steps"], values["seed"])
    except inference.USER_ERRORS as e:
        sys.exit(f"error: {e}")
    print(format_table(result))
    return result


if __name__ == "__main__":
    from absl import flags

    holders = {
        "index": flags.DEFINE_string("index", None, "The index searched (alexnet_tf.retrieve "
                                     "--build_index), usually of the training split.",
                                     required=True),
        "queries": flags.DEFINE_string("queries", None, "An index of the query images' "
                                       "features, e.g. of the validation split.", required=True),
        "bits": flags.DEFINE_integer("bits", DEFAULT_BITS, "Code length, a multiple of 8.",
                                     lower_bound=8),
        "k": flags.DEFINE_integer("k", 10, "Neighbours per query.", lower_bound=1),
        "steps": flags.DEFINE_integer("steps", DEFAULT_STEPS, "Auto-encoder training steps "
                                      "(batches of 256).", lower_bound=1),
        "seed": flags.DEFINE_integer("seed", 0, "Seed of the auto-encoder."),
    }
    command.run(main, holders)
