"""Standalone check of the CUDA LRN kernels against NumPy, without TensorFlow.

Compiles custom_ops/lrn/lrn_op_gpu.cu.cc (which includes no TensorFlow header)
with nvcc into a shared library, calls its C launchers through ctypes on CuPy
arrays, compares forward and gradient with the float64 NumPy reference of
tools/lrn_reference.py at several shapes and dtypes, and times both kernels at
the paper's shapes against a device-to-device copy of the same tensor.

    python tools/check_cuda_lrn.py              # on a machine with a CUDA GPU and CuPy
    python tools/check_cuda_lrn.py --host       # no GPU: the same per-element code
                                                # run on the CPU (float32), vs NumPy
    python tools/check_cuda_lrn.py --compile-only

Needs nvcc (CUDA_HOME or PATH) and NumPy; the GPU mode needs CuPy.
"""

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import lrn_reference  # noqa: E402

SOURCE = os.path.join(HERE, os.pardir, "custom_ops", "lrn", "lrn_op_gpu.cu.cc")
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3}
# Relative tolerance against the float64 reference, by storage type.
TOLERANCE = {"float16": 4e-3, "bfloat16": 3e-2, "float32": 2e-5, "float64": 1e-12}
PAPER = dict(depth_radius=2, bias=2.0, alpha=1e-4, beta=0.75)
PAPER_SHAPES = {"conv1": (128, 55, 55, 96), "conv2": (128, 27, 27, 256)}


def nvcc_path():
    home = os.environ.get("CUDA_HOME")
    candidate = os.path.join(home, "bin", "nvcc") if home else shutil.which("nvcc")
    if not candidate or not os.path.exists(candidate):
        sys.exit("nvcc not found: set CUDA_HOME or put nvcc on PATH.")
    return candidate


def compile_library(out_dir, archs=("80", "90")):
    """Builds lrn_op_gpu.cu.cc into a shared library and returns its path."""
    output = os.path.join(out_dir, "liblrn_cuda_check.so")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    command = [nvcc_path(), "-x", "cu", "-std=c++17", "-O3", "-shared",
               "-Xcompiler", "-fPIC", *gencode, SOURCE, "-o", output]
    subprocess.run(command, check=True)
    return output


def load_library(path):
    lib = ctypes.CDLL(path)
    i64, i32, dbl, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
    lib.alexnet_lrn_forward.argtypes = [i32, vp, vp, i64, i32, i32, dbl, dbl, dbl, i32, i32, vp]
    lib.alexnet_lrn_backward.argtypes = [i32, vp, vp, vp, i64, i32, i32, dbl, dbl, dbl, i32, i32, i32,
                                         vp]
    lib.alexnet_lrn_forward_host_f32.argtypes = [vp, vp, i64, i32, i32, dbl, dbl, dbl]
    lib.alexnet_lrn_backward_host_f32.argtypes = [vp, vp, vp, i64, i32, i32, dbl, dbl, dbl, i32]
    lib.alexnet_lrn_error_string.restype = ctypes.c_char_p
    return lib


def random_cases(rng, count):
    """Shapes and parameters as the TensorFlow tests draw them, radius > 8 included."""
    for _ in range(count):
        channels = int(rng.integers(1, 40))
        yield dict(
            shape=(int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 6)), channels),
            depth_radius=int(rng.integers(0, channels)),
            bias=float(rng.uniform(0.5, 3.0)),
            alpha=float(rng.uniform(0.0, 2.0)),
            beta=float(rng.choice([0.75, rng.uniform(0.0, 2.0)])),
        )


def relative_error(actual, expected):
    return float(np.max(np.abs(actual - expected)) / max(np.max(np.abs(expected)), 1e-30))


def expected_gradient(dy, x, through_relu, **case):
    """The LRN's gradient, and with through_relu on through the ReLU whose output x is."""
    dx = lrn_reference.lrn_grad(dy, x, **case)
    return dx * (x > 0) if through_relu else dx


def check_host(lib, rng):
    """The kernels' per-element code, compiled for the host, against NumPy (float32).

    Every other case takes the gradient on through the ReLU (through_relu)."""
    worst = 0.0
    for i, case in enumerate(random_cases(rng, 40)):
        shape = case.pop("shape")
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        y, dx = np.empty_like(x), np.empty_like(x)
        pixels, channels = int(np.prod(shape[:-1])), shape[-1]
        args = (case["depth_radius"], case["bias"], case["alpha"], case["beta"])
        through_relu = i % 2
        lib.alexnet_lrn_forward_host_f32(x.ctypes.data, y.ctypes.data, pixels, channels, *args)
        lib.alexnet_lrn_backward_host_f32(dy.ctypes.data, x.ctypes.data, dx.ctypes.data,
                                          pixels, channels, *args, through_relu)
        worst = max(worst, relative_error(y, lrn_reference.lrn(x, **case)),
                    relative_error(dx, expected_gradient(dy, x, through_relu, **case)))
    print(f"host float32: 40 random cases, worst relative error {worst:.2e} "
          f"(tolerance {TOLERANCE['float32']:.0e})")
    return worst <= TOLERANCE["float32"]


def to_cupy(cp, array, dtype):
    if dtype == "bfloat16":
        # CuPy has no bfloat16: round float32 to bfloat16 bits (nearest-even) in a uint16 array.
        bits = array.astype(np.float32).view(np.uint32)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        return cp.asarray(rounded), rounded.astype(np.uint32) << 16
    stored = array.astype(dtype)
    return cp.asarray(stored), stored


def from_cupy(array, dtype):
    host = array.get()
    if dtype == "bfloat16":
        return (host.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return host.astype(np.float64)


def launch_config(cp, count):
    # As TensorFlow's GetGpuLaunchConfig: full occupancy, grid-stride loops.
    device = cp.cuda.Device()
    block = 256
    sms = device.attributes["MultiProcessorCount"]
    per_sm = device.attributes["MaxThreadsPerMultiProcessor"] // block
    return max(1, min(sms * per_sm, (count + block - 1) // block)), block


def check_gpu(lib, rng):
    import cupy as cp

    ok = True
    for dtype in DTYPE_CODES:
        worst = 0.0
        for i, case in enumerate(random_cases(rng, 25)):
            shape = case.pop("shape")
            through_relu = i % 2
            x_dev, x_stored = to_cupy(cp, rng.standard_normal(shape), dtype)
            dy_dev, dy_stored = to_cupy(cp, rng.standard_normal(shape), dtype)
            if dtype == "bfloat16":
                x_ref = x_stored.view(np.float32).astype(np.float64)
                dy_ref = dy_stored.view(np.float32).astype(np.float64)
            else:
                x_ref, dy_ref = x_stored.astype(np.float64), dy_stored.astype(np.float64)
            y_dev, dx_dev = cp.empty_like(x_dev), cp.empty_like(x_dev)
            pixels, channels = int(np.prod(shape[:-1])), shape[-1]
            grid, block = launch_config(cp, pixels * channels)
            params = (case["depth_radius"], case["bias"], case["alpha"], case["beta"])
            launch = (grid, block, None)
            code = DTYPE_CODES[dtype]
            status = lib.alexnet_lrn_forward(code, x_dev.data.ptr, y_dev.data.ptr, pixels, channels,
                                             *params, *launch)
            status |= lib.alexnet_lrn_backward(code, dy_dev.data.ptr, x_dev.data.ptr, dx_dev.data.ptr,
                                               pixels, channels, *params, through_relu, *launch)
            cp.cuda.Device().synchronize()
            if status:
                sys.exit(f"kernel launch failed: {lib.alexnet_lrn_error_string(status).decode()}")
            worst = max(worst,
                        relative_error(from_cupy(y_dev, dtype), lrn_reference.lrn(x_ref, **case)),
                        relative_error(from_cupy(dx_dev, dtype),
                                       expected_gradient(dy_ref, x_ref, through_relu, **case)))
        passed = worst <= TOLERANCE[dtype]
        ok &= passed
        print(f"gpu {dtype:9s}: 25 random cases, worst relative error {worst:.2e} "
              f"(tolerance {TOLERANCE[dtype]:.0e}) {'ok' if passed else 'FAILED'}")
    return ok


def time_gpu(lib, repeats=20):
    import cupy as cp

    def median_ms(fn):
        fn()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, stop))
        return statistics.median(times)

    for name, shape in PAPER_SHAPES.items():
        x = cp.asarray(np.maximum(np.random.default_rng(0).standard_normal(shape, np.float32), 0))
        dy = cp.random.standard_normal(shape, dtype=cp.float32)
        y, dx = cp.empty_like(x), cp.empty_like(x)
        pixels, channels = int(np.prod(shape[:-1])), shape[-1]
        grid, block = launch_config(cp, x.size)
        params = (PAPER["depth_radius"], PAPER["bias"], PAPER["alpha"], PAPER["beta"])
        launch = (grid, block, None)
        copy_ms = median_ms(lambda: y.__setitem__(Ellipsis, x))
        fwd_ms = median_ms(lambda: lib.alexnet_lrn_forward(2, x.data.ptr, y.data.ptr, pixels, channels,
                                                           *params, *launch))
        bwd_ms = median_ms(lambda: lib.alexnet_lrn_backward(2, dy.data.ptr, x.data.ptr, dx.data.ptr,
                                                            pixels, channels, *params, 0, *launch))
        nbytes = x.nbytes
        copy_bw = 2 * nbytes / copy_ms / 1e6  # read + write, GB/s
        fwd_bw = 2 * nbytes / fwd_ms / 1e6    # read x, write y
        bwd_bw = 3 * nbytes / bwd_ms / 1e6    # read dy and x, write dx
        print(f"{name} {list(shape)} float32: copy {copy_ms:.3f} ms ({copy_bw:.0f} GB/s), "
              f"forward {fwd_ms:.3f} ms ({fwd_bw:.0f} GB/s, {fwd_bw / copy_bw:.0%} of copy), "
              f"backward {bwd_ms:.3f} ms ({bwd_bw:.0f} GB/s, {bwd_bw / copy_bw:.0%} of copy; target 60%)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--host", action="store_true", help="run the kernel code on the CPU")
    mode.add_argument("--compile-only", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_library(tmp)
        print(f"compiled {os.path.relpath(SOURCE)} with {nvcc_path()}")
        if args.compile_only:
            return
        lib = load_library(path)
        if args.host:
            ok = check_host(lib, rng)
        else:
            ok = check_gpu(lib, rng)
            time_gpu(lib)
    print("all checks passed" if ok else "CHECK FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
