"""Fails when a training run had an epoch slower per step than the others: a stall.

    python tools/check_stalls.py --model_dir=runs/fashion_mnist [--limit=1.35]

Reads the seconds per step that the training command logs for every epoch
(TensorBoard's `epoch_seconds_per_step` in MODEL_DIR/train: the epoch's steps
without its evaluations, checkpoints and the step function's first trace) and
compares each with the median epoch's. Prints one line per epoch and exits 1 when
one exceeds --limit times the median, or when the run logged fewer than three epochs
(no median to speak of); 0 otherwise.

A benchmark guard, not a test: timings are never asserted in the default suite.
"""

import argparse
import os
import statistics
import sys


def epoch_seconds_per_step(model_dir):
    """[(step at the epoch's end, seconds per step)] from the run's train/ events."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from alexnet_tf import model_dir as model_dir_lib, trainer

    return model_dir_lib.read_scalars(model_dir, model_dir_lib.TRAIN_LOGS,
                                      trainer.EPOCH_SECONDS_PER_STEP)


def check(readings, limit):
    """(lines to print, whether every epoch is within the limit)."""
    if len(readings) < 3:
        return [f"{len(readings)} epochs logged; the check needs at least 3."], False
    median = statistics.median(seconds for _, seconds in readings)
    lines, ok = [], True
    for epoch, (step, seconds) in enumerate(readings, start=1):
        ratio = seconds / median
        stalled = ratio > limit
        ok = ok and not stalled
        lines.append(f"epoch {epoch:3d} (to step {step}): {1000 * seconds:7.1f} ms a step, "
                     f"{ratio:.2f}x the median{'  STALL' if stalled else ''}")
    lines.append(f"{len(readings)} epochs, median {1000 * median:.1f} ms a step: "
                 + ("no epoch over " if ok else "an epoch over ") + f"{limit}x the median")
    return lines, ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--limit", type=float, default=1.35)
    args = parser.parse_args()
    try:
        readings = epoch_seconds_per_step(args.model_dir)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    lines, ok = check(readings, args.limit)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
