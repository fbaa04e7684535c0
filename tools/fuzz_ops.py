"""Fuzzes the compiled ops with a seeded corpus, the cases run in subprocesses.

    python tools/fuzz_ops.py --cases=20000 [--seed=0] [--first=0] [--timeout_s=60]

Case i is drawn from (seed, i) alone and goes to one of five ops in turn: the LRN op,
its gradient, `resize_flip_and_normalize`, `decode_jpeg_crop_flip_and_normalize` and
`augmentation_draws`. The draws are hostile on purpose: shapes with zero or huge
sides, offsets near 2^31, sizes past the mean image, NaN, infinite, negative and
subnormal attributes, inputs with NaN, infinities and values whose squares overflow,
indices near 2^63, and JPEGs (baseline, progressive, greyscale, 4:2:0 and 4:4:4)
with flipped bits, truncations, forged frame sizes, bogus segment lengths, or
replaced by random bytes, a PNG or nothing.

Each case ends in one of: "match" (the op returned what its reference in standard
TensorFlow ops returns, within the dtype's rounding), "refused" (an
InvalidArgumentError, the op's answer to input it does not take), or a failure:
"mismatch" (the op returned something else, or returned where its reference
refuses), "error" (any other exception), "crash" (the subprocess died of a signal)
or "hang" (no answer within --timeout_s). A crash or hang restarts the subprocess
after the case, so one run reports them all. `--first=I --cases=1` reruns case I.

Exit status 0 when no case failed, 1 otherwise; the failing cases are listed.
"""

import argparse
import collections
import os
import queue
import subprocess
import sys
import threading

import numpy as np

import lrn_reference as lrn_reference_lib  # tools/, beside this file

# The crop's reference is the tests' (tests/references.py).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

KINDS = ("lrn", "lrn_gradient", "resize", "decode_jpeg", "draws")
FAILURES = ("mismatch", "error", "crash", "hang")
# Largest error accepted, relative to the reference's largest finite magnitude, per
# dtype (tests/test_lrn_op.py's), and of the crop ops on the 0-255 scale
# (tests/test_training_crop_ops.py's: float32 sampling positions).
LRN_TOLERANCE = {"float64": 1e-10, "float32": 1e-5, "float16": 3e-3, "bfloat16": 2e-2}
CROP_ATOL = 0.02
# What the worker prints before and after each case.
BEGIN, END = "begin", "end"


# ----------------------------------------------------------------------------------
# Hostile values.

INT32_EDGES = (-2**31, -2**31 + 1, -1, 2**31 - 1, 2**31 - 2, 2**31 - 8, 2**30, 2**24, 65536)
FLOAT_SPECIALS = (np.nan, np.inf, -np.inf, 1e20, -1e20, 1e-40, 3.4e38, -0.0)


def pick(rng, values):
    return values[int(rng.integers(len(values)))]


def sometimes(rng, p):
    return bool(rng.random() < p)


def lrn_attributes(rng, channels):
    """depth_radius, bias, alpha, beta: mostly valid, each hostile now and then."""
    radius = int(rng.integers(0, min(channels, 20)))
    if sometimes(rng, 0.05):
        radius = int(pick(rng, (channels, channels + 3, -1, 2**31 - 1, 2**40)))
    bias = float(pick(rng, (2.0, 1.0, 0.5, 1e-45, 1e-30, 1e30)))
    alpha = float(pick(rng, (1e-4, 2e-5, 0.0, 1.0, 1e30)))
    beta = float(pick(rng, (0.75, 0.75, 0.75, 0.5, 1.0, 0.0, 2.5)))
    if sometimes(rng, 0.08):
        bias = float(pick(rng, (0.0, -1.0, np.nan, np.inf)))
    if sometimes(rng, 0.05):
        alpha = float(pick(rng, (-1.0, np.nan, np.inf)))
    if sometimes(rng, 0.05):
        beta = float(pick(rng, (-0.5, np.nan, np.inf)))
    # float32 attributes, as the op's are: the reference then sees the same values.
    return dict(depth_radius=radius, bias=float(np.float32(bias)), alpha=float(np.float32(alpha)),
                beta=float(np.float32(beta)))


def lrn_input(rng, shape):
    """Normal values at a scale of 1e-3 to 1e3, with special values sprinkled in."""
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)
    if x.size and sometimes(rng, 0.4):
        flat = x.reshape(-1)
        for _ in range(int(rng.integers(1, 4))):
            flat[int(rng.integers(flat.size))] = pick(rng, FLOAT_SPECIALS)
    return x


def lrn_case(rng):
    channels = int(pick(rng, (1, 2, 3, 5, 8, 16, 24, 32, 48, 64, 80)))
    shape = [int(rng.integers(0, 3)), int(rng.integers(0, 4)), int(rng.integers(1, 4)), channels]
    if sometimes(rng, 0.05):
        shape = shape[1:]
    dtype = pick(rng, ("float32", "float32", "float32", "float64", "float16", "bfloat16"))
    dy = rng.standard_normal(shape)
    if sometimes(rng, 0.03):
        dy = dy[..., :-1]
    return dict(x=lrn_input(rng, shape), dy=dy, dtype=dtype,
                through_relu=sometimes(rng, 0.5), **lrn_attributes(rng, channels))


def crop_geometry(rng):
    """(size, mean image side(s), offset): a crop that fits, or one that does not."""
    size = int(pick(rng, (1, 2, 3, 4, 5, 8, 16, int(rng.integers(1, 48)))))
    side = size + int(rng.integers(0, 24))
    offset = [int(rng.integers(0, side - size + 1)) for _ in range(2)]
    if sometimes(rng, 0.25):
        offset[int(rng.integers(2))] = int(pick(rng, INT32_EDGES))
    if sometimes(rng, 0.05):
        size = int(pick(rng, (0, -1, 65537, 2**31 - 1)))
    return size, side, offset


def lighting(rng):
    rgb = rng.normal(0, 10, 3)
    if sometimes(rng, 0.05):
        rgb[int(rng.integers(3))] = pick(rng, (np.nan, np.inf, -np.inf))
    return rgb


def resize_case(rng):
    size, side, offset = crop_geometry(rng)
    height, width = (int(pick(rng, (1, 2, 3, int(rng.integers(1, 40))))) for _ in range(2))
    region_shape = [height, width, 3]
    mean_shape = [side, side + int(rng.integers(0, 4)), 3]
    if sometimes(rng, 0.05):
        region_shape[int(rng.integers(3))] = int(pick(rng, (0, 1, 4)))
    if sometimes(rng, 0.05):
        mean_shape[int(rng.integers(3))] = int(pick(rng, (0, 1, 4)))
    return dict(region=rng.integers(0, 256, region_shape).astype(np.uint8), size=size,
                mean=rng.normal(100, 50, mean_shape).astype(np.float32), offset=offset,
                flip=sometimes(rng, 0.5), rgb=lighting(rng))


def jpeg_case(rng, corpus):
    size, side, offset = crop_geometry(rng)
    contents = mutate_jpeg(rng, pick(rng, corpus))
    dct_method = pick(rng, ("", "INTEGER_FAST", "INTEGER_ACCURATE"))
    if sometimes(rng, 0.02):
        dct_method = "INTEGER_SLOW"
    return dict(contents=contents, size=size, mean=rng.normal(100, 50, (side, side, 3)).astype(
        np.float32), offset=offset, flip=sometimes(rng, 0.5), rgb=lighting(rng),
        dct_method=dct_method)


def draws_case(rng):
    image_size = int(rng.integers(1, 300))
    crop_size = int(rng.integers(1, image_size + 1))
    if sometimes(rng, 0.05):
        image_size, crop_size = (int(pick(rng, (0, -1, 2**24 + 1, 2**31 - 1, crop_size)))
                                 for _ in range(2))
    index = int(rng.integers(0, 2**40))
    if sometimes(rng, 0.1):
        index = int(pick(rng, (-1, -2**63, 2**62 - 1, 2**62, 2**63 - 1)))
    basis = rng.normal(0, 30, (3, 3))
    if sometimes(rng, 0.05):
        basis[int(rng.integers(3)), int(rng.integers(3))] = pick(rng, (np.nan, np.inf))
    stddev = float(pick(rng, (0.1, 0.1, 0.0, 1.0, 1e30)))
    if sometimes(rng, 0.05):
        stddev = float(pick(rng, (-0.1, np.nan, np.inf)))
    return dict(index=index, basis=basis.astype(np.float32), seed=int(rng.integers(-2**62, 2**62)),
                image_size=image_size, crop_size=crop_size, stddev=stddev)


# ----------------------------------------------------------------------------------
# JPEGs: a small corpus and its mutations.


def jpeg_corpus(tf):
    """Tiny JPEGs of every kind the decoder handles, made by TensorFlow's encoder."""
    rng = np.random.default_rng(0)
    corpus = []
    for height, width in ((1, 1), (7, 5), (16, 16), (33, 20), (48, 64)):
        ramp = np.linspace(0, 255, height * width * 3).reshape(height, width, 3)
        image = np.clip(ramp + rng.normal(0, 40, ramp.shape), 0, 255).astype(np.uint8)
        for progressive in (False, True):
            for chroma_downsampling in (False, True):
                corpus.append(tf.io.encode_jpeg(
                    image, quality=85, progressive=progressive,
                    chroma_downsampling=chroma_downsampling).numpy())
        corpus.append(tf.io.encode_jpeg(image[..., :1], format="grayscale").numpy())
        corpus.append(tf.io.encode_jpeg(image, xmp_metadata="<x>" * 50).numpy())
    corpus.append(tf.io.encode_png(image).numpy())
    return corpus


def _frame_header(data):
    """The offset of the first SOFn marker, or None."""
    for i in range(len(data) - 1):
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            return i
    return None


def _forge_frame_size(rng, data):
    at = _frame_header(data)
    if at is not None and at + 9 <= len(data):
        height, width = (int(pick(rng, (0, 1, 65500, 65535, int(rng.integers(1, 100)))))
                         for _ in range(2))
        data[at + 5:at + 9] = bytes([height >> 8, height & 255, width >> 8, width & 255])
    return data


def _insert_segment(rng, data):
    at = int(rng.integers(2, max(len(data), 3)))
    length = int(pick(rng, (0, 1, 2, 0xFFFF, int(rng.integers(0, 64)))))
    payload = rng.integers(0, 256, int(rng.integers(0, 16)), dtype=np.uint8).tobytes()
    marker = int(pick(rng, (0xE1, 0xFE, 0xC0, 0xC2, 0xC4, 0xDA, 0xDB, 0xDD, 0xD9)))
    data[at:at] = bytes([0xFF, marker, length >> 8, length & 255]) + payload
    return data


def mutate_jpeg(rng, original):
    """The JPEG with 0 to 3 mutations, or something else entirely."""
    if sometimes(rng, 0.03):
        return pick(rng, (b"", b"\xff\xd8", rng.integers(0, 256, 64, dtype=np.uint8).tobytes()))
    data = bytearray(original)
    for _ in range(int(rng.integers(0, 4))):
        mutation = int(rng.integers(5))
        if mutation == 0:
            for _ in range(int(rng.integers(1, 9))):
                data[int(rng.integers(len(data)))] ^= 1 << int(rng.integers(8))
        elif mutation == 1:
            data = data[:int(rng.integers(0, len(data) + 1))]
        elif mutation == 2:
            data = _forge_frame_size(rng, data)
        elif mutation == 3:
            data = _insert_segment(rng, data)
        elif len(data) > 2:
            data[int(rng.integers(2, len(data)))] = int(rng.integers(256))
        if not data:
            break
    return bytes(data)


# ----------------------------------------------------------------------------------
# Running a case against its reference (in the worker).


def draw_case(seed, index, corpus):
    rng = np.random.default_rng([seed, index])
    kind = KINDS[index % len(KINDS)]
    makers = {"lrn": lrn_case, "lrn_gradient": lrn_case, "resize": resize_case,
              "decode_jpeg": lambda r: jpeg_case(r, corpus), "draws": draws_case}
    return kind, makers[kind](rng)


def finite_error(actual, expected, relative):
    """None if NaNs and infinities sit apart (or differ in sign), else the largest
    error of the finite values, relative to the largest finite expected magnitude
    if `relative`."""
    actual, expected = (np.asarray(v, np.float64) for v in (actual, expected))
    if actual.shape != expected.shape:
        return None
    if not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return None
    finite = np.isfinite(expected)
    if not np.array_equal(np.isfinite(actual), finite) or np.any(
            actual[np.isinf(expected)] != expected[np.isinf(expected)]):
        return None
    if not finite.any():
        return 0.0
    scale = max(float(np.max(np.abs(expected[finite]))), 1e-30) if relative else 1.0
    return float(np.max(np.abs(actual[finite] - expected[finite]))) / scale


def compare(actual, expected, tolerance, what, relative=True):
    """'match', or 'mismatch: ...' naming the difference."""
    error = finite_error(actual, expected, relative)
    if error is None:
        return f"mismatch: {what} has NaNs or infinities where its reference has not"
    if error > tolerance:
        return f"mismatch: {what} is {error:.3g} from its reference (tolerance {tolerance})"
    return "match"


def _lrn_attributes(case):
    return {name: case[name] for name in ("depth_radius", "bias", "alpha", "beta")}


def lrn_op(tf, ops, case, gradient):
    dtype = tf.as_dtype(case["dtype"])
    x = tf.constant(case["x"], dtype)
    library = ops.load_library()
    if gradient:
        return library.alexnet_tf_local_response_norm_grad(
            tf.constant(case["dy"], dtype), x, through_relu=case["through_relu"],
            **_lrn_attributes(case))
    return library.alexnet_tf_local_response_norm(x, **_lrn_attributes(case))


def lrn_reference(tf, ops, case):
    """The formula in standard TensorFlow ops, in the op's compute dtype."""
    x = tf.constant(case["x"], tf.as_dtype(case["dtype"]))
    return ops.local_response_normalization_reference(x, **_lrn_attributes(case))


def _in_normal_range(values, dtype):
    """Whether every non-zero value lies in the dtype's normal range, with room for
    the few products and sums that follow it."""
    magnitudes = np.abs(np.asarray(values, np.float64))
    magnitudes = magnitudes[magnitudes != 0]
    info = np.finfo(dtype)
    return bool(np.all(np.isfinite(magnitudes)) and np.all(magnitudes >= info.tiny * 1e6)
                and np.all(magnitudes <= info.max / 1e3))


def lrn_gradient_reference(tf, case):
    """(dx, the magnitude of its terms) by the formula in NumPy float64
    (tools/lrn_reference.py), rounded to the op's dtype, then times (x > 0) through
    the ReLU (so a float16 overflow stays NaN there, as ReluGrad's does). None where
    an input is not finite or where a value on the way (a square, the norm, its
    powers, the products of the second term) leaves the normal range
    of the op's compute dtype, which float64 keeps: there the two differ by what
    each can represent, and the case checks only that the op does not crash."""
    dtype = tf.as_dtype(case["dtype"])
    x, dy = (np.asarray(tf.cast(tf.constant(case[k], dtype), tf.float64)) for k in ("x", "dy"))
    if x.shape != dy.shape or not np.all(np.isfinite(x)):
        return None
    compute = np.float64 if case["dtype"] == "float64" else np.float32
    attributes = _lrn_attributes(case)
    r, bias, alpha, beta = (attributes[k] for k in ("depth_radius", "bias", "alpha", "beta"))
    norm = bias + alpha * lrn_reference_lib.window_sums(x * x, r)
    scale = norm**-beta
    products = dy * x * scale / norm
    cross = lrn_reference_lib.window_sums(products, r)
    first, second = dy * scale, 2 * alpha * beta * x * cross
    on_the_way = (x * x, alpha * x * x, norm, scale, 1 / norm, dy * x, dy * x * scale,
                  products, cross, first, second, 2 * alpha * beta * x)
    if not all(_in_normal_range(v, compute) for v in on_the_way):
        return None
    stored = np.asarray(tf.cast(tf.cast(first - second, dtype), tf.float64))
    if case["through_relu"]:  # ReluGrad's product with 1 or 0, after the rounding
        stored = stored * (x > 0)
    terms = np.concatenate([np.abs(first).ravel(), np.abs(second).ravel()])
    return stored, float(terms.max()) if terms.size else 0.0


def check_lrn(tf, actual, reference, case):
    return compare(tf.cast(actual, tf.float64), tf.cast(reference, tf.float64),
                   LRN_TOLERANCE[case["dtype"]], "the LRN")


def check_lrn_gradient(tf, actual, reference, case):
    """Within the dtype's rounding of the larger of the formula's two terms, which
    cancel where the gradient is near 0."""
    expected, scale = reference
    error = finite_error(np.asarray(tf.cast(actual, tf.float64)), expected, relative=False)
    if error is None:
        return "mismatch: the LRN gradient has NaNs or infinities where its reference has not"
    if error > LRN_TOLERANCE[case["dtype"]] * max(scale, np.finfo(np.float32).tiny):
        return (f"mismatch: the LRN gradient is {error:.3g} from its reference, whose "
                f"terms reach {scale:.3g}")
    return "match"


def _crop_arguments(case):
    return (case["mean"], case["offset"], case["flip"], case["rgb"])


def decode_crop_reference(tf, ops, case):
    """TensorFlow's decode_and_crop_jpeg of the crop's window, then the resize op (whose
    own reference is the resize case's)."""
    from alexnet_tf import preprocessing

    region = preprocessing.decode_crop_region(
        case["contents"], case["mean"].shape[0], case["size"], *case["offset"],
        dct_method=case["dct_method"])
    return ops.resize_flip_and_normalize(region, case["size"], *_crop_arguments(case))


def draws_reference(tf, case):
    from alexnet_tf import preprocessing

    crop_seed, lighting_seed = preprocessing.augmentation_seeds(case["seed"], case["index"])
    y, x, flip = preprocessing.random_crop_window(
        case["image_size"], case["image_size"], case["crop_size"], crop_seed)
    alphas = tf.random.stateless_normal([3], lighting_seed, stddev=case["stddev"]).numpy()
    return [int(y), int(x)], bool(flip), alphas.astype(np.float64) @ case["basis"].astype(
        np.float64)


def check_draws(actual, reference):
    (offset, flip, rgb), (want_offset, want_flip, want_rgb) = actual, reference
    if offset.numpy().tolist() != want_offset or bool(flip) != want_flip:
        return "mismatch: the crop offset or the mirror differs from TensorFlow's draws"
    return compare(rgb, want_rgb, 1e-5, "the lighting vector")


def runners(tf, ops, kind, case):
    """(the op, its reference, the comparison of their results) for a case."""
    import references

    crop = lambda actual, reference: compare(actual, reference, CROP_ATOL, "the crop",  # noqa: E731
                                             relative=False)
    return {
        "lrn": (lambda: lrn_op(tf, ops, case, False), lambda: lrn_reference(tf, ops, case),
                lambda a, r: check_lrn(tf, a, r, case)),
        "lrn_gradient": (lambda: lrn_op(tf, ops, case, True),
                         lambda: lrn_gradient_reference(tf, case),
                         lambda a, r: check_lrn_gradient(tf, a, r, case)),
        "resize": (lambda: ops.resize_flip_and_normalize(case["region"], case["size"],
                                                         *_crop_arguments(case)),
                   lambda: references.resize_flip_and_normalize(
                       case["region"], case["size"], *_crop_arguments(case)), crop),
        "decode_jpeg": (lambda: ops.decode_jpeg_crop_flip_and_normalize(
                            case["contents"], case["size"], *_crop_arguments(case),
                            dct_method=case["dct_method"]),
                        lambda: decode_crop_reference(tf, ops, case), crop),
        "draws": (lambda: ops.augmentation_draws(
                      case["index"], case["basis"], case["seed"], case["image_size"],
                      case["crop_size"], case["stddev"]),
                  lambda: draws_reference(tf, case), check_draws),
    }[kind]


def one_line(text):
    return " ".join(str(text).split())[:300]


def run_case(tf, ops, kind, case):
    """The case's outcome: 'match', 'refused', 'mismatch: ...' or 'error: ...'."""
    op, reference, check = runners(tf, ops, kind, case)
    try:
        actual = op()
    except tf.errors.InvalidArgumentError as e:
        return f"refused: {one_line(e.message)}"
    except Exception as e:  # noqa: BLE001 - every other outcome is a finding
        return f"error: the op raised {type(e).__name__}: {one_line(e)}"
    try:
        expected = reference()
    except tf.errors.InvalidArgumentError as e:
        return f"mismatch: the op returned where its reference refuses ({one_line(e.message)})"
    except Exception as e:  # noqa: BLE001
        return f"error: the reference raised {type(e).__name__}: {one_line(e)}"
    return "unchecked" if expected is None else check(actual, expected)


def worker(seed, first, last):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    from alexnet_tf import ops

    corpus = jpeg_corpus(tf)
    for index in range(first, last):
        kind, case = draw_case(seed, index, corpus)
        print(f"{BEGIN} {index} {kind}", flush=True)
        print(f"{END} {index} {kind} {run_case(tf, ops, kind, case)}", flush=True)


# ----------------------------------------------------------------------------------
# The driver: workers in subprocesses, restarted after a crash or a hang.


def _lines(stream, out):
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


WORKER = (sys.executable, os.path.abspath(__file__), "--worker")


def run_worker(seed, first, last, timeout_s, record, worker=WORKER):
    """Runs cases [first, last) in one subprocess until it ends, dies or hangs;
    returns the next case to run."""
    command = [*worker, f"--seed={seed}", f"--first={first}", f"--cases={last - first}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    lines = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    current, kind = first, "?"
    while True:
        try:
            line = lines.get(timeout=timeout_s)
        except queue.Empty:
            process.kill()
            process.wait()
            record(current, kind, f"hang: no answer in {timeout_s} s")
            return current + 1
        if line is None:
            break
        tag, index, kind, *outcome = line.split(" ", 3)
        current = int(index)
        if tag == END:
            record(current, kind, outcome[0])
            current, kind = current + 1, "?"
    code = process.wait()
    if current < last:
        how = f"signal {-code}" if code < 0 else f"exit status {code}"
        record(current, kind, f"crash: the process died with {how}")
        return current + 1
    return last


def fuzz(seed, first, cases, timeout_s, progress=None, worker=WORKER):
    """Runs the cases; returns (outcome counts per op, failures as lines)."""
    counts = collections.defaultdict(collections.Counter)
    failures = []

    def record(index, kind, outcome):
        label = outcome.split(":")[0]
        counts[kind][label] += 1
        if label in FAILURES:
            failures.append(f"case {index} ({kind}): {outcome}")
        if progress is not None:
            progress.update(1)

    position, last = first, first + cases
    while position < last:
        position = run_worker(seed, position, last, timeout_s, record, worker)
    return counts, failures


def report(counts, failures, cases):
    for kind in KINDS + ("?",):
        if counts.get(kind):
            print(f"  {kind:13s} " + ", ".join(f"{n} {label}"
                                               for label, n in sorted(counts[kind].items())))
    total = collections.Counter()
    for kind_counts in counts.values():
        total.update(kind_counts)
    print(f"{cases} cases: " + ", ".join(f"{total[label]} {label}" for label in FAILURES))
    for line in failures:
        print("  " + line)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--timeout_s", type=float, default=60.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cases < 1 or args.first < 0 or args.timeout_s <= 0:
        parser.error("--cases must be >= 1, --first >= 0 and --timeout_s > 0")
    if args.worker:
        worker(args.seed, args.first, args.first + args.cases)
        return 0
    from tqdm import tqdm

    with tqdm(total=args.cases, unit="case", disable=None) as progress:
        counts, failures = fuzz(args.seed, args.first, args.cases, args.timeout_s, progress)
    report(counts, failures, args.cases)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
