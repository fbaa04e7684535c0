"""The project's compiled TensorFlow ops: the paper's local response normalization
(Section 3.3), and the last steps of its training augmentation fused into one op.

    b[i] = a[i] / (k + alpha * sum_{j = max(0, i - n/2)}^{min(N - 1, i + n/2)} a[j]^2) ** beta

over the channels of one pixel of an NHWC tensor. The paper's values are the
defaults: k = 2, n = 5 (depth_radius = 2), alpha = 1e-4, beta = 0.75. As in
`tf.nn.local_response_normalization`, alpha is not divided by n (Caffe and
PyTorch divide it, which makes their alpha = 1e-4 a different network).

With `alpha_convention="authors_code"` alpha is divided by the window size n, as in
the authors' code, Caffe and PyTorch (see LRN_ALPHA_CONVENTIONS).

`local_response_normalization_reference` is the same formula in plain TensorFlow:
it is the documented meaning of the op and the test oracle.
`local_response_normalization_portable` computes it from standard ops too, at
serving speed: exported SavedModels use it so that they load without this package.

`resize_flip_and_normalize` (with its reference beside it) resizes a decoded crop,
subtracts the mean image, mirrors it and adds the PCA lighting vector in one pass;
`decode_jpeg_crop_flip_and_normalize` does the same from a JPEG's bytes, decoding
only the crop's part of it, and `augmentation_draws` makes an image's random choices
in one op. The input pipeline uses them for every training image.
"""

import functools
import glob
import os
import re

import numpy as np
import tensorflow as tf

from alexnet_tf.settings import (  # noqa: F401
    PAPER_LRN_DEPTH_RADIUS, PAPER_LRN_BIAS, PAPER_LRN_ALPHA, PAPER_LRN_BETA,
    LRN_PAPER_TEXT, LRN_AUTHORS_CODE, LRN_ALPHA_CONVENTIONS,
)

SUPPORTED_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

_LIBRARY_DIR = os.path.dirname(os.path.abspath(__file__))
_LIBRARY_GLOB = "_ops*.so"
# Written into the library by setup.py (see alexnet_tf_build_stamp in lrn_op.cc).
_BUILD_STAMP = re.compile(rb"alexnet_tf-built-for-tensorflow=([^;\x00]*);")
# The ops' interface (inputs and attributes) this package's Python code calls; the
# library states the version it was built from (lrn_op.cc).
OPS_VERSION = 2
_OPS_VERSION_STAMP = re.compile(rb"alexnet_tf-ops-version=(\d+);")


class OpLibraryError(RuntimeError):
    """The compiled op library is missing or does not match the installed TensorFlow."""


def _rebuild_hint():
    return (
        "Rebuild it against the installed TensorFlow from the repository root with "
        "`python -m pip install --no-build-isolation -e .` "
        "(or `python setup.py build_ext --inplace`)."
    )


@functools.lru_cache(maxsize=None)
def load_library():
    """Loads the compiled op library once, checking it was built for this TensorFlow."""
    candidates = sorted(glob.glob(os.path.join(_LIBRARY_DIR, _LIBRARY_GLOB)))
    if not candidates:
        raise OpLibraryError(
            f"The compiled op library ({_LIBRARY_GLOB}) was not found in {_LIBRARY_DIR}. "
            + _rebuild_hint()
        )
    path = candidates[0]
    with open(path, "rb") as f:
        contents = f.read()
    stamp = _BUILD_STAMP.search(contents)
    built_for = stamp.group(1).decode() if stamp else "an unknown version"
    # A C++ op built against other TensorFlow headers can crash at load or at run
    # time (the framework's ABI is not stable across versions), so refuse first.
    if built_for != tf.__version__:
        raise OpLibraryError(
            f"{path} was built against TensorFlow {built_for}, but TensorFlow "
            f"{tf.__version__} is installed. " + _rebuild_hint()
        )
    version = _OPS_VERSION_STAMP.search(contents)
    if version is None or int(version.group(1)) != OPS_VERSION:
        built_from = f"version {version.group(1).decode()}" if version else "an older version"
        raise OpLibraryError(
            f"{path} was built from {built_from} of the ops' sources; this package "
            f"calls version {OPS_VERSION}. " + _rebuild_hint()
        )
    try:
        return tf.load_op_library(path)
    except (tf.errors.NotFoundError, OSError) as e:
        raise OpLibraryError(
            f"{path} could not be loaded into TensorFlow {tf.__version__} ({e}). "
            + _rebuild_hint()
        ) from e


def _invalid_argument(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def alpha_per_term(alpha, depth_radius, alpha_convention=LRN_PAPER_TEXT):
    """The factor of each squared activation in the window under a convention."""
    if alpha_convention not in LRN_ALPHA_CONVENTIONS:
        raise _invalid_argument(
            f"local_response_normalization: alpha_convention must be one of "
            f"{LRN_ALPHA_CONVENTIONS}, got {alpha_convention!r}.")
    if alpha_convention == LRN_AUTHORS_CODE:
        return alpha / (2 * int(depth_radius) + 1)
    return alpha


def _check_arguments(x, depth_radius, bias, alpha, beta):
    if x.dtype not in SUPPORTED_DTYPES:
        raise _invalid_argument(
            f"local_response_normalization: input dtype {x.dtype.name} is not supported; "
            f"expected one of {[d.name for d in SUPPORTED_DTYPES]}."
        )
    if x.shape.rank is not None and x.shape.rank != 4:
        raise _invalid_argument(
            f"local_response_normalization: input must be rank 4 (NHWC), got shape {x.shape}."
        )
    if int(depth_radius) != depth_radius or depth_radius < 0:
        raise _invalid_argument(
            f"local_response_normalization: depth_radius must be a non-negative integer, "
            f"got {depth_radius}."
        )
    if not bias > 0:
        raise _invalid_argument(f"local_response_normalization: bias must be > 0, got {bias}.")
    if not alpha >= 0:
        raise _invalid_argument(f"local_response_normalization: alpha must be >= 0, got {alpha}.")
    if not beta >= 0:
        raise _invalid_argument(f"local_response_normalization: beta must be >= 0, got {beta}.")
    channels = x.shape[-1] if x.shape.rank == 4 else None
    if channels is not None and depth_radius >= channels:
        raise _invalid_argument(
            f"local_response_normalization: depth_radius {depth_radius} is wider than the "
            f"{channels} channels of input shape {x.shape}; it must be < {channels}."
        )


def local_response_normalization(
    input,
    depth_radius=PAPER_LRN_DEPTH_RADIUS,
    bias=PAPER_LRN_BIAS,
    alpha=PAPER_LRN_ALPHA,
    beta=PAPER_LRN_BETA,
    name=None,
    alpha_convention=LRN_PAPER_TEXT,
):
    """Cross-channel LRN of an NHWC tensor, the compiled kernel with its gradient.

    Same signature and meaning as `tf.nn.local_response_normalization`, with the
    paper's constants as defaults, and `alpha_convention` ("paper_text": alpha per
    term; "authors_code": alpha / n per term). float16 and bfloat16 inputs are
    computed with float32 accumulation; float64 is supported for gradient checks. As
    in TensorFlow's op, bias, alpha and beta are float32 attributes.

    Non-finite values follow the formula in IEEE arithmetic, window by window, as
    `local_response_normalization_reference` does: a NaN makes the outputs of the
    windows that hold it NaN and no others; an infinite input, or a square past the
    compute dtype's largest value, makes its windows' norm infinite and their outputs
    0 (x * inf^-beta), NaN for an infinite input itself (inf * 0).

    Raises:
      tf.errors.InvalidArgumentError: for a non-float dtype, a rank other than 4,
        depth_radius < 0 or >= channels, bias <= 0 (below twice float32's smallest
        normal value in the compiled op), alpha < 0 or beta < 0.
      OpLibraryError: if the compiled library is missing or was built for another
        TensorFlow version.
    """
    with tf.name_scope(name or "LocalResponseNormalization"):
        x = tf.convert_to_tensor(input)
        _check_arguments(x, depth_radius, bias, alpha, beta)
        alpha = alpha_per_term(alpha, depth_radius, alpha_convention)
        return load_library().alexnet_tf_local_response_norm(
            x, depth_radius=int(depth_radius), bias=float(bias), alpha=float(alpha),
            beta=float(beta)
        )


def _lrn_gradient(op, grad, through_relu=False):
    """The gradient op of `op` (an LRN or an LRN gradient: the same attributes)."""
    return load_library().alexnet_tf_local_response_norm_grad(
        grad,
        op.inputs[0] if op.type == "AlexnetTf>LocalResponseNorm" else op.inputs[1],
        depth_radius=op.get_attr("depth_radius"),
        bias=op.get_attr("bias"),
        alpha=op.get_attr("alpha"),
        beta=op.get_attr("beta"),
        through_relu=through_relu,
    )


@tf.RegisterGradient("AlexnetTf>LocalResponseNorm")
def _local_response_norm_grad(op, grad):
    return _lrn_gradient(op, grad)


def _skip_identities(tensor):
    """The tensor that `tensor` is, past Identity and IdentityN ops."""
    while tensor.op.type in ("Identity", "IdentityN"):
        if tensor.op.type == "IdentityN":
            tensor = tensor.op.inputs[tensor.value_index]
        else:
            tensor = tensor.op.inputs[0]
    return tensor


def relu_gradient_through_lrn(gradient, relu_output):
    """ReluGrad(gradient, relu_output) computed by the LRN gradient that made
    `gradient`, in its own pass, or None where the graph is not that.

    A ReLU's gradient reads and writes a whole tensor; where that tensor is an LRN's
    input (conv1's and conv2's outputs), the LRN's gradient op can multiply each of
    its outputs by (relu_output > 0) as it writes them instead (`through_relu`;
    BENCHMARKS.md times the training step with and without it).
    This applies only in a graph, and only when `gradient` is the output of one of
    this op's gradients whose LRN read `relu_output` itself, through identities
    alone (a placed tower's custom gradient). It adds an op beside the LRN's own
    gradient, which the graph then prunes unless something else reads it. The
    values are ReluGrad's: the stored gradient times 1 or 0.
    """
    if tf.executing_eagerly():
        return None
    op = gradient.op
    if op.type != "AlexnetTf>LocalResponseNormGrad" or op.get_attr("through_relu"):
        return None
    source = _skip_identities(op.inputs[1])
    if source.graph is not relu_output.graph or source.name != relu_output.name:
        return None
    return _lrn_gradient(op, op.inputs[0], through_relu=True)


def local_response_normalization_reference(
    input,
    depth_radius=PAPER_LRN_DEPTH_RADIUS,
    bias=PAPER_LRN_BIAS,
    alpha=PAPER_LRN_ALPHA,
    beta=PAPER_LRN_BETA,
    name=None,
    alpha_convention=LRN_PAPER_TEXT,
):
    """The same LRN from standard TensorFlow ops only (a windowed sum over channels).

    Numerically this is the formula in the module docstring, computed in float32
    for float16/bfloat16 inputs like the compiled op, window by window as it is
    written (each window's slices summed, then `tf.pow`): the test oracle.
    """
    with tf.name_scope(name or "LocalResponseNormalizationReference"):
        x = tf.convert_to_tensor(input)
        _check_arguments(x, depth_radius, bias, alpha, beta)
        alpha = alpha_per_term(alpha, depth_radius, alpha_convention)
        compute_dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
        xc = tf.cast(x, compute_dtype)
        squares = tf.square(xc)
        padded = tf.pad(squares, [[0, 0], [0, 0], [0, 0], [depth_radius, depth_radius]])
        channels = tf.shape(x)[-1]
        window_sum = tf.add_n(
            [padded[..., d : d + channels] for d in range(2 * depth_radius + 1)]
        )
        scale = tf.pow(bias + alpha * window_sum, -beta)
        return tf.cast(xc * scale, x.dtype)


def local_response_normalization_portable(
    input,
    depth_radius=PAPER_LRN_DEPTH_RADIUS,
    bias=PAPER_LRN_BIAS,
    alpha=PAPER_LRN_ALPHA,
    beta=PAPER_LRN_BETA,
    name=None,
    alpha_convention=LRN_PAPER_TEXT,
):
    """The same LRN from standard TensorFlow ops, at serving speed: what exported
    models compute, so that they load without this package.

    The window sums are one 1x1 convolution of the squares with a band matrix (alpha
    where |i - j| <= depth_radius, else 0) and the bias added to it, which oneDNN runs
    as one fused op; beta = 0.75 is rsqrt(n) * sqrt(rsqrt(n)). The reference's slices
    and `tf.pow` took a third of the ops' time in a served batch (BENCHMARKS.md,
    "Serving"). Where the window sums are finite the values are the reference's to
    float32 rounding. A square that is not finite also makes NaN of its pixel's outputs
    outside its windows (the band's zeros times it), where the op and the reference
    confine it to its windows. Inputs whose channels are not known when traced take
    the reference.
    """
    x = tf.convert_to_tensor(input)
    channels = x.shape[-1] if x.shape.rank == 4 else None
    if channels is None:
        return local_response_normalization_reference(
            x, depth_radius, bias, alpha, beta, name, alpha_convention)
    with tf.name_scope(name or "LocalResponseNormalization"):
        _check_arguments(x, depth_radius, bias, alpha, beta)
        alpha = alpha_per_term(alpha, depth_radius, alpha_convention)
        compute_dtype = tf.float64 if x.dtype == tf.float64 else tf.float32
        xc = tf.cast(x, compute_dtype)
        index = np.arange(channels)
        in_window = np.abs(index[:, None] - index[None, :]) <= int(depth_radius)
        band = tf.constant(np.where(in_window, alpha, 0.0)[None, None], compute_dtype)
        norm = tf.nn.bias_add(tf.nn.conv2d(tf.square(xc), band, 1, "VALID"),
                              tf.constant(np.full(channels, bias), compute_dtype))
        if beta == 0.75:
            root = tf.math.rsqrt(norm)
            scale = root * tf.sqrt(root)
        else:
            scale = tf.pow(norm, -beta)
        return tf.cast(xc * scale, x.dtype)


def _crop_arguments(mean_image, mean_offset, flip, rgb):
    return (
        tf.convert_to_tensor(mean_image, tf.float32),
        tf.cast(mean_offset, tf.int32),
        tf.convert_to_tensor(flip, tf.bool),
        tf.convert_to_tensor(rgb, tf.float32),
    )


def resize_flip_and_normalize(region, size, mean_image, mean_offset, flip, rgb, name=None):
    """One training crop from the decoded region it covers, in a single pass.

    Args:
      region: uint8 [h, w, 3], the part of the image that the crop covers.
      size: the crop's side; the region is resized to [size, size] (bilinear,
        half-pixel centres, as `tf.image.resize`).
      mean_image: float32 [H, W, 3], the dataset's mean image.
      mean_offset: int32 [2], the crop's (y, x) offset in mean_image.
      flip: bool scalar, mirror the crop left-right.
      rgb: float32 [3], added to every pixel (the PCA lighting vector).

    Returns:
      float32 [size, size, 3]: the resized region less the mean image's window at
      mean_offset, mirrored if flip, plus rgb (tests/references.py does the same in
      plain TensorFlow, one op a step).

    Raises:
      tf.errors.InvalidArgumentError: for a region that is not a non-empty
        [h, w, 3] uint8 image, a crop that does not fit in mean_image (the bounds are
        checked in 64 bits, so no offset wraps around them), or an rgb that is not
        finite.
    """
    with tf.name_scope(name or "ResizeFlipAndNormalize"):
        return load_library().alexnet_tf_resize_flip_and_normalize(
            tf.convert_to_tensor(region, tf.uint8),
            *_crop_arguments(mean_image, mean_offset, flip, rgb),
            size=int(size),
        )


def decode_jpeg_crop_flip_and_normalize(
    contents, size, mean_image, mean_offset, flip, rgb, dct_method="", name=None
):
    """One training crop straight from a JPEG's bytes, in a single op.

    The crop is the one at mean_offset (y, x) in the S x S rescale of the image's
    central square, S being the side of the square mean_image; only the part of the
    JPEG it covers is decoded (TensorFlow's own decoder), into scratch memory, and
    then resized, mean-subtracted, mirrored and lit as by `resize_flip_and_normalize`.

    Args:
      contents: string scalar, the JPEG.
      size, mean_image, mean_offset, flip, rgb: as `resize_flip_and_normalize`;
        mean_image must be square.
      dct_method: as `tf.io.decode_jpeg`: "INTEGER_FAST", "INTEGER_ACCURATE", or ""
        for TensorFlow's default (the fast one); another name is refused.

    Returns:
      float32 [size, size, 3], equal to `resize_flip_and_normalize` of
      `preprocessing.decode_crop_region(contents, S, size, y, x, dct_method)`.

    Raises:
      tf.errors.InvalidArgumentError: for bytes that are not a decodable JPEG, or
        the arguments `resize_flip_and_normalize` rejects.
    """
    with tf.name_scope(name or "DecodeJpegCropFlipAndNormalize"):
        return load_library().alexnet_tf_decode_jpeg_crop_flip_and_normalize(
            tf.convert_to_tensor(contents, tf.string),
            *_crop_arguments(mean_image, mean_offset, flip, rgb),
            size=int(size),
            dct_method=dct_method,
        )


def augmentation_draws(index, lighting_basis, seed, image_size, crop_size, lighting_stddev):
    """The random choices of the index-th training image of a stream seeded by seed.

    One op with the values of `preprocessing.random_crop_window(image_size,
    image_size, crop_size, crop_seed)` and `preprocessing.pca_lighting_rgb` on
    `lighting_basis`, where (crop_seed, lighting_seed) =
    `preprocessing.augmentation_seeds(seed, index)`; the same TensorFlow generator
    draws them.

    Returns:
      (offset, flip, rgb): int32 [2] (y, x) of the crop in the image_size square,
      bool scalar, float32 [3] lighting vector (a @ lighting_basis, a_i ~ N(0,
      lighting_stddev)).

    Raises:
      tf.errors.InvalidArgumentError: for an index outside [0, 2^62) (its seeds 2i and
        2i + 1 would overflow), a lighting_stddev or lighting_basis that is not finite,
        a negative lighting_stddev, or a crop_size larger than image_size.
    """
    return load_library().alexnet_tf_augmentation_draws(
        tf.cast(index, tf.int64),
        tf.convert_to_tensor(lighting_basis, tf.float32),
        seed=int(seed),
        image_size=int(image_size),
        crop_size=int(crop_size),
        lighting_stddev=float(lighting_stddev),
    )
