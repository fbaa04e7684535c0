"""The PyTorch peer of tools/bench_peer.py: AlexNet's training step as a user writes it.

Runs ONLY under a separate PyTorch environment, never the project's: PyTorch is a
benchmark-only peer and must never become a dependency of alexnet_tf, so this file
imports torch and numpy and nothing from the package (nor TensorFlow).

    python -m venv /work/venvs/torch && /work/venvs/torch/bin/pip install torch==2.14.1 numpy
    /work/venvs/torch/bin/python tools/peer_torch_step.py --net=small --batch_size=8

It builds one of the two networks with stock PyTorch modules, the way a user would
write them (grouped convolutions for the towers, nn.LocalResponseNorm, one
nn.Sequential), and the training step as a user would write it:
torch.optim.SGD(lr=0.01, momentum=0.9, weight_decay=0.0005), cross-entropy, then
zero_grad(set_to_none=True), forward, backward, step; float32, channels_last for the
model and the images, torch.set_num_threads(--threads), eager mode unless --compile.
loss.item() ends every step, as the TensorFlow side reads its loss with .numpy().

The differences from the paper's (and the package's) update are PyTorch's own and do
not change the work: its SGD decays the biases too and folds the learning rate in
after the momentum (v <- 0.9 v + g + 0.0005 w; w <- w - lr v).

Protocol (stdout, one JSON object a line, so that a driver can interleave rounds
with TensorFlow in the same run): after --warmup untimed steps it prints
    {"event": "ready", "torch": ..., "params": ..., "threads": ..., ...}
then reads commands from stdin, one a line:
    time K   runs K steps; prints {"event": "times", "seconds": [per-step wall
             seconds, time.perf_counter], "cpu_seconds": [per-step process CPU
             seconds], "loss": last loss}
    quit     exits (so does the end of stdin).
Errors go to stderr, and as {"event": "error", "message": ...} on stdout where the
driver should see them (an unknown command, --compile failing).
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

# The paper's LRN (Section 3.3): b = a / (k + alpha * sum of a^2 over n neighbouring
# maps)^beta with k = 2, n = 5, alpha = 1e-4, beta = 0.75. nn.LocalResponseNorm
# divides its alpha by the window size (b = a / (k + alpha / n * sum)^beta), so the
# paper's per-term 1e-4 is alpha = 5e-4 with size 5. Its window is centred (c-2 .. c+2)
# like the paper's. One LRN over all of conv1's (conv2's) maps: its windows cross the
# tower boundary at map 48 (128), where the paper's do not; the work is the same.
LRN_SIZE = 5
LRN_ALPHA = 5e-4
LRN_BETA = 0.75
LRN_K = 2.0

PAPER_PARAMS = 60_965_224

# Section 5: weights from N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6 and fc7.
WEIGHT_STDDEV = 0.01
BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")

# Section 5 (and the package's defaults): lr 0.01, momentum 0.9, weight decay 0.0005.
LEARNING_RATE = 0.01
MOMENTUM = 0.9
WEIGHT_DECAY = 0.0005


def lrn():
    return nn.LocalResponseNorm(size=LRN_SIZE, alpha=LRN_ALPHA, beta=LRN_BETA, k=LRN_K)


def paper_net(num_classes=1000):
    """Figure 2 on 224x224x3 images: 60,965,224 parameters for 1000 classes."""
    return nn.Sequential(
        # cuda-convnet2's conv1: zeros 3 pixels past the bottom and right edges, 224 -> 55.
        nn.ZeroPad2d((0, 3, 0, 3)),
        nn.Conv2d(3, 96, 11, stride=4),  # conv1
        nn.ReLU(inplace=True),
        lrn(),
        nn.MaxPool2d(3, 2),  # 55 -> 27
        nn.Conv2d(96, 256, 5, padding=2, groups=2),  # conv2
        nn.ReLU(inplace=True),
        lrn(),
        nn.MaxPool2d(3, 2),  # 27 -> 13
        nn.Conv2d(256, 384, 3, padding=1),  # conv3: both towers' maps
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1, groups=2),  # conv4
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1, groups=2),  # conv5
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),  # 13 -> 6
        nn.Flatten(),
        nn.Linear(6 * 6 * 256, 4096),  # fc6
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),  # fc7
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, num_classes),  # fc8
    )


def small_net(num_classes=10):
    """The same topology on 32x32x3 images (the package's "small" size)."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 5, padding=2),  # conv1
        nn.ReLU(inplace=True),
        lrn(),
        nn.MaxPool2d(3, 2),  # 32 -> 15
        nn.Conv2d(32, 64, 5, padding=2, groups=2),  # conv2
        nn.ReLU(inplace=True),
        lrn(),
        nn.MaxPool2d(3, 2),  # 15 -> 7
        nn.Conv2d(64, 96, 3, padding=1),  # conv3
        nn.ReLU(inplace=True),
        nn.Conv2d(96, 96, 3, padding=1, groups=2),  # conv4
        nn.ReLU(inplace=True),
        nn.Conv2d(96, 64, 3, padding=1, groups=2),  # conv5
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),  # 7 -> 3
        nn.Flatten(),
        nn.Linear(3 * 3 * 64, 512),  # fc6
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, 512),  # fc7
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(512, num_classes),  # fc8
    )


NETS = {
    # name: (builder, input side, classes)
    "paper": (paper_net, 224, 1000),
    "small": (small_net, 32, 10),
}
LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


def parametrized_layers(model):
    """[(paper name, module)] of the conv and linear layers, in order."""
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    return list(zip(LAYER_NAMES, layers, strict=True))


def init_weights(model):
    for name, layer in parametrized_layers(model):
        nn.init.normal_(layer.weight, 0.0, WEIGHT_STDDEV)
        nn.init.constant_(layer.bias, 1.0 if name in BIAS_ONE_LAYERS else 0.0)


def param_breakdown(model):
    return {
        name: sum(p.numel() for p in layer.parameters())
        for name, layer in parametrized_layers(model)
    }


def emit(**fields):
    print(json.dumps(fields), flush=True)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(NETS), default="small")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch.set_num_threads (default: os.cpu_count()).")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps before 'ready'.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image_stddev", type=float, default=50.0,
                        help="The random images' spread, about that of mean-subtracted pixels.")
    parser.add_argument("--compile", action="store_true",
                        help="Run the model through torch.compile (default: eager).")
    return parser.parse_args()


def fixed_batch(seed, batch_size, side, num_classes, image_stddev):
    """The same fixed random batch as the TensorFlow side draws (NHWC there), NCHW in
    channels_last memory here."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, image_stddev, (batch_size, side, side, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch_size)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last)
    return images, torch.from_numpy(labels).long()


def serve(train_step):
    """Answers the driver's "time N" lines on stdin until "quit"."""
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        if command[0] == "quit":
            break
        if command[0] == "time" and len(command) == 2 and command[1].isdigit():
            seconds, cpu_seconds = [], []
            for _ in range(int(command[1])):
                begin, cpu_begin = time.perf_counter(), time.process_time()
                loss = train_step()
                seconds.append(time.perf_counter() - begin)
                cpu_seconds.append(time.process_time() - cpu_begin)
            emit(event="times", seconds=seconds, cpu_seconds=cpu_seconds, loss=loss)
        else:
            emit(event="error", message=f"unknown command {line.strip()!r}")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    builder, side, num_classes = NETS[args.net]
    model = builder(num_classes)
    init_weights(model)
    params = sum(p.numel() for p in model.parameters())
    if args.net == "paper":
        assert params == PAPER_PARAMS, f"paper net has {params:,} parameters, not {PAPER_PARAMS:,}"
    model = model.to(memory_format=torch.channels_last).train()
    images, labels = fixed_batch(args.seed, args.batch_size, side, num_classes,
                                 args.image_stddev)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY
    )
    forward = model
    if args.compile:
        try:
            forward = torch.compile(model)
        except Exception as e:  # noqa: BLE001 - reported to the driver
            emit(event="error", message=f"torch.compile failed: {type(e).__name__}: {e}")
            return 3

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(forward(images), labels)
        loss.backward()
        optimizer.step()
        return loss.item()

    start = time.perf_counter()
    loss = None
    try:
        for _ in range(args.warmup):
            loss = train_step()
    except Exception as e:  # noqa: BLE001 - torch.compile fails here when it cannot build
        if not args.compile:
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        emit(event="error", message=f"torch.compile failed: {type(e).__name__}: {message}")
        return 3
    emit(event="ready", torch=torch.__version__, net=args.net, params=params,
         param_breakdown=param_breakdown(model), threads=torch.get_num_threads(),
         batch_size=args.batch_size, compiled=args.compile,
         mkldnn=torch.backends.mkldnn.is_available(), warmup_steps=args.warmup,
         warmup_seconds=time.perf_counter() - start, loss=loss)
    serve(train_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
