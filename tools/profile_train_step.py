"""Where the training command's step spends its time, op by op.

    TF_CPU_ALLOCATOR_USE_BFC=true python tools/profile_train_step.py --net=small

Builds the step exactly as tools/bench_train_step.py does (the trainer's own
`trainer.make_train_step` for configs/small.flags' or configs/paper.flags' network),
runs it on one fixed random batch, then records --profile_steps steps with TensorFlow's
profiler and sums each op type's time over every host thread of the trace. The
figures are milliseconds of thread time per step: with two cores busy, a step's
wall time is about half their sum.

It then splits the step's wall time by how many ops were running at once, and lists
the ops that ran alone: those are the step's serial chain, where an op's own speed is
the step's.

With --stock_conv_gradient it profiles, instead, the step with TensorFlow's own conv
gradients (as tools/bench_train_step.py --stock_conv_gradient times it).

With --serving_batch=N it profiles, instead, the net exported with random weights as
tools/bench_serving.py exports it, loaded with tf.saved_model.load, and its
`serve_images` signature on N uint8 images of the recipe's rescaled size:

    TF_CPU_ALLOCATOR_USE_BFC=true python tools/profile_train_step.py --net=paper \
        --serving_batch=64 --profile_steps=3
"""

import collections
import glob
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow.tsl.profiler.protobuf import xplane_pb2  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train_step  # noqa: E402
from machine import export_random_net  # noqa: E402

_NET = flags.DEFINE_enum("net", "small", sorted(bench_train_step.NETS), "Which net.")
_STEPS = flags.DEFINE_integer("profile_steps", 10, "Profiled steps.", lower_bound=1)
_TOP = flags.DEFINE_integer("top", 25, "Op types listed.", lower_bound=1)
_SERVING_BATCH = flags.DEFINE_integer(
    "serving_batch", 0, "Profile the exported net's serve_images on this many images "
    "instead of the training step (0: the step).", lower_bound=0)


def op_events(trace_dir):
    """[(start ps, end ps, node name, op type)] of the ops on the host planes of one trace."""
    path = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb"))[0]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    events = []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # Op events are "node_name:OpType"; "Class::Method" events are the
                # executor's own, and a function call's event encloses its ops.
                if ":" not in name or "::" in name:
                    continue
                node, op_type = (part.strip() for part in name.split(":", 1))
                if not op_type.startswith("__inference"):
                    start = line.timestamp_ns * 1000 + event.offset_ps
                    events.append((start, start + event.duration_ps, node, op_type))
    return events


def op_thread_times(events):
    """Op type -> (total duration in ms, count)."""
    totals, counts = collections.Counter(), collections.Counter()
    for start, end, _, op_type in events:
        totals[op_type] += (end - start) / 1e9
        counts[op_type] += 1
    return totals, counts


def concurrency(events):
    """(ms with n ops running, for each n; ms each node ran with no other op running)."""
    edges = sorted([(start, 1, i) for i, (start, _, _, _) in enumerate(events)]
                   + [(end, -1, i) for i, (_, end, _, _) in enumerate(events)])
    running, by_count, alone = set(), collections.Counter(), collections.Counter()
    last = edges[0][0] if edges else 0
    for time_ps, kind, i in edges:
        span = (time_ps - last) / 1e9
        by_count[len(running)] += span
        if len(running) == 1:
            alone[events[next(iter(running))][2]] += span
        last = time_ps
        if kind == 1:
            running.add(i)
        else:
            running.discard(i)
    return by_count, alone


def training_step(net, config):
    """(a call of the trainer's step on a fixed random batch, what it is)."""
    # --stock_conv_gradient (bench_train_step's flag): that step instead of the trainer's.
    stock = bench_train_step._STOCK_CONV_GRADIENT.value
    build = bench_train_step.stock_conv_gradient_step if stock else bench_train_step.trainer_step
    step, _ = build(config, bench_train_step.NETS[net][1], 128)
    rng = np.random.default_rng(0)
    shape = (128, config.crop_size, config.crop_size, 3)
    images = tf.constant(rng.normal(0, 50, shape).astype(np.float32))
    labels = tf.constant(rng.integers(0, 10, 128).astype(np.int32))
    rate, stop = tf.constant(0.01), tf.constant(0.0)
    return lambda: step(images, labels, rate, stop)[0].numpy(), "batch 128, training step"


def serving_call(net, config, batch_size, workdir):
    """(a call of the exported net's serve_images on fixed random images, what it is)."""
    export_dir, _ = export_random_net(config, bench_train_step.NETS[net][1],
                                      os.path.join(workdir, net), tflite=False)
    serve_images = tf.saved_model.load(export_dir).signatures["serve_images"]
    side = config.image_size
    images = tf.constant(np.random.default_rng(0).integers(
        0, 256, (batch_size, side, side, 3), dtype=np.uint8))
    return (lambda: serve_images(images=images)["probabilities"].numpy(),
            f"batch {batch_size}, the SavedModel's serve_images")


def main(argv):
    del argv
    net = _NET.value
    config = bench_train_step.net_config(net)
    with tempfile.TemporaryDirectory() as workdir:
        if _SERVING_BATCH.value:
            call, what = serving_call(net, config, _SERVING_BATCH.value, workdir)
        else:
            call, what = training_step(net, config)
        for _ in range(3):
            call()
        walls = []
        trace_dir = os.path.join(workdir, "trace")
        tf.profiler.experimental.start(trace_dir)
        for _ in range(_STEPS.value):
            started = time.perf_counter()
            call()
            walls.append(time.perf_counter() - started)
        tf.profiler.experimental.stop()
        events = op_events(trace_dir)
    report(net, what, events, walls)


def report(net, what, events, walls):
    totals, counts = op_thread_times(events)
    by_count, alone = concurrency(events)
    steps = _STEPS.value
    total = sum(totals.values())
    print(f"{net} net, {what}, {steps} profiled calls; wall time per call (median, "
          f"while profiling) {1000 * statistics.median(walls):.1f} ms; op thread time "
          f"per call {total / steps:.1f} ms")
    print(f"{'op type':40s} {'ms/call':>8s} {'ops/call':>10s} {'share':>6s}")
    for op_type, duration in totals.most_common(_TOP.value):
        print(f"{op_type:40s} {duration / steps:8.2f} {counts[op_type] / steps:10.1f} "
              f"{100 * duration / total:5.1f}%")
    # Between the first op's start and the last op's end: the steps and the gaps
    # between them.
    span = sum(by_count.values())
    print("\nwall time per call by the number of ops running at once (ms, share): "
          + ", ".join(f"{n}: {ms / steps:.1f} ({100 * ms / span:.0f}%)"
                      for n, ms in sorted(by_count.items())))
    print(f"{'ops that ran alone (the serial chain)':72s} {'ms/call':>8s}")
    for node, duration in alone.most_common(_TOP.value // 2):
        print(f"{node[-72:]:72s} {duration / steps:8.2f}")


if __name__ == "__main__":
    app.run(main)
