"""The CUDA sources build with nvcc, and the kernels' per-element code is right.

No GPU is needed: the kernels' __host__ __device__ element functions are also
compiled for the host and compared with the NumPy float64 reference. The check
of the kernels themselves on a GPU is tools/check_cuda_lrn.py.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
import check_cuda_lrn  # noqa: E402

HAVE_NVCC = bool(shutil.which("nvcc") or os.environ.get("CUDA_HOME"))
pytestmark = pytest.mark.skipif(not HAVE_NVCC, reason="nvcc not installed")


def test_kernel_element_code_matches_numpy_on_the_host(tmp_path):
    lib = check_cuda_lrn.load_library(check_cuda_lrn.compile_library(str(tmp_path)))
    assert check_cuda_lrn.check_host(lib, np.random.default_rng(1))


def test_tensorflow_library_builds_with_cuda_kernels(tmp_path):
    # The whole GPU build: nvcc for the kernels, the TF kernel registrations
    # under GOOGLE_CUDA through the CUDA include shim, linked into one library.
    env = dict(os.environ, ALEXNET_TF_CUDA="1", ALEXNET_TF_CUDA_ARCHS="90")
    subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext",
         "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "temp")],
        cwd=REPO, env=env, check=True, capture_output=True,
    )
    (library,) = (tmp_path / "lib" / "alexnet_tf").glob("_ops*.so")
    symbols = subprocess.run(["nm", "-D", str(library)], capture_output=True, text=True).stdout
    for launcher in ("alexnet_lrn_forward", "alexnet_lrn_backward"):
        assert f" T {launcher}\n" in symbols
    assert "cudaLaunchKernel" in symbols or "cudaLaunchKernel" in library.read_bytes().decode("latin-1")
