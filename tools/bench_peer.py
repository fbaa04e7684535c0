"""Times our training step against PyTorch's on the same CPU, in the same run.

    TF_CPU_ALLOCATOR_USE_BFC=true python tools/bench_peer.py --nets=small,paper \\
        --torch_python=/work/venvs/torch/bin/python --rounds=5 --steps=3     # the figures
    TF_CPU_ALLOCATOR_USE_BFC=true python tools/bench_peer.py --nets=small --batch_size=8 \\
        --rounds=2 --steps=1 --warmup=1                                      # a quick look

PyTorch is a benchmark-only peer, never a dependency of alexnet_tf: it lives in its
own virtual environment outside the repository,

    python -m venv /work/venvs/torch && /work/venvs/torch/bin/pip install torch==2.14.1 numpy

(torch==2.13.0, a CPU build, does as well; the 2.14.1 wheel is a CUDA build that runs
on the CPU), and runs tools/peer_torch_step.py as a subprocess of this one. Neither
this process nor the package ever imports torch.

For each net ("small": 32x32x3 images, 10 classes; "paper": 224x224x3, 1000
classes), at the same batch size, on one fixed random batch (N(0, 50) pixels, the
spread of mean-subtracted images; the same values on both sides), two steps are timed:

  ours     the trainer's own step, built as the training command builds it:
           trainer.build_network (the network and optim.PaperMomentumSGD with the
           training command's defaults) on one_device "/cpu:0", then
           trainer.make_train_step(...): forward, backward, the paper's update,
           and the loss and top-1/top-5 errors it returns; .numpy() on the loss ends it.
  PyTorch  the same network as a user writes it (tools/peer_torch_step.py: one
           nn.Sequential, nn.Conv2d(groups=2) for the towers, nn.LocalResponseNorm,
           torch.optim.SGD(lr=0.01, momentum=0.9, weight_decay=0.0005), cross-entropy),
           eager, float32, channels_last; loss.item() ends it. The same through
           torch.compile is timed as well (--torch_compile, on by default).

The processes take turns and never run at once: each round times --steps steps of
ours, then --steps steps of PyTorch (then of the compiled PyTorch), so that a change
of load on the shared machine hits both alike. Each figure is the median over all
timed steps after the warm-up; the ratio is our images/s over PyTorch's (PyTorch's
median step time over ours), and its spread the smallest and largest of the
per-round ratios (the median step of each side in that round). Process CPU time per
step is printed too, since other work on a shared machine inflates wall times.

Run it on an idle machine. When other work takes a core, PyTorch's OpenMP threads
often suffer far more than TensorFlow's (a parallel region waits for its slowest
thread): on the 2-core machine, with a test run going alongside, PyTorch's small-net
step at batch 8 went from 0.03 s to 0.67 s while ours went from 0.017 s to 0.020 s
(not always: in another such run ours lost more). So the tool prints how much CPU
time other processes took during the rounds (from /proc/stat) and warns when that is
over 10% of the cores.

Threads: PyTorch gets torch.set_num_threads(--threads), os.cpu_count() by default,
which is what TensorFlow's default intra-op threads use; TensorFlow keeps its
defaults, as the training command does, unless --threads is given.

The targets: our images/s at least 2.5x PyTorch eager's on the small net and 2.0x
on the paper net, and at least 2.0x torch.compile's on both.
"""

import inspect
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from alexnet_tf import config as config_lib  # noqa: E402
from machine import (  # noqa: E402  tools/, beside this file
    PeerProcess, cpu_model, load_average, machine_busy_seconds, process_cpu_seconds,
)
from alexnet_tf import trainer  # noqa: E402

_NETS = flags.DEFINE_list("nets", ["small", "paper"], "Which nets to time: small, paper.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Images per step (the paper's 128).")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Rounds; each times --steps steps of each side.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps of each side per round.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps of each side before timing.")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "PyTorch's threads, and TensorFlow's intra-op threads if given; "
    "0: os.cpu_count() for PyTorch, TensorFlow's defaults for TensorFlow."
)
_TORCH_PYTHON = flags.DEFINE_string(
    "torch_python", "/work/venvs/torch/bin/python", "The python of the PyTorch environment."
)
_TORCH_COMPILE = flags.DEFINE_boolean(
    "torch_compile", True, "Also time PyTorch's step through torch.compile, a row with its "
    "own target."
)

INSTALL = ("python -m venv /work/venvs/torch && "
           "/work/venvs/torch/bin/pip install torch==2.14.1 numpy")
PEER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_torch_step.py")

# name: (size, classes, input side) of both sides.
NETS = {"small": ("small", 10, 32), "paper": ("paper", 1000, 224)}
EAGER, COMPILED = "PyTorch eager", "PyTorch compiled"
# Targets: our images/s over PyTorch's, eager and through torch.compile.
TARGET_RATIO = {EAGER: {"small": 2.5, "paper": 2.0}, COMPILED: {"small": 2.0, "paper": 2.0}}

# The step's learning rate (the paper's initial 0.01, PyTorch's lr too) and its stop flag.
LEARNING_RATE = 0.01
IMAGE_STDDEV = 50.0
SEED = 0


def torch_version(python):
    """PyTorch's version in `python`; exits with one line saying how to install it if none."""
    if not (os.path.isfile(python) and os.access(python, os.X_OK)):
        sys.exit(f"bench_peer: no PyTorch python at {python}; install it with: {INSTALL}")
    try:
        done = subprocess.run(
            [python, "-c", "import numpy, torch; print(torch.__version__)"],
            capture_output=True, text=True, timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        sys.exit(f"bench_peer: cannot run {python} ({e}); install PyTorch with: {INSTALL}")
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"bench_peer: torch is not importable in {python} ({last}); "
                 f"install it with: {INSTALL}")
    return done.stdout.strip().splitlines()[-1]


class TorchPeer(PeerProcess):
    """tools/peer_torch_step.py in a subprocess: warms up, then times steps on request."""

    def __init__(self, python, net, batch_size, threads, warmup, compile_=False):
        super().__init__([
            python, PEER_SCRIPT, f"--net={net}", f"--batch_size={batch_size}",
            f"--threads={threads}", f"--warmup={warmup}", f"--seed={SEED}",
            f"--image_stddev={IMAGE_STDDEV}",
        ] + (["--compile"] if compile_ else []), "PyTorch")

    def ready(self):
        """The "ready" event, or an "error" one."""
        return self.read()

    def time(self, steps):
        """(wall seconds, CPU seconds) of each of `steps` steps, and the last loss."""
        event = self.ask(f"time {steps}")
        return event["seconds"], event["cpu_seconds"], event["loss"]


def batch(side, num_classes, batch_size):
    """The fixed random batch, NHWC; peer_torch_step.py draws the same values."""
    rng = np.random.default_rng(SEED)
    images = rng.normal(0.0, IMAGE_STDDEV, (batch_size, side, side, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch_size).astype(np.int32)
    return tf.constant(images), tf.constant(labels)


def build_ours(size, num_classes, side, batch_size):
    """(one timed call of the trainer's step -> (wall s, CPU s, loss), parameter count)."""
    expected = ["model", "optimizer", "strategy", "batch_size"]
    names = list(inspect.signature(trainer.make_train_step).parameters)
    if names[:4] != expected:
        sys.exit(f"bench_peer: trainer.make_train_step{inspect.signature(trainer.make_train_step)}"
                 f" no longer starts with ({', '.join(expected)}); adapt build_ours()")
    config = config_lib.TrainConfig(model_size=size, crop_size=side, strategy="one_device",
                                    devices=("/cpu:0",), seed=SEED)
    distribution = trainer.create_distribution(config)
    network, optimizer, _ = trainer.build_network(config, distribution, num_classes)
    step = trainer.make_train_step(network, optimizer, distribution.strategy, batch_size)
    images, labels = batch(side, num_classes, batch_size)
    learning_rate, stop = tf.constant(LEARNING_RATE), tf.constant(0.0)

    def run():
        start, cpu_start = time.perf_counter(), time.process_time()
        outputs = step(images, labels, learning_rate, stop)
        loss = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        loss = float(loss.numpy())
        return time.perf_counter() - start, time.process_time() - cpu_start, loss

    return run, network.count_params()


def _line(label, params, seconds, cpu_seconds, batch_size):
    median = statistics.median(seconds)
    return (f"  {label:22s} {params:>11,} parameters, step median {median:8.4f} s "
            f"(min {min(seconds):.4f}, max {max(seconds):.4f}; CPU "
            f"{statistics.median(cpu_seconds):.4f} s), {batch_size / median:8.1f} images/s")


def start_peers(name, batch_size, threads, ours_params):
    """{label: (TorchPeer, its ready message)}: eager, and compiled with --torch_compile.
    One at a time: each warms up alone, then waits for its turn."""
    peers = {}
    for label, compile_ in [(EAGER, False)] + ([(COMPILED, True)] if _TORCH_COMPILE.value
                                               else []):
        peer = TorchPeer(_TORCH_PYTHON.value, name, batch_size, threads, _WARMUP.value, compile_)
        ready = peer.ready()
        if ready["event"] != "ready":
            peer.close()
            if compile_:  # its row is left out, and says so
                print(f"  torch.compile: did not work ({ready.get('message')}); no compiled "
                      "row", flush=True)
                continue
            sys.exit(f"bench_peer: the {label} peer failed: {ready.get('message')}")
        print(f"  {label}: torch {ready['torch']}, {ready['threads']} threads, "
              f"{ready['warmup_steps']} warm-up step(s) in {ready['warmup_seconds']:.1f} s",
              flush=True)
        if ready["params"] != ours_params:
            print(f"  PARAMETER COUNTS DIFFER: ours {ours_params:,}, PyTorch "
                  f"{ready['params']:,}; PyTorch per layer: {ready['param_breakdown']}")
        peers[label] = (peer, ready)
    return peers


def time_rounds(run_ours, peers):
    """(times {label: (wall [s], CPU [s], per-round medians)}, last losses, other CPU
    seconds or None, wall seconds of the rounds): ours then each peer, round by round."""
    times = {label: ([], [], []) for label in ["ours", *peers]}
    losses = {}
    # Other work on the machine meanwhile: all CPU time less that of these processes.
    pids = [os.getpid()] + [peer.process.pid for peer, _ in peers.values()]
    cpu_before = [machine_busy_seconds()] + [process_cpu_seconds(p) for p in pids]
    wall_before = time.perf_counter()
    for _ in range(_ROUNDS.value):
        rounds = {"ours": [run_ours() for _ in range(_STEPS.value)]}
        for label, (peer, _) in peers.items():
            wall, cpu, loss = peer.time(_STEPS.value)
            rounds[label] = [(w, c, loss) for w, c in zip(wall, cpu)]
        for label, steps in rounds.items():
            wall = [w for w, _, _ in steps]
            times[label][0].extend(wall)
            times[label][1].extend(c for _, c, _ in steps)
            times[label][2].append(statistics.median(wall))
            losses[label] = steps[-1][2]
    cpu_after = [machine_busy_seconds()] + [process_cpu_seconds(p) for p in pids]
    others = None
    if None not in cpu_before + cpu_after:
        used = [after - before for before, after in zip(cpu_before, cpu_after)]
        others = max(used[0] - sum(used[1:]), 0.0)
    return times, losses, others, time.perf_counter() - wall_before


def report_net(name, times, peers, losses):
    """Prints each row and our ratio over each peer with its target; {label: (ratio,
    target)}."""
    ratios = {}
    ours_median = statistics.median(times["ours"][0])
    for label in peers:
        ratio = statistics.median(times[label][0]) / ours_median
        per_round = [t / o for t, o in zip(times[label][2], times["ours"][2])]
        target = TARGET_RATIO[label][name]
        print(f"  ours over {label}: {ratio:.2f}x images/s (per round {min(per_round):.2f} .. "
              f"{max(per_round):.2f}); target >= {target}x: "
              f"{'met' if ratio >= target else 'not met'}")
        ratios[label] = (ratio, target)
    bad = {label: loss for label, loss in losses.items() if not np.isfinite(loss)}
    print("  last losses: " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items())
          + (f"  (NOT FINITE: {sorted(bad)})" if bad else ""))
    return ratios


def report_other_work(others, rounds_wall):
    if others is None:
        return
    share = others / (rounds_wall * os.cpu_count())
    print(f"  other work during the rounds: {others:.1f} CPU s in {rounds_wall:.1f} s, "
          f"{share:.0%} of the {os.cpu_count()} cores")
    if share > 0.1:
        print("  WARNING: the cores were shared with other work, so the figures are "
              "distorted: PyTorch's OpenMP threads often lose far more than "
              "TensorFlow's when a core is taken (a parallel region waits for its "
              "slowest thread), which inflates the ratio. Rerun on an idle machine.")


def bench_net(name, batch_size, threads):
    """Times one net; returns {peer label: (ours over it, target)}."""
    size, num_classes, side = NETS[name]
    print(f"\n{name} net ({side}x{side}x3, {num_classes} classes), batch {batch_size}, "
          f"{_ROUNDS.value} round(s) x {_STEPS.value} step(s) after {_WARMUP.value} "
          f"warm-up step(s); load average {load_average()} at start", flush=True)
    run_ours, ours_params = build_ours(size, num_classes, side, batch_size)
    start = time.perf_counter()
    for _ in range(_WARMUP.value):
        run_ours()
    print(f"  ours: {_WARMUP.value} warm-up step(s) in {time.perf_counter() - start:.1f} s",
          flush=True)
    peers = {}
    try:
        peers = start_peers(name, batch_size, threads, ours_params)
        times, losses, others, rounds_wall = time_rounds(run_ours, peers)
    finally:
        for peer, _ in peers.values():
            peer.close()
    print(_line("ours (trainer step)", ours_params, *times["ours"][:2], batch_size))
    for label, (_, ready) in peers.items():
        print(_line(label, ready["params"], *times[label][:2], batch_size))
    ratios = report_net(name, times, peers, losses)
    report_other_work(others, rounds_wall)
    print(f"  load average {load_average()} at end", flush=True)
    return ratios


def main(argv):
    del argv
    for name in _NETS.value:
        if name not in NETS:
            raise app.UsageError(f"unknown net {name!r}; choose from {sorted(NETS)}")
    if _ROUNDS.value < 1 or _STEPS.value < 1 or _WARMUP.value < 0 or _BATCH_SIZE.value < 1:
        raise app.UsageError("--rounds, --steps and --batch_size must be >= 1, --warmup >= 0")
    version = torch_version(_TORCH_PYTHON.value)
    threads = _THREADS.value or os.cpu_count()
    if _THREADS.value:
        tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    print(f"{cpu_model()}, nproc {affinity or os.cpu_count()} (os.cpu_count() "
          f"{os.cpu_count()}), load average {load_average()} at start")
    print(f"TensorFlow {tf.__version__} (intra-op threads "
          f"{_THREADS.value or 'default'}, TF_CPU_ALLOCATOR_USE_BFC="
          f"{os.environ.get('TF_CPU_ALLOCATOR_USE_BFC', 'unset')}); PyTorch {version} "
          f"({_TORCH_PYTHON.value}, {threads} threads)", flush=True)

    results = {name: bench_net(name, _BATCH_SIZE.value, threads) for name in _NETS.value}
    print(f"\nsummary (batch {_BATCH_SIZE.value}, ours images/s over PyTorch's; load "
          f"average {load_average()} at end):")
    for name, ratios in results.items():
        for label, (ratio, target) in ratios.items():
            print(f"  {name:6s} over {label:16s} {ratio:5.2f}x  target >= {target}x: "
                  f"{'met' if ratio >= target else 'not met'}")


if __name__ == "__main__":
    app.run(main)
