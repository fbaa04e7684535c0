"""Times nearest-neighbour queries against an index of fc7 features (Figure 4, right).

A random index of --rows x --dim float32 features (default 100,000 x 4096, 1.6 GB, a
tenth of ImageNet's training set at the paper's fc7 width) is searched with
alexnet_tf.retrieve.nearest_neighbours, which must answer a query in well under a
second. In one run:
  - a check: the neighbours of --check queries equal a brute-force float64 search,
    and a query that is an indexed row (plus a little noise) finds that row first;
  - the median time of one query, and of a batch of --batch queries (which read the
    index once for all of them) per query;
  - against memory speed: a query reads the whole index once, so rows x dim x 4
    bytes over the time is its read bandwidth, compared with a NumPy read of the
    same array (its sum) measured in the same run;
  - against the direct float32 computation, ((features - q) ** 2).sum(axis=1).

    python tools/bench_retrieve.py [--rows 100000] [--dim 4096] [--repeats 11]
"""

import argparse
import statistics
import timeit

import numpy as np

from alexnet_tf import retrieve

TARGET_SECONDS = 1.0


def median_seconds(fn, repeats):
    fn()  # warm up: page the index in, let BLAS start its threads
    return statistics.median(timeit.repeat(fn, number=1, repeat=repeats))


def brute_force(features, queries, k, chunk_rows=8192):
    """Indices of the k nearest rows by float64 distance, ties by row: the reference."""
    distances = np.concatenate([
        ((features[start:start + chunk_rows].astype(np.float64)[None]
          - queries.astype(np.float64)[:, None]) ** 2).sum(-1)
        for start in range(0, len(features), chunk_rows)], axis=1)
    return np.argsort(distances, axis=1, kind="stable")[:, :k]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--k", type=int, default=retrieve.PAPER_NEIGHBOURS)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--check", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    # Non-negative like ReLU outputs, so |x|^2 is large against the distances between
    # rows: the case where float32 |x|^2 - 2 x.q rounds most.
    features = np.abs(rng.standard_normal((args.rows, args.dim), dtype=np.float32))
    squared_norms = np.einsum("ij,ij->i", features.astype(np.float64), features)
    queries = np.abs(rng.standard_normal((args.batch, args.dim), dtype=np.float32))
    queries[0] = features[12345 % args.rows] + 0.01 * queries[1]
    gigabytes = features.nbytes / 1e9
    print(f"index: {args.rows} x {args.dim} float32 ({gigabytes:.2f} GB), k={args.k}")

    found, _ = retrieve.nearest_neighbours(features, queries[:args.check], args.k, squared_norms)
    expected = brute_force(features, queries[:args.check], args.k)
    matches = bool((found == expected).all())
    print(f"check against brute-force float64, {args.check} queries: "
          f"{'equal' if matches else 'DIFFERENT'}; the noisy copy of row "
          f"{12345 % args.rows} finds row {found[0, 0]} first")

    one = median_seconds(
        lambda: retrieve.nearest_neighbours(features, queries[:1], args.k, squared_norms),
        args.repeats)
    batch = median_seconds(
        lambda: retrieve.nearest_neighbours(features, queries, args.k, squared_norms),
        args.repeats)
    read = median_seconds(lambda: features.sum(dtype=np.float32), args.repeats)
    direct = median_seconds(lambda: np.argpartition(
        ((features - queries[0]) ** 2).sum(axis=1), args.k)[:args.k], max(3, args.repeats // 3))

    rows = (("one query", one, gigabytes),
            (f"{args.batch} queries (per query)", batch / args.batch, gigabytes / args.batch),
            ("NumPy sum of the index (a read)", read, gigabytes),
            ("direct ((f - q) ** 2).sum, 1 query", direct, gigabytes))
    print(f"{'':36}{'median':>10}{'GB/s read':>11}")
    for name, seconds, read_gigabytes in rows:
        print(f"{name:36}{1000 * seconds:7.1f} ms{read_gigabytes / seconds:11.2f}")
    print(f"one query: {one / read:.2f}x the time of reading the index once; "
          f"{direct / one:.1f}x faster than the direct computation")
    met = one < TARGET_SECONDS and matches
    print(f"target: one query under {TARGET_SECONDS:.0f} s on {args.rows} rows: "
          f"{'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
