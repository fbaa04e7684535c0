"""Data-parallel scaling: one worker against two on this machine, and on paper for N GPUs.

    python tools/bench_scaling.py                       # the small net, global batch 128
    python tools/bench_scaling.py --steps=5 --rounds=1  # a quick look

Measured. The trainer's own train step (`trainer.make_train_step`: forward, backward,
all-reduce of the gradients, the paper's update) on a fixed random global batch,
with no input pipeline, run three ways, each in fresh processes:

  one worker     one process, OneDeviceStrategy on the CPU, all cores;
  two workers    two processes on 127.0.0.1, MultiWorkerMirroredStrategy, each with
                 half the global batch and half the cores (intra-op threads);
  two, all cores the same with TensorFlow's default threads: each process uses
                 every core, so the two compete for them.

Each worker times every step after the warm-up; the figure is the median over the
workers' steps (a two-worker step ends when both have its all-reduced gradients).
The all-reduce alone is timed too: a gradient-sized float32 tensor summed over the
two workers, median of --steps.

On paper. A ring all-reduce of P float32 parameters moves 2 (N - 1) / N x 4P bytes
in and out of each of N workers. The trainer sums the gradients after the whole
backward pass (no overlap with it), so a data-parallel step takes the one-worker
step time (per-worker batch unchanged) plus that transfer over the link, latency
ignored: images/s = N x batch / (t_step + 8 (N - 1) P / (N x bandwidth)).
--step_times_ms lists the per-worker step times to project (see BENCHMARKS.md for
where each comes from).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

PAPER_PARAMETERS = 60_965_224  # build_alexnet(1000): Figure 2, float32 (Section 3.5)


def worker(args):
    """One worker: prints a JSON line with its step times and all-reduce times."""
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from alexnet_tf import distribute

    name = distribute.MULTI_WORKER if os.environ.get("TF_CONFIG") else distribute.ONE_DEVICE
    distribution = distribute.create_distribution(name, collective_timeout_s=600)

    import tensorflow as tf

    from alexnet_tf import trainer

    strategy = distribution.strategy
    config = trainer.TrainConfig(model_size=args.model_size, crop_size=args.crop_size,
                                 seed=0)
    model, optimizer, _ = trainer.build_network(config, distribution, args.num_classes)
    train_step = trainer.make_train_step(model, optimizer, strategy, args.batch_size)
    rng = np.random.default_rng(0)
    images = rng.normal(0, 50, (args.batch_size, args.crop_size, args.crop_size, 3))
    labels = rng.integers(0, args.num_classes, args.batch_size).astype(np.int32)
    images, labels = distribute.split_global_batch(strategy, images.astype(np.float32), labels)
    learning_rate = tf.Variable(1e-4, trainable=False)
    no_stop = tf.constant(0.0)

    step_times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = train_step(images, labels, learning_rate, no_stop)[0]
        float(loss)  # waits for the step
        if step >= args.warmup:
            step_times.append(time.perf_counter() - start)

    parameters = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    gradient = tf.ones([parameters])

    @tf.function
    def all_reduce():
        return strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, gradient * 1.0))

    reduce_times = []
    for step in range(args.warmup + args.steps):
        start = time.perf_counter()
        strategy.experimental_local_results(all_reduce())[0].numpy()
        if step >= args.warmup:
            reduce_times.append(time.perf_counter() - start)
    print(json.dumps({"task": distribution.task_id, "replicas": distribution.num_replicas,
                      "parameters": parameters, "step_s": step_times,
                      "all_reduce_s": reduce_times}), flush=True)


def run_workers(args, workers, threads):
    """Runs `workers` worker processes at once; returns their JSON results."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", f"--threads={threads}"]
    for name in ("batch_size", "steps", "warmup", "model_size", "crop_size", "num_classes"):
        command.append(f"--{name}={getattr(args, name)}")
    from alexnet_tf import distribute

    tf_configs = distribute.local_cluster_tf_configs(workers) if workers > 1 else [None]
    processes = []
    for tf_config in tf_configs:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        if tf_config:
            env["TF_CONFIG"] = tf_config
        processes.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    results = []
    for process in processes:
        out, err = process.communicate(timeout=3600)
        if process.returncode:
            sys.exit(f"a worker failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def project(step_ms, parameters, batch, workers, gbit_per_s):
    """Images/s of `workers` data-parallel workers of `batch` images each."""
    transfer_s = 2 * (workers - 1) / workers * 4 * parameters / (gbit_per_s * 1e9 / 8)
    return workers * batch / (step_ms / 1e3 + transfer_s), transfer_s


def print_projection(step_times_ms, batch, links, counts):
    parameters = PAPER_PARAMETERS
    print(f"\nOn paper: the paper's net ({parameters:,} parameters, {4 * parameters / 1e6:.1f} MB "
          f"of float32 gradients), {batch} images per worker, ring all-reduce after the "
          "backward pass:")
    for label_and_ms in step_times_ms:
        label, ms = label_and_ms.split("=")
        ms = float(ms)
        one = batch / (ms / 1e3)
        print(f"\n  {label}: {ms:g} ms per step alone, {one:.0f} images/s")
        print("    link       " + "".join(f"{f'N={n}':>22}" for n in counts))
        for gbit in links:
            cells = []
            for n in counts:
                rate, transfer_s = project(ms, parameters, batch, n, gbit)
                cells.append(f"{rate:9.0f} img/s {rate / (n * one):4.0%} ")
            print(f"    {gbit:>4g} Gb/s " + "".join(f"{c:>22}" for c in cells))
        transfer_ms = project(ms, parameters, batch, 2, links[-1])[1] * 1e3
        print(f"    (all-reduce at N=2 over {links[-1]:g} Gb/s: {transfer_ms:.0f} ms; "
              f"scaling efficiency = images/s / (N x one worker))")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--batch_size", type=int, default=128, help="The global batch.")
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per worker and run.")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3,
                        help="Each of the three ways is run this many times, in turn.")
    parser.add_argument("--model_size", default="small", choices=["small", "paper"])
    parser.add_argument("--crop_size", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--step_times_ms", nargs="*", default=[
        "2-core CPU, measured (BENCHMARKS.md)=6280",
        "GPU at 10 TFLOP/s sustained=53",
        "GPU at 100 TFLOP/s sustained=5.3",
    ], help="LABEL=MS: per-worker step times of the paper's net at --projection_batch.")
    parser.add_argument("--projection_batch", type=int, default=128)
    parser.add_argument("--links_gbit", type=float, nargs="*", default=[100.0, 25.0])
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    cores = os.cpu_count()
    ways = {"one worker": (1, 0), "two workers": (2, max(1, cores // 2)),
            "two, all cores": (2, 0)}
    steps = {name: [] for name in ways}
    reduces, parameters, rounds = [], None, []
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        medians = {}
        for name, (workers, threads) in ways.items():
            results = run_workers(args, workers, threads)
            # A two-worker step lasts as long as the slower worker's.
            times = [max(times) for times in zip(*(r["step_s"] for r in results))]
            steps[name].extend(times)
            medians[name] = statistics.median(times)
            if workers == 2:
                reduces.extend(max(t) for t in zip(*(r["all_reduce_s"] for r in results)))
            parameters = results[0]["parameters"]
        rounds.append((medians, os.getloadavg()[0]))
    load_after = os.getloadavg()[0]

    print(f"{args.model_size} net, {parameters:,} parameters, {args.crop_size}x{args.crop_size} "
          f"inputs, global batch {args.batch_size}, {cores} cores, {args.rounds} rounds x "
          f"{args.steps} steps; load average {load_before:.2f} before, {load_after:.2f} after")
    one = statistics.median(steps["one worker"])
    print(f"{'run':<16}{'median step':>12}{'images/s':>10}{'vs one worker':>15}")
    for name, times in steps.items():
        median = statistics.median(times)
        print(f"{name:<16}{median * 1e3:>10.1f}ms{args.batch_size / median:>10.0f}"
              f"{one / median:>14.2f}x")
    for index, (medians, load) in enumerate(rounds):
        print(f"  round {index + 1}: " + ", ".join(
            f"{name} {args.batch_size / m:.0f}" for name, m in medians.items())
            + f" images/s; load average {load:.2f}")
    reduce = statistics.median(reduces)
    print(f"all-reduce of the {4 * parameters / 1e6:.1f} MB of gradients between the two "
          f"workers: {reduce * 1e3:.1f} ms median ({8 * parameters / 2 / reduce / 1e9:.2f} GB/s "
          "per worker by the ring formula)")
    print_projection(args.step_times_ms, args.projection_batch, args.links_gbit,
                     (2, 4, 8, 16, 32))


if __name__ == "__main__":
    main()
