"""Reading and writing Caffe's files (alexnet_tf.caffe_proto) and the NumPy reference.

The hand-assembled files below are built from the protobuf wire format and the field
numbers of BVLC/caffe src/caffe/proto/caffe.proto (commit
9b891540183ddc834a02b2bd81b31afae71b2153), each quoted next to its use, and not with
caffe_proto's own schema, so that a wrong field number in the schema fails here.
"""

import math
import struct
import zlib

import numpy as np
import pytest

import caffe_reference as ref
import caffe_writer
from caffe_writer import varint
from alexnet_tf import caffe_proto

# Wire types of the protobuf encoding.
VARINT, FIXED32 = 0, 5


def key(field, wire):
    return varint(field << 3 | wire)


def length_delimited(field, payload):
    return key(field, 2) + varint(len(payload)) + payload


def string(field, text):
    return length_delimited(field, text.encode())


def uint(field, n):
    return key(field, VARINT) + varint(n)


def float32(field, value):
    return key(field, FIXED32) + struct.pack("<f", value)


def packed_floats(field, values):
    return length_delimited(field, struct.pack(f"<{len(values)}f", *values))


def packed_varints(field, values):
    return length_delimited(field, b"".join(varint(v) for v in values))


def new_blob(shape, values):
    """BlobProto with a shape: `optional BlobShape shape = 7;`,
    `repeated int64 dim = 1 [packed = true];`, `repeated float data = 5 [packed = true];`."""
    return length_delimited(7, packed_varints(1, shape)) + packed_floats(5, values)


def v1_blob(dims, values):
    """BlobProto with the 4-D fields: `optional int32 num = 1`, `channels = 2`,
    `height = 3`, `width = 4`, and `repeated float data = 5 [packed = true];`."""
    return b"".join(uint(i + 1, d) for i, d in enumerate(dims)) + packed_floats(5, values)


def new_layer(name, layer_type, bottom, top, body=b""):
    """LayerParameter: `optional string name = 1;`, `optional string type = 2;`,
    `repeated string bottom = 3;`, `repeated string top = 4;`, then body."""
    bottoms = string(3, bottom) if bottom is not None else b""
    head = string(1, name) + string(2, layer_type) + bottoms + string(4, top)
    # NetParameter: `repeated LayerParameter layer = 100;`
    return length_delimited(100, head + body)


def v1_layer(name, type_number, bottom, top, body=b""):
    """V1LayerParameter: `repeated string bottom = 2;`, `repeated string top = 3;`,
    `optional string name = 4;`, `optional LayerType type = 5;`, then body."""
    head = string(2, bottom) + string(3, top) + string(4, name) + uint(5, type_number)
    # NetParameter: `repeated V1LayerParameter layers = 2;`
    return length_delimited(2, head + body)


CONV_WEIGHTS = np.arange(16, dtype=np.float32).reshape(2, 2, 2, 2) / 8 - 1
CONV_BIAS = np.array([0.5, -0.25], np.float32)
FC_WEIGHTS = np.arange(6, dtype=np.float32).reshape(3, 2) - 2.5
FC_BIAS = np.array([1.0, 2.0, 3.0], np.float32)


def new_format_net():
    """A NetParameter (`optional string name = 1;`) of "layer"s, one of each kind AlexNet has."""
    conv_param = (
        uint(1, 2)  # ConvolutionParameter: optional uint32 num_output = 1;
        + uint(3, 1)  # repeated uint32 pad = 3;
        + uint(4, 2)  # repeated uint32 kernel_size = 4;
        + uint(6, 3)  # repeated uint32 stride = 6;
        + uint(5, 2)  # optional uint32 group = 5 [default = 1];
        + length_delimited(7, string(1, "gaussian"))  # weight_filler = 7: not in the subset
        + uint(15, 2)  # optional Engine engine = 15: not in the subset
    )
    conv = new_layer(
        "conv1", "Convolution", "data", "conv1",
        length_delimited(6, float32(3, 1.0))  # repeated ParamSpec param = 6: not in the subset
        + length_delimited(7, new_blob([2, 2, 2, 2], CONV_WEIGHTS.ravel()))  # blobs = 7
        + length_delimited(7, new_blob([2], CONV_BIAS))
        + length_delimited(106, conv_param),  # ConvolutionParameter convolution_param = 106;
    )
    lrn_param = (
        uint(1, 3)  # LRNParameter: optional uint32 local_size = 1 [default = 5];
        + float32(2, 1e-4)  # optional float alpha = 2 [default = 1.];
        + float32(3, 0.5)  # optional float beta = 3 [default = 0.75];
        + float32(5, 2.0)  # optional float k = 5 [default = 1.];
    )
    pool_param = (
        uint(1, 1)  # PoolingParameter: optional PoolMethod pool = 1; AVE = 1;
        + uint(2, 3)  # optional uint32 kernel_size = 2;
        + uint(3, 2)  # optional uint32 stride = 3 [default = 1];
        + uint(4, 1)  # optional uint32 pad = 4 [default = 0];
    )
    fc_param = uint(1, 3) + uint(2, 1)  # InnerProductParameter: num_output = 1; bias_term = 2
    # InputParameter: `repeated BlobShape shape = 1;` in `input_param = 143;`
    input_shape = length_delimited(1, packed_varints(1, [10, 4, 9, 9]))
    return (
        string(1, "tiny")
        + new_layer("data", "Input", None, "data", length_delimited(143, input_shape))
        + conv
        + new_layer("relu1", "ReLU", "conv1", "conv1")
        + new_layer("norm1", "LRN", "conv1", "norm1", length_delimited(118, lrn_param))
        + new_layer("pool1", "Pooling", "norm1", "pool1", length_delimited(121, pool_param))
        + new_layer(
            "fc", "InnerProduct", "pool1", "fc",
            length_delimited(7, new_blob([3, 2], FC_WEIGHTS.ravel()))
            + length_delimited(7, new_blob([3], FC_BIAS))
            + length_delimited(117, fc_param),  # inner_product_param = 117;
        )
        # DropoutParameter dropout_param = 108; optional float dropout_ratio = 1;
        + new_layer("drop", "Dropout", "fc", "fc", length_delimited(108, float32(1, 0.25)))
    )


# V1LayerParameter.LayerType values in caffe.proto.
CONVOLUTION, DROPOUT, INNER_PRODUCT, LRN, POOLING, RELU = 4, 6, 14, 15, 17, 18


def v1_format_net():
    """The same kinds of layer as V1LayerParameters, blobs 4-D as Caffe 2014 wrote them."""
    conv_param = uint(1, 2) + uint(4, 2) + uint(6, 3) + uint(3, 1) + uint(5, 2)
    conv = v1_layer(
        "conv1", CONVOLUTION, "data", "conv1",
        length_delimited(6, v1_blob([2, 2, 2, 2], CONV_WEIGHTS.ravel()))  # blobs = 6;
        + length_delimited(6, v1_blob([1, 1, 1, 2], CONV_BIAS))
        + float32(7, 1.0)  # repeated float blobs_lr = 7: not in the subset
        + length_delimited(10, conv_param),  # convolution_param = 10;
    )
    lrn_param = uint(1, 3) + float32(2, 1e-4) + float32(3, 0.5) + float32(5, 2.0)
    pool_param = uint(1, 1) + uint(2, 3) + uint(3, 2) + uint(4, 1)
    fc = v1_layer(
        "fc", INNER_PRODUCT, "pool1", "fc",
        length_delimited(6, v1_blob([1, 1, 3, 2], FC_WEIGHTS.ravel()))
        + length_delimited(6, v1_blob([1, 1, 1, 3], FC_BIAS))
        + length_delimited(17, uint(1, 3) + uint(2, 1)),  # inner_product_param = 17;
    )
    return (
        string(1, "tiny")
        + string(3, "data")  # NetParameter: `repeated string input = 3;`
        + b"".join(uint(4, d) for d in [10, 4, 9, 9])  # `repeated int32 input_dim = 4;`
        + conv
        + v1_layer("relu1", RELU, "conv1", "conv1")
        + v1_layer("norm1", LRN, "conv1", "norm1", length_delimited(18, lrn_param))  # lrn = 18
        + v1_layer("pool1", POOLING, "norm1", "pool1", length_delimited(19, pool_param))  # 19
        + fc
        + v1_layer("drop", DROPOUT, "fc", "fc", length_delimited(12, float32(1, 0.25)))  # 12
    )


@pytest.mark.parametrize("fmt, payload", [("layer", new_format_net), ("layers", v1_format_net)])
def test_hand_assembled_caffemodel(tmp_path, fmt, payload):
    path = tmp_path / "tiny.caffemodel"
    path.write_bytes(payload())
    net = caffe_proto.read_caffemodel(path)

    assert (net.name, net.format) == ("tiny", fmt)
    assert net.inputs == {"data": (10, 4, 9, 9)}
    if fmt == "layer":
        assert net.layers[0].params == caffe_proto.InputParams(((10, 4, 9, 9),))
    layers = net.layers[1:] if fmt == "layer" else net.layers
    assert [(l.name, l.type, l.bottoms, l.tops) for l in layers] == [
        ("conv1", "Convolution", ["data"], ["conv1"]),
        ("relu1", "ReLU", ["conv1"], ["conv1"]),
        ("norm1", "LRN", ["conv1"], ["norm1"]),
        ("pool1", "Pooling", ["norm1"], ["pool1"]),
        ("fc", "InnerProduct", ["pool1"], ["fc"]),
        ("drop", "Dropout", ["fc"], ["fc"]),
    ]
    conv, fc = net.layer("conv1"), net.layer("fc")
    assert (len(conv.blobs), len(fc.blobs)) == (2, 2)
    for got, want in zip(conv.blobs + fc.blobs, [CONV_WEIGHTS, CONV_BIAS, FC_WEIGHTS, FC_BIAS]):
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert conv.params == caffe_proto.ConvolutionParams(
        num_output=2, kernel=(2, 2), stride=(3, 3), pad=(1, 1), group=2, bias_term=True
    )
    assert net.layer("norm1").params == caffe_proto.LRNParams(
        local_size=3, alpha=1e-4, beta=0.5, k=2.0, norm_region="across_channels"
    )
    assert net.layer("pool1").params == caffe_proto.PoolingParams(
        method="ave", kernel=(3, 3), stride=(2, 2), pad=(1, 1)
    )
    assert fc.params == caffe_proto.InnerProductParams(num_output=3, bias_term=True)
    assert net.layer("drop").params == caffe_proto.DropoutParams(0.25)
    with pytest.raises(KeyError):
        net.layer("fc9")


def test_caffe_defaults_when_fields_are_absent(tmp_path):
    path = tmp_path / "defaults.caffemodel"
    path.write_bytes(
        new_layer("conv", "Convolution", "x", "y", length_delimited(106, uint(1, 4) + uint(4, 3)))
        + new_layer("norm", "LRN", "y", "z")
        + new_layer("pool", "Pooling", "z", "p", length_delimited(121, uint(2, 2)))
        + new_layer("drop", "Dropout", "p", "p")
    )
    net = caffe_proto.read_caffemodel(path)
    assert net.layer("conv").params == caffe_proto.ConvolutionParams(
        num_output=4, kernel=(3, 3), stride=(1, 1), pad=(0, 0), group=1, bias_term=True
    )
    assert net.layer("norm").params == caffe_proto.LRNParams(5, 1.0, 0.75, 1.0, "across_channels")
    assert net.layer("pool").params == caffe_proto.PoolingParams("max", (2, 2), (1, 1), (0, 0))
    assert net.layer("drop").params == caffe_proto.DropoutParams(0.5)


@pytest.mark.parametrize("fmt", ["layer", "layers"])
def test_whole_alexnet_round_trip(tmp_path, fmt):
    layers = ref.bvlc_alexnet_layers(np.random.default_rng(1), num_classes=7, fc_width=32)
    path = tmp_path / f"alexnet_{fmt}.caffemodel"
    caffe_writer.write_caffemodel(path, layers, fmt=fmt, name="AlexNet")
    net = caffe_proto.read_caffemodel(path)

    assert (net.name, net.format) == ("AlexNet", fmt)
    assert len(net.layers) == len(layers) == 24
    for written, read in zip(layers, net.layers):
        assert (read.name, read.type, read.bottoms, read.tops, read.params) == (
            written.name, written.type, written.bottoms, written.tops, written.params
        )
        assert len(read.blobs) == len(written.blobs)
        for got, want in zip(read.blobs, written.blobs):
            assert got.dtype == np.float32 and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


def test_v1_writer_rejects_types_without_a_v1_enum(tmp_path):
    layer = caffe_proto.CaffeLayer("data", "Input", [], ["data"], [], caffe_proto.InputParams())
    with pytest.raises(ValueError, match="no V1 equivalent"):
        caffe_writer.write_caffemodel(tmp_path / "x.caffemodel", [layer], fmt="layers")


def test_mean_binaryproto(tmp_path):
    mean = np.random.default_rng(2).uniform(0, 255, (3, 4, 5)).astype(np.float32)
    written = tmp_path / "written.binaryproto"
    caffe_writer.write_mean_binaryproto(written, mean)
    np.testing.assert_array_equal(caffe_proto.read_mean_binaryproto(written), mean)

    values = np.arange(12, dtype=np.float32)
    legacy = tmp_path / "legacy.binaryproto"
    legacy.write_bytes(v1_blob([1, 3, 2, 2], values))
    shaped = tmp_path / "shaped.binaryproto"
    shaped.write_bytes(new_blob([3, 2, 2], values))
    for path in (legacy, shaped):
        got = caffe_proto.read_mean_binaryproto(path)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, values.reshape(3, 2, 2))


DEPLOY_PROTOTXT = """
name: "AlexNet"
layer {
  name: "data"
  type: "Input"
  top: "data"
  input_param { shape: { dim: 10 dim: 3 dim: 227 dim: 227 } }
}
layer {
  name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  param { lr_mult: 1 decay_mult: 1 }
  convolution_param {
    num_output: 96 kernel_size: 11 stride: 4
    weight_filler { type: "gaussian" std: 0.01 }
  }
}
layer {
  name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"
  lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }
}
layer {
  name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 }
}
layer { name: "prob" type: "Softmax" bottom: "fc8" top: "prob" }
"""

V1_PROTOTXT = """
name: "CaffeNet"
input: "data"
input_dim: 10
input_dim: 3
input_dim: 227
input_dim: 227
layers {
  name: "conv2" type: CONVOLUTION bottom: "pool1" top: "conv2"
  blobs_lr: 1 weight_decay: 1
  convolution_param { num_output: 256 pad: 2 kernel_size: 5 group: 2 }
}
layers { name: "fc8" type: INNER_PRODUCT bottom: "fc7" top: "fc8"
  inner_product_param { num_output: 1000 } }
"""


def test_read_prototxt(tmp_path):
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(DEPLOY_PROTOTXT)
    net = caffe_proto.read_prototxt(deploy)
    assert (net.name, net.format) == ("AlexNet", "layer")
    assert [l.type for l in net.layers] == ["Input", "Convolution", "LRN", "Pooling", "Softmax"]
    assert net.inputs == {"data": (10, 3, 227, 227)}
    assert net.layer("conv1").params == caffe_proto.ConvolutionParams(96, (11, 11), (4, 4))
    assert net.layer("norm1").params == caffe_proto.LRNParams(5, 1e-4, 0.75, 1.0)
    assert net.layer("pool1").params == caffe_proto.PoolingParams("max", (3, 3), (2, 2))
    assert all(not l.blobs for l in net.layers)

    v1 = tmp_path / "v1.prototxt"
    v1.write_text(V1_PROTOTXT)
    net = caffe_proto.read_prototxt(v1)
    assert (net.format, net.inputs) == ("layers", {"data": (10, 3, 227, 227)})
    assert [l.type for l in net.layers] == ["Convolution", "InnerProduct"]
    assert net.layer("conv2").params == caffe_proto.ConvolutionParams(
        256, (5, 5), pad=(2, 2), group=2
    )
    assert net.layer("fc8").params == caffe_proto.InnerProductParams(1000)


def tiny_png():
    """A 1x1 grey PNG: signature, IHDR, IDAT, IEND chunks."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data)
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")
    )


def assert_one_line_error(reader, path, *fragments):
    with pytest.raises(caffe_proto.CaffeFormatError) as error:
        reader(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_bad_caffemodels(tmp_path):
    read = caffe_proto.read_caffemodel
    assert_one_line_error(read, tmp_path / "missing.caffemodel", "no such file")
    for name, payload in [
        ("random.caffemodel", np.random.default_rng(3).bytes(4096)),
        ("image.png", tiny_png()),
        ("deploy.prototxt", DEPLOY_PROTOTXT.encode()),
        ("empty.caffemodel", b""),
    ]:
        (tmp_path / name).write_bytes(payload)
        assert_one_line_error(read, tmp_path / name)

    layers = ref.bvlc_alexnet_layers(np.random.default_rng(4), num_classes=5, fc_width=16)
    whole = tmp_path / "whole.caffemodel"
    caffe_writer.write_caffemodel(whole, layers)
    data = whole.read_bytes()
    conv3_weights = next(l for l in layers if l.name == "conv3").blobs[0].tobytes()
    cut = data.find(conv3_weights) + len(conv3_weights) // 2
    truncated = tmp_path / "truncated.caffemodel"
    truncated.write_bytes(data[:cut])
    assert_one_line_error(read, truncated, "truncated")


def test_blob_with_wrong_value_count(tmp_path):
    path = tmp_path / "deploy.caffemodel"
    path.write_bytes(
        new_layer("conv2", "Convolution", "pool1", "conv2",
                  length_delimited(7, new_blob([256, 48, 5, 5], [1.0, 2.0, 3.0, 4.0])))
    )
    message = assert_one_line_error(caffe_proto.read_caffemodel, path)
    assert message == (
        f'{path}: layer "conv2": blob 0 has 4 values, its shape [256, 48, 5, 5] needs 307200.'
    )


def test_bad_means_and_prototxts(tmp_path):
    caffemodel = tmp_path / "net.caffemodel"
    caffemodel.write_bytes(new_format_net())
    assert_one_line_error(caffe_proto.read_mean_binaryproto, caffemodel, "no values")
    assert_one_line_error(caffe_proto.read_mean_binaryproto, tmp_path / "no.binaryproto")
    flat = tmp_path / "flat.binaryproto"
    flat.write_bytes(new_blob([6], [0.0] * 6))
    assert_one_line_error(caffe_proto.read_mean_binaryproto, flat, "[6]")

    png = tmp_path / "image.png"
    png.write_bytes(tiny_png())
    assert_one_line_error(caffe_proto.read_prototxt, png)
    garbled = tmp_path / "garbled.prototxt"
    garbled.write_text('layer {\n  name: "conv1"\n  type: CONVOLUTION\n}\n')
    assert_one_line_error(caffe_proto.read_prototxt, garbled, "text format")


@pytest.mark.parametrize(
    "size, kernel, stride, pad, expected",
    [
        (6, 3, 2, 0, 3),  # ceil(3 / 2) + 1; floor would give 2
        (7, 2, 2, 0, 4),  # ceil(5 / 2) + 1; floor would give 3
        (55, 3, 2, 0, 27),  # AlexNet's pool1
        (27, 3, 2, 0, 13),  # pool2
        (13, 3, 2, 0, 6),  # pool5
        (5, 2, 2, 1, 3),  # ceil(5 / 2) + 1 = 4, but window 3 would start at 6 >= 5 + 1
        (6, 3, 2, 1, 4),  # ceil(5 / 2) + 1 = 4, window 3 starts at 6 < 6 + 1
    ],
)
def test_caffe_pool_output_size(size, kernel, stride, pad, expected):
    assert ref.caffe_pool_output_size(size, kernel, stride, pad) == expected


def test_caffe_max_pool_clips_windows_at_the_border():
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6) % 7
    got = ref.caffe_max_pool(x, kernel=3, stride=2)
    assert got.shape == (1, 1, 3, 3)
    for i in range(3):
        for j in range(3):
            window = x[0, 0, 2 * i:min(2 * i + 3, 6), 2 * j:min(2 * j + 3, 6)]
            assert got[0, 0, i, j] == window.max()
    padded = ref.caffe_max_pool(-np.ones((1, 1, 5, 5)), kernel=2, stride=2, pad=1)
    np.testing.assert_array_equal(padded, -np.ones((1, 1, 3, 3)))


def test_caffe_lrn_by_hand():
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0]).reshape(1, 5, 1, 1)
    got = ref.caffe_lrn(a, local_size=3, alpha=0.3, beta=0.75, k=2.0).ravel()
    # b_i = a_i / (k + alpha / n * sum of a_j^2 for j in i-1..i+1 within 0..4) ^ beta
    expected = [
        1 / (2 + 0.1 * (1 + 4)) ** 0.75,
        2 / (2 + 0.1 * (1 + 4 + 9)) ** 0.75,
        3 / (2 + 0.1 * (4 + 9 + 16)) ** 0.75,
        4 / (2 + 0.1 * (9 + 16 + 25)) ** 0.75,
        5 / (2 + 0.1 * (16 + 25)) ** 0.75,
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-14)


def naive_conv(x, w, b, stride, pad):
    """Convolution by definition: y[o, r, c] = b[o] + sum x[:, s r + i, s c + j] w[o, :, i, j]."""
    n, _, h, width = x.shape
    out_c, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out_h, out_w = (h + 2 * pad - kh) // stride + 1, (width + 2 * pad - kw) // stride + 1
    y = np.zeros((n, out_c, out_h, out_w))
    for o in range(out_c):
        for r in range(out_h):
            for c in range(out_w):
                patch = xp[:, :, r * stride:r * stride + kh, c * stride:c * stride + kw]
                y[:, o, r, c] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return y


def test_group_conv_nchw():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 7, 6))
    w = rng.standard_normal((6, 2, 3, 3))
    b = rng.standard_normal(6)
    got = ref.group_conv_nchw(x, w, b, stride=2, pad=1, groups=2)
    halves = np.concatenate(
        [naive_conv(x[:, :2], w[:3], b[:3], 2, 1), naive_conv(x[:, 2:], w[3:], b[3:], 2, 1)],
        axis=1,
    )
    assert got.shape == (2, 6, 4, 3)
    np.testing.assert_allclose(got, halves, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        ref.group_conv_nchw(x[:, :2], w[:3], b[:3], stride=2, pad=1),
        naive_conv(x[:, :2], w[:3], b[:3], 2, 1), rtol=1e-12, atol=1e-12,
    )


def test_alexnet_forward_shapes_and_parameter_count():
    shapes = ref.bvlc_alexnet_param_shapes(num_classes=1000)
    assert sum(math.prod(w) + math.prod(b) for w, b in shapes.values()) == 60_965_224

    rng = np.random.default_rng(6)
    layers = ref.bvlc_alexnet_layers(rng, num_classes=10, fc_width=64)
    small = ref.bvlc_alexnet_param_shapes(num_classes=10, fc_width=64)
    assert {l.name: tuple(b.shape for b in l.blobs) for l in layers if l.blobs} == small
    images = 50 * rng.standard_normal((2, 3, 227, 227))
    logits, activations = ref.alexnet_forward(images, layers, return_activations=True)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert activations["pool5"].shape == (2, 256, 6, 6)
    assert activations["norm1"].shape == (2, 96, 55, 55)
    assert activations["pool2"].shape == (2, 256, 13, 13)
    assert np.std(logits) > 1.0
    assert np.abs(logits[0] - logits[1]).max() > 1e-3 * np.abs(logits).max()


def test_negative_dimensions_are_refused_in_one_line(tmp_path):
    model = tmp_path / "negative.caffemodel"
    model.write_bytes(new_layer("fc8", "InnerProduct", "fc7", "fc8",
                                length_delimited(7, new_blob([-2, -48], [0.0] * 96))))
    assert_one_line_error(caffe_proto.read_caffemodel, model, 'layer "fc8"',
                          "blob 0 has shape [-2, -48], with a negative dimension")
    mean = tmp_path / "negative.binaryproto"
    mean.write_bytes(v1_blob([-1, -3, 2, 2], [0.0] * 12))
    assert_one_line_error(caffe_proto.read_mean_binaryproto, mean,
                          "[-1, -3, 2, 2], with a negative dimension")


def test_a_prototxt_nested_past_any_caffe_net_is_refused_before_parsing(tmp_path):
    deep = tmp_path / "deep.prototxt"
    deep.write_text("layer { " * 50_000 + "} " * 50_000)
    assert_one_line_error(caffe_proto.read_prototxt, deep, "nested more than 32 deep",
                          "line 1")
    # Braces inside strings and comments are not nesting.
    quoted = tmp_path / "quoted.prototxt"
    quoted.write_text("# " + "{" * 100 + "\n" + DEPLOY_PROTOTXT.replace(
        'name: "AlexNet"', 'name: "' + "{" * 100 + '"', 1))
    assert caffe_proto.read_prototxt(quoted).name == "{" * 100


def test_a_prototxt_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    latin = tmp_path / "latin.prototxt"
    latin.write_bytes(b'name: "caf\xe9"\n')
    assert_one_line_error(caffe_proto.read_prototxt, latin, "not UTF-8")
