"""Builds alexnet_tf and its compiled ops against the installed TensorFlow.

The ops (LRN, and the training-crop ops: random draws, JPEG window decode with
resize, mirror, mean and lighting) are one library; its C++ kernels are compiled
with the flags TensorFlow reports (`tf.sysconfig`) and use TensorFlow's own JPEG
decoder and random generators, so TensorFlow must be installed before this
package and the build must see it: install with `pip install --no-build-isolation .`.

Environment:
  ALEXNET_TF_CUDA=auto|1|0  build the CUDA kernels: auto (default) when nvcc is
      found and TensorFlow is a CUDA build; 1 whenever nvcc is found; 0 never.
  ALEXNET_TF_CUDA_ARCHS     semicolon-separated compute capabilities (default
      "80;90"); PTX for the last one is embedded for newer GPUs.
  ALEXNET_TF_MARCH          -march for the CPU kernels (default "native": the
      op is built on the machine that runs it; set e.g. "x86-64-v3" to ship).
  CUDA_HOME                 the CUDA toolkit (default: from nvcc's location).
"""

import concurrent.futures
import os
import shutil
import subprocess
import sys

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

TENSORFLOW_VERSION = "2.21"
OP_SOURCES = "custom_ops/lrn"
IMAGE_OP_SOURCES = "custom_ops/image"


def _tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        sys.exit(
            "alexnet_tf builds its LRN op against the installed TensorFlow, and none was "
            f"found. Install tensorflow-cpu=={TENSORFLOW_VERSION}.* (or "
            f"tensorflow[and-cuda]=={TENSORFLOW_VERSION}.* for GPUs) first, then "
            "`pip install --no-build-isolation .`."
        )
    if not tf.__version__.startswith(TENSORFLOW_VERSION + "."):
        sys.exit(
            f"alexnet_tf needs TensorFlow {TENSORFLOW_VERSION}.*, found {tf.__version__}."
        )
    return tf


def cuda_home():
    """The CUDA toolkit: $CUDA_HOME, else the one nvcc belongs to, else /usr/local/cuda."""
    candidates = [os.environ.get("CUDA_HOME")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for home in filter(None, candidates):
        if os.path.exists(os.path.join(home, "include", "cuda_runtime.h")) and os.path.exists(
            os.path.join(home, "bin", "nvcc")
        ):
            return home
    return None


def cuda_include_shim(build_temp, home):
    """TF's pip headers include CUDA as "third_party/gpus/cuda/include/...";
    a directory with that path linking to the toolkit's headers satisfies them."""
    shim = os.path.join(os.path.abspath(build_temp), "cuda_shim")
    link = os.path.join(shim, "third_party", "gpus", "cuda", "include")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if not os.path.islink(link):
        os.symlink(os.path.join(home, "include"), link)
    return shim


def nvcc_command(source, output, home, shared=False):
    archs = os.environ.get("ALEXNET_TF_CUDA_ARCHS", "80;90").split(";")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    return [
        os.path.join(home, "bin", "nvcc"),
        "-x", "cu", "-std=c++17", "-O3", "-Xcompiler", "-fPIC",
        *gencode,
        "-shared" if shared else "-c",
        source, "-o", output,
    ]


class BuildTensorFlowOps(build_ext):
    """Compiles custom_ops/ with the TensorFlow that is installed."""

    def build_extension(self, ext):
        tf = _tensorflow()
        output = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        os.makedirs(self.build_temp, exist_ok=True)

        mode = os.environ.get("ALEXNET_TF_CUDA", "auto")
        home = cuda_home()
        with_cuda = home is not None and (
            mode == "1" or (mode == "auto" and tf.sysconfig.get_build_info()["is_cuda_build"])
        )
        if mode == "1" and home is None:
            sys.exit("ALEXNET_TF_CUDA=1 but nvcc was not found; set CUDA_HOME or PATH.")

        cxx = os.environ.get("CXX", "g++")
        march = os.environ.get("ALEXNET_TF_MARCH", "native")
        cxxflags = [
            f'-DALEXNET_TF_BUILT_FOR_TENSORFLOW="{tf.__version__}"',
            "-std=c++17", "-O3", "-fPIC", f"-march={march}", "-fno-math-errno",
            "-Wno-deprecated-declarations", "-Wno-interference-size",
            *(f for f in tf.sysconfig.get_compile_flags() if not f.startswith("--std")),
            # TensorFlow's libjpeg-turbo headers, for its JPEG decoder (jpeg_mem.h).
            "-I" + os.path.join(tf.sysconfig.get_include(), "external", "libjpeg_turbo"),
        ]
        sources = [os.path.join(OP_SOURCES, "lrn_op.cc"),
                   os.path.join(IMAGE_OP_SOURCES, "training_crop_ops.cc"),
                   os.path.join(IMAGE_OP_SOURCES, "augmentation_draws_op.cc")]
        # tensorflow::jpeg::Uncompress lives in libtensorflow_cc, which TensorFlow's
        # Python module has loaded already.
        ldflags = ["-l:libtensorflow_cc.so.2", "-Wl,-rpath," + tf.sysconfig.get_lib()]
        compiles = []
        if with_cuda:
            compiles.append(nvcc_command(os.path.join(OP_SOURCES, "lrn_op_gpu.cu.cc"),
                                         os.path.join(self.build_temp, "lrn_op_gpu.o"), home))
            cxxflags += ["-DGOOGLE_CUDA=1", "-I" + cuda_include_shim(self.build_temp, home),
                         "-I" + os.path.join(home, "include")]
            ldflags += ["-L" + os.path.join(home, "lib64"), "-lcudart"]
        for source in sources:
            name = os.path.splitext(os.path.basename(source))[0]
            compiles.append([cxx, "-c", *cxxflags, source,
                             "-o", os.path.join(self.build_temp, name + ".o")])
        # Each source compiles on its own core; the link waits for all of them.
        with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
            list(pool.map(self._run, compiles))
        objects = [command[-1] for command in compiles]
        self._run([cxx, "-shared", *objects, "-o", output,
                   *tf.sysconfig.get_link_flags(), *ldflags])

    def _run(self, command):
        print(" ".join(command))
        subprocess.check_call(command)


setup(
    name="alexnet_tf",
    version="0.1.0",
    description="AlexNet (Krizhevsky, Sutskever and Hinton, 2012) in TensorFlow, "
    "with a compiled LRN op, the paper's data pipeline, training recipe and export.",
    packages=find_packages(include=["alexnet_tf", "alexnet_tf.*"]),
    ext_modules=[Extension("alexnet_tf._ops", sources=[])],
    cmdclass={"build_ext": BuildTensorFlowOps},
    python_requires=">=3.10",
    install_requires=[
        "keras>=3.10,<4",
        "tensorflow-datasets>=4.9.7",
        "numpy>=1.26",
        "absl-py>=2.1",
        "tqdm>=4.66",
        # tf.summary.image and .histogram need it, and TensorFlow 2.21 no longer
        # depends on it.
        "tensorboard>=2.20",
        # tensorflow-datasets imports it for its imagenet2012 builder without declaring it.
        "importlib_resources",
        # The figures of alexnet_tf.predict.
        "matplotlib>=3.8",
    ],
    extras_require={
        # The compiled op is tied to the exact TensorFlow minor version it was
        # built against: keep these in step with TENSORFLOW_VERSION.
        "cpu": [f"tensorflow-cpu=={TENSORFLOW_VERSION}.*"],
        "gpu": [f"tensorflow[and-cuda]=={TENSORFLOW_VERSION}.*"],
        # The tests write and read images with Pillow, independently of TensorFlow, and
        # run the exported LiteRT model with LiteRT's own interpreter.
        "test": ["pytest>=8", "Pillow>=10", "ai-edge-litert>=2.0"],
        # Running an exported model.tflite.
        "litert": ["ai-edge-litert>=2.0"],
    },
    zip_safe=False,
)
