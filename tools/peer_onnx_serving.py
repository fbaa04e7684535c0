"""The ONNX Runtime peer of tools/bench_serving.py: the PyTorch peer's network exported
to ONNX and served by ONNX Runtime, as a user would serve it on a CPU.

Runs ONLY under the separate PyTorch environment (tools/peer_torch_step.py's), never the
project's: PyTorch and ONNX Runtime are benchmark-only peers and never dependencies of
alexnet_tf, so this file imports nothing from the package (nor TensorFlow).

    /work/venvs/torch/bin/pip install onnxruntime onnx onnxscript
    /work/venvs/torch/bin/python tools/peer_onnx_serving.py --net=small --onnx=/tmp/small.onnx

It builds tools/peer_torch_step.py's network (the same layers and parameter count as
the package's), in inference mode, exports it with a free batch dimension
(torch.onnx.export), and opens an onnxruntime.InferenceSession on the CPU with every
graph optimisation (ORT_ENABLE_ALL) and its default threads. Its input is a batch of
float32 crops [N, 3, side, side], already mean-subtracted: ONNX Runtime runs the
network alone, where the SavedModel's serve_images also crops and subtracts the mean
image of uint8 images.

Protocol (stdout, one JSON object a line): after the export and --warmup untimed runs
at each batch size it prints {"event": "ready", "onnxruntime": ..., "params": ...}
then reads commands from stdin, one a line:
    time B K   runs K inferences of a fixed random batch of B crops; prints
               {"event": "times", "seconds": [...], "cpu_seconds": [...]}
    quit       exits (so does the end of stdin).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime
import torch

import peer_torch_step  # tools/, beside this file


def emit(**fields):
    print(json.dumps(fields), flush=True)


def export_onnx(net, path):
    """Writes the peer's network in inference mode to path; returns (its parameter
    count, its input side)."""
    builder, side, num_classes = peer_torch_step.NETS[net]
    torch.manual_seed(0)
    model = builder(num_classes)
    peer_torch_step.init_weights(model)
    model.eval()
    example = torch.zeros(1, 3, side, side)
    torch.onnx.export(model, (example,), path, input_names=["crops"],
                      output_names=["logits"], dynamic_axes={"crops": {0: "batch"}},
                      dynamo=False)
    return sum(p.numel() for p in model.parameters()), side


def session(path, threads):
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(peer_torch_step.NETS), default="small")
    parser.add_argument("--onnx", required=True, help="Where to write the ONNX model.")
    parser.add_argument("--batch_sizes", default="1,64")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0,
                        help="intra_op_num_threads (0: ONNX Runtime's default).")
    parser.add_argument("--image_stddev", type=float, default=50.0)
    args = parser.parse_args()

    params, side = export_onnx(args.net, args.onnx)
    runner = session(args.onnx, args.threads)
    rng = np.random.default_rng(0)
    batches = {b: rng.normal(0.0, args.image_stddev, (b, 3, side, side)).astype(np.float32)
               for b in (int(b) for b in args.batch_sizes.split(","))}
    for crops in batches.values():
        for _ in range(args.warmup):
            runner.run(None, {"crops": crops})
    emit(event="ready", onnxruntime=onnxruntime.__version__, torch=torch.__version__,
         params=params, onnx_bytes=os.path.getsize(args.onnx))
    for line in sys.stdin:
        command = line.split()
        if command and command[0] == "quit":
            break
        if len(command) == 3 and command[0] == "time" and int(command[1]) in batches:
            crops = batches[int(command[1])]
            seconds, cpu_seconds = [], []
            for _ in range(int(command[2])):
                begin, cpu_begin = time.perf_counter(), time.process_time()
                runner.run(None, {"crops": crops})
                seconds.append(time.perf_counter() - begin)
                cpu_seconds.append(time.process_time() - cpu_begin)
            emit(event="times", seconds=seconds, cpu_seconds=cpu_seconds)
        elif command:
            emit(event="error", message=f"unknown command {line.strip()!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
