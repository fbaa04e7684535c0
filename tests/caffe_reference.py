"""Caffe's forward pass of bvlc_alexnet in NumPy float64, as ground truth for the tests.

Written from Caffe's layer code and models/bvlc_alexnet/deploy.prototxt (BVLC/caffe
at 9b891540183ddc834a02b2bd81b31afae71b2153), not from alexnet_tf's model, so that
a converted network can be checked against something that shares none of its code:

- ConvolutionLayer: cross-correlation, zero padding, output (H + 2 pad - k) // stride + 1,
  `group` splitting input and output channels into independent halves;
- LRNLayer (ACROSS_CHANNELS): b_c = a_c / (k + alpha / n * sum of a_j^2 over the n
  channels centred on c, clipped to 0..C-1)^beta, over all channels of the blob;
- PoolingLayer (MAX): output ceil((H + 2 pad - k) / stride) + 1, less one when the
  last window would start in the padding; windows clipped at the border;
- InnerProductLayer: y = W x + b on the blob flattened in [C, H, W] order;
- DropoutLayer: the identity at test time (Caffe scales during training).

Inputs are [N, 3, 227, 227] BGR images with the mean already subtracted. Only
`bvlc_alexnet_layers`, which builds CaffeLayer objects for writing test files,
imports alexnet_tf.
"""

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

# (name, stride, pad, group) of each convolution in deploy.prototxt.
ALEXNET_CONVOLUTIONS = (
    ("conv1", 4, 0, 1),
    ("conv2", 1, 2, 2),
    ("conv3", 1, 1, 1),
    ("conv4", 1, 1, 2),
    ("conv5", 1, 1, 2),
)
# norm1 and norm2 of deploy.prototxt; Caffe's default k = 1 is not written there.
ALEXNET_LRN = {"local_size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
ALEXNET_POOL = {"kernel": 3, "stride": 2, "pad": 0}


def bvlc_alexnet_param_shapes(num_classes=1000, fc_width=4096):
    """Layer name -> (weight shape, bias shape) in Caffe's layout.

    60,965,224 parameters for 1000 classes. `fc_width` narrows fc6 and fc7 (4096 in
    bvlc_alexnet) so that tests can write whole-network files of a few megabytes.
    """
    return {
        "conv1": ((96, 3, 11, 11), (96,)),
        "conv2": ((256, 48, 5, 5), (256,)),
        "conv3": ((384, 256, 3, 3), (384,)),
        "conv4": ((384, 192, 3, 3), (384,)),
        "conv5": ((256, 192, 3, 3), (256,)),
        "fc6": ((fc_width, 256 * 6 * 6), (fc_width,)),
        "fc7": ((fc_width, fc_width), (fc_width,)),
        "fc8": ((num_classes, fc_width), (num_classes,)),
    }


def caffe_pool_output_size(size, kernel, stride, pad=0):
    """PoolingLayer::Reshape's output size: ceil rounding, then no window starting in the pad."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def group_conv_nchw(x, weights, bias=None, stride=1, pad=0, groups=1):
    """Caffe's convolution of x [N, C, H, W] by weights [O, C / groups, kh, kw] (+ bias [O])."""
    x = np.asarray(x, np.float64)
    weights = np.asarray(weights, np.float64)
    out_channels, group_channels, kh, kw = weights.shape
    if x.shape[1] != group_channels * groups or out_channels % groups:
        raise ValueError(
            f"input {x.shape} and weights {weights.shape} do not fit {groups} group(s)"
        )
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    # windows[n, c, y, x, i, j] = padded[n, c, y * stride + i, x * stride + j]
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    group_outputs = out_channels // groups
    outputs = []
    for g in range(groups):
        x_g = windows[:, g * group_channels:(g + 1) * group_channels]
        w_g = weights[g * group_outputs:(g + 1) * group_outputs]
        outputs.append(np.tensordot(x_g, w_g, axes=([1, 4, 5], [1, 2, 3])))
    y = np.concatenate(outputs, axis=-1).transpose(0, 3, 1, 2)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)[None, :, None, None]
    return y


def caffe_lrn(x, local_size=5, alpha=1.0, beta=0.75, k=1.0):
    """LRNLayer::CrossChannelForward over axis 1 of x [N, C, ...]; local_size is odd."""
    x = np.asarray(x, np.float64)
    half = (local_size - 1) // 2
    squares = np.pad(x * x, [(0, 0), (half, half)] + [(0, 0)] * (x.ndim - 2))
    window_sums = sum(squares[:, i:i + x.shape[1]] for i in range(local_size))
    return x * (k + alpha / local_size * window_sums) ** -beta


def caffe_max_pool(x, kernel, stride, pad=0):
    """PoolingLayer's MAX over x [N, C, H, W], windows clipped to the image.

    Padding with -inf to the extent the last window reaches gives the clipped windows'
    maxima, since every window Caffe keeps holds at least one image pixel.
    """
    x = np.asarray(x, np.float64)
    out_h = caffe_pool_output_size(x.shape[2], kernel, stride, pad)
    out_w = caffe_pool_output_size(x.shape[3], kernel, stride, pad)
    reach_h = (out_h - 1) * stride + kernel - pad - x.shape[2]
    reach_w = (out_w - 1) * stride + kernel - pad - x.shape[3]
    padded = np.pad(
        x,
        ((0, 0), (0, 0), (pad, max(reach_h, 0)), (pad, max(reach_w, 0))),
        constant_values=-np.inf,
    )
    windows = sliding_window_view(padded, (kernel, kernel), axis=(2, 3))
    return windows[:, :, ::stride, ::stride][:, :, :out_h, :out_w].max(axis=(4, 5))


def relu(x):
    return np.maximum(x, 0.0)


def as_param_dict(params):
    """name -> (weights, bias) from such a dict, (name, W, b) triples or CaffeLayers."""
    if isinstance(params, dict):
        return params
    result = {}
    for item in params:
        if hasattr(item, "blobs"):
            if item.blobs:
                result[item.name] = (item.blobs[0], item.blobs[1])
        else:
            name, weights, bias = item
            result[name] = (weights, bias)
    return result


def alexnet_forward(images, params, return_activations=False):
    """bvlc_alexnet's deploy net from data to fc8: logits [N, num_classes] in float64.

    images: [N, 3, 227, 227] BGR, mean subtracted; params: see `as_param_dict`.
    With return_activations, also a dict of every layer's top (conv tops after ReLU,
    as Caffe's in-place ReLU leaves them).
    """
    params = as_param_dict(params)
    x = np.asarray(images, np.float64)
    activations = {}
    for name, stride, pad, groups in ALEXNET_CONVOLUTIONS:
        weights, bias = params[name]
        x = relu(group_conv_nchw(x, weights, bias, stride=stride, pad=pad, groups=groups))
        activations[name] = x
        if name in ("conv1", "conv2"):
            x = caffe_lrn(x, **ALEXNET_LRN)
            activations["norm" + name[-1]] = x
        if name in ("conv1", "conv2", "conv5"):
            x = caffe_max_pool(x, **ALEXNET_POOL)
            activations["pool" + name[-1]] = x
    x = x.reshape(x.shape[0], -1)
    for name in ("fc6", "fc7", "fc8"):
        weights, bias = params[name]
        x = x @ np.asarray(weights, np.float64).T + np.asarray(bias, np.float64)
        if name != "fc8":
            x = relu(x)
        activations[name] = x
    return (x, activations) if return_activations else x


def _random_blobs(rng, weight_shape, bias_shape, scale):
    """He-scaled float32 weights, so activations keep their size through the ReLUs."""
    fan_in = math.prod(weight_shape[1:])
    weights = rng.standard_normal(weight_shape, dtype=np.float32)
    weights *= np.float32(scale * math.sqrt(2.0 / fan_in))
    bias = (0.1 * rng.standard_normal(bias_shape)).astype(np.float32)
    return [weights, bias]


def bvlc_alexnet_layers(rng, num_classes=1000, scale=1.0, fc_width=4096):
    """bvlc_alexnet.caffemodel's layers (its train net) with random weights, as CaffeLayers.

    data (Data), conv1 ... fc8 with their ReLU, LRN, pooling and dropout layers, and
    loss (SoftmaxWithLoss); every type has a V1 enum, so both formats can be written.
    """
    from alexnet_tf import caffe_proto as cp  # the dataclasses only; see module docstring

    shapes = bvlc_alexnet_param_shapes(num_classes, fc_width)
    layers = [cp.CaffeLayer("data", "Data", [], ["data", "label"])]

    def add(name, layer_type, bottom, top, params=None, blobs=()):
        layers.append(cp.CaffeLayer(name, layer_type, [bottom], [top], list(blobs), params))

    bottom = "data"
    for name, stride, pad, groups in ALEXNET_CONVOLUTIONS:
        number = name[-1]
        conv = cp.ConvolutionParams(
            num_output=shapes[name][0][0], kernel=shapes[name][0][2:],
            stride=(stride, stride), pad=(pad, pad), group=groups,
        )
        add(name, "Convolution", bottom, name, conv, _random_blobs(rng, *shapes[name], scale))
        add("relu" + number, "ReLU", name, name, cp.ReLUParams())
        bottom = name
        if number in "12":
            add("norm" + number, "LRN", bottom, "norm" + number,
                cp.LRNParams(**ALEXNET_LRN, norm_region="across_channels"))
            bottom = "norm" + number
        if number in "125":
            pool = cp.PoolingParams("max", (3, 3), (2, 2))
            add("pool" + number, "Pooling", bottom, "pool" + number, pool)
            bottom = "pool" + number
    for name in ("fc6", "fc7", "fc8"):
        ip = cp.InnerProductParams(num_output=shapes[name][0][0])
        add(name, "InnerProduct", bottom, name, ip, _random_blobs(rng, *shapes[name], scale))
        bottom = name
        if name != "fc8":
            add("relu" + name[-1], "ReLU", name, name, cp.ReLUParams())
            add("drop" + name[-1], "Dropout", name, name, cp.DropoutParams(0.5))
    layers.append(cp.CaffeLayer("loss", "SoftmaxWithLoss", ["fc8", "label"], ["loss"]))
    return layers
