"""Caffe's model files read without Caffe: .caffemodel, .prototxt, .binaryproto.

Caffe's model zoo ships AlexNet as `bvlc_alexnet.caffemodel` (a binary
`caffe.NetParameter`), `deploy.prototxt` (the same message in protobuf text format)
and `imagenet_mean.binaryproto` (a binary `caffe.BlobProto`). This module decodes
them with the protobuf runtime alone: the message types Caffe's AlexNet uses are
built at import time from `_CAFFE_PROTO_SUBSET`, which is copied line for line from
caffe.proto, so no Caffe install and no protoc step is needed. Fields the subset
leaves out are skipped on reading, as proto2 parsers do.

One job: reading Caffe's files; 154 of its lines are the schema it carries,
caffe.proto's subset.

Two generations of the format exist and both are read:

- "layer" (NetParameter field 100, LayerParameter): Caffe since 2015; the layer type
  is a string ("Convolution") and blobs carry a `shape`;
- "layers" (NetParameter field 2, V1LayerParameter): Caffe 2014, which wrote
  bvlc_alexnet.caffemodel; the type is an enum (CONVOLUTION) and blobs carry the
  4-D num/channels/height/width fields.

Both come back as the same `CaffeNet` of `CaffeLayer`s, with new-style type names and
blobs in Caffe's layout: convolution weights [out, in / group, h, w], inner-product
weights [out, in], biases [n]. Every problem raises `CaffeFormatError` with one line
naming the file and, where it applies, the layer. (tests/caffe_writer.py writes
either generation, for the tests.)
"""

import dataclasses
import math
import re

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf.message import DecodeError

# The lines below are copied from BVLC/caffe src/caffe/proto/caffe.proto at commit
# 9b891540183ddc834a02b2bd81b31afae71b2153 (master; the file last changed in
# 828dd100445137409dd40694b4ea14570f43e599), keeping the messages and fields that
# AlexNet's files use, in caffe.proto's order, without its comments. Enums are declared
# before the fields that use them, as in caffe.proto.
_CAFFE_PROTO_SUBSET = """
message BlobShape {
  repeated int64 dim = 1 [packed = true];
}
message BlobProto {
  optional BlobShape shape = 7;
  repeated float data = 5 [packed = true];
  repeated double double_data = 8 [packed = true];
  optional int32 num = 1 [default = 0];
  optional int32 channels = 2 [default = 0];
  optional int32 height = 3 [default = 0];
  optional int32 width = 4 [default = 0];
}
message NetParameter {
  optional string name = 1;
  repeated string input = 3;
  repeated BlobShape input_shape = 8;
  repeated int32 input_dim = 4;
  repeated LayerParameter layer = 100;
  repeated V1LayerParameter layers = 2;
}
message LayerParameter {
  optional string name = 1;
  optional string type = 2;
  repeated string bottom = 3;
  repeated string top = 4;
  repeated BlobProto blobs = 7;
  optional ConvolutionParameter convolution_param = 106;
  optional DropoutParameter dropout_param = 108;
  optional InnerProductParameter inner_product_param = 117;
  optional InputParameter input_param = 143;
  optional LRNParameter lrn_param = 118;
  optional PoolingParameter pooling_param = 121;
  optional ReLUParameter relu_param = 123;
}
message ConvolutionParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  repeated uint32 pad = 3;
  repeated uint32 kernel_size = 4;
  repeated uint32 stride = 6;
  repeated uint32 dilation = 18;
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_h = 11;
  optional uint32 kernel_w = 12;
  optional uint32 stride_h = 13;
  optional uint32 stride_w = 14;
  optional uint32 group = 5 [default = 1];
}
message DropoutParameter {
  optional float dropout_ratio = 1 [default = 0.5];
}
message InnerProductParameter {
  optional uint32 num_output = 1;
  optional bool bias_term = 2 [default = true];
  optional int32 axis = 5 [default = 1];
  optional bool transpose = 6 [default = false];
}
message InputParameter {
  repeated BlobShape shape = 1;
}
message LRNParameter {
  optional uint32 local_size = 1 [default = 5];
  optional float alpha = 2 [default = 1.];
  optional float beta = 3 [default = 0.75];
  enum NormRegion {
    ACROSS_CHANNELS = 0;
    WITHIN_CHANNEL = 1;
  }
  optional NormRegion norm_region = 4 [default = ACROSS_CHANNELS];
  optional float k = 5 [default = 1.];
}
message PoolingParameter {
  enum PoolMethod {
    MAX = 0;
    AVE = 1;
    STOCHASTIC = 2;
  }
  optional PoolMethod pool = 1 [default = MAX];
  optional uint32 pad = 4 [default = 0];
  optional uint32 pad_h = 9 [default = 0];
  optional uint32 pad_w = 10 [default = 0];
  optional uint32 kernel_size = 2;
  optional uint32 kernel_h = 5;
  optional uint32 kernel_w = 6;
  optional uint32 stride = 3 [default = 1];
  optional uint32 stride_h = 7;
  optional uint32 stride_w = 8;
  optional bool global_pooling = 12 [default = false];
  enum RoundMode {
    CEIL = 0;
    FLOOR = 1;
  }
  optional RoundMode round_mode = 13 [default = CEIL];
}
message ReLUParameter {
  optional float negative_slope = 1 [default = 0];
}
message V1LayerParameter {
  repeated string bottom = 2;
  repeated string top = 3;
  optional string name = 4;
  enum LayerType {
    NONE = 0;
    ABSVAL = 35;
    ACCURACY = 1;
    ARGMAX = 30;
    BNLL = 2;
    CONCAT = 3;
    CONTRASTIVE_LOSS = 37;
    CONVOLUTION = 4;
    DATA = 5;
    DECONVOLUTION = 39;
    DROPOUT = 6;
    DUMMY_DATA = 32;
    EUCLIDEAN_LOSS = 7;
    ELTWISE = 25;
    EXP = 38;
    FLATTEN = 8;
    HDF5_DATA = 9;
    HDF5_OUTPUT = 10;
    HINGE_LOSS = 28;
    IM2COL = 11;
    IMAGE_DATA = 12;
    INFOGAIN_LOSS = 13;
    INNER_PRODUCT = 14;
    LRN = 15;
    MEMORY_DATA = 29;
    MULTINOMIAL_LOGISTIC_LOSS = 16;
    MVN = 34;
    POOLING = 17;
    POWER = 26;
    RELU = 18;
    SIGMOID = 19;
    SIGMOID_CROSS_ENTROPY_LOSS = 27;
    SILENCE = 36;
    SOFTMAX = 20;
    SOFTMAX_LOSS = 21;
    SPLIT = 22;
    SLICE = 33;
    TANH = 23;
    WINDOW_DATA = 24;
    THRESHOLD = 31;
  }
  optional LayerType type = 5;
  repeated BlobProto blobs = 6;
  optional ConvolutionParameter convolution_param = 10;
  optional DropoutParameter dropout_param = 12;
  optional InnerProductParameter inner_product_param = 17;
  optional LRNParameter lrn_param = 18;
  optional PoolingParameter pooling_param = 19;
  optional ReLUParameter relu_param = 30;
}
"""

# The new-style name of each V1 layer type, as Caffe's own upgrade gives it
# (BVLC/caffe src/caffe/util/upgrade_proto.cpp, UpgradeV1LayerType, same commit).
V1_LAYER_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DATA": "Data", "DECONVOLUTION": "Deconvolution",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
}

_FIELD_TYPES = {
    "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    "double": descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE,
    "float": descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT,
    "int32": descriptor_pb2.FieldDescriptorProto.TYPE_INT32,
    "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "uint32": descriptor_pb2.FieldDescriptorProto.TYPE_UINT32,
}
_FIELD_LINE = re.compile(r"(optional|repeated) (\w+) (\w+) = (\d+)(?: \[(\w+) = ([\w.]+)\])?;")
_ENUM_VALUE_LINE = re.compile(r"(\w+) = (\d+);")


class CaffeFormatError(ValueError):
    """A Caffe file that cannot be read; the message is one line naming the file."""


def _add_field(message, line):
    """Adds one caffe.proto field line (`optional float alpha = 2 [default = 1.];`)."""
    match = _FIELD_LINE.fullmatch(line)
    if match is None:
        raise ValueError(f"caffe.proto subset: cannot read the line {line!r}")
    label, type_name, name, number, option, option_value = match.groups()
    field = message.field.add(name=name, number=int(number))
    field.label = getattr(descriptor_pb2.FieldDescriptorProto, "LABEL_" + label.upper())
    if type_name in _FIELD_TYPES:
        field.type = _FIELD_TYPES[type_name]
    elif type_name in [enum.name for enum in message.enum_type]:
        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_ENUM
        field.type_name = f".caffe.{message.name}.{type_name}"
    else:
        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
        field.type_name = f".caffe.{type_name}"
    if option == "packed":
        field.options.packed = option_value == "true"
    elif option == "default":
        # caffe.proto writes float defaults as C literals ("1."); descriptors want "1.0".
        is_float = type_name in ("float", "double")
        field.default_value = repr(float(option_value)) if is_float else option_value


def _file_descriptor(proto_text):
    """A FileDescriptorProto of package caffe built from caffe.proto message lines."""
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="alexnet_tf/caffe_subset.proto", package="caffe", syntax="proto2"
    )
    message = enum = None
    for line in (raw.strip() for raw in proto_text.splitlines()):
        if not line:
            continue
        if line.startswith("message "):
            message = file_proto.message_type.add(name=line.split()[1])
        elif line.startswith("enum "):
            enum = message.enum_type.add(name=line.split()[1])
        elif line == "}":
            if enum is not None:
                enum = None
            else:
                message = None
        elif enum is not None:
            name, number = _ENUM_VALUE_LINE.fullmatch(line).groups()
            enum.value.add(name=name, number=int(number))
        else:
            _add_field(message, line)
    return file_proto


# A pool of its own, so that a caffe.proto registered by another library (pycaffe's
# caffe_pb2) in the default pool cannot clash with this subset.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor(_CAFFE_PROTO_SUBSET))


def _message_class(name):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName("caffe." + name))


NetParameter = _message_class("NetParameter")
LayerParameter = _message_class("LayerParameter")
V1LayerParameter = _message_class("V1LayerParameter")
BlobProto = _message_class("BlobProto")
BlobShape = _message_class("BlobShape")
LRNParameter = _message_class("LRNParameter")
PoolingParameter = _message_class("PoolingParameter")

_V1_TYPE_NAMES = V1LayerParameter.DESCRIPTOR.enum_types_by_name["LayerType"].values_by_number
_V1_TYPE_NUMBERS = {
    new_name: V1LayerParameter.LayerType.Value(v1_name)
    for v1_name, new_name in V1_LAYER_TYPES.items()
}


@dataclasses.dataclass(frozen=True)
class ConvolutionParams:
    """convolution_param with Caffe's defaults resolved; (h, w) pairs for the 2-D case."""

    num_output: int
    kernel: tuple
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    dilation: tuple = (1, 1)
    group: int = 1
    bias_term: bool = True


@dataclasses.dataclass(frozen=True)
class PoolingParams:
    """pooling_param: method "max", "ave" or "stochastic"; kernel None for global pooling.

    round_mode "ceil" is Caffe's output-size rule (and the only one before 2018).
    """

    method: str = "max"
    kernel: tuple = None
    stride: tuple = (1, 1)
    pad: tuple = (0, 0)
    global_pooling: bool = False
    round_mode: str = "ceil"


@dataclasses.dataclass(frozen=True)
class LRNParams:
    """lrn_param; Caffe divides alpha by local_size (see LRNLayer), unlike the paper."""

    local_size: int = 5
    alpha: float = 1.0
    beta: float = 0.75
    k: float = 1.0
    norm_region: str = "across_channels"


@dataclasses.dataclass(frozen=True)
class InnerProductParams:
    """inner_product_param; with transpose the weights are stored [in, out]."""

    num_output: int
    bias_term: bool = True
    axis: int = 1
    transpose: bool = False


@dataclasses.dataclass(frozen=True)
class DropoutParams:
    ratio: float = 0.5


@dataclasses.dataclass(frozen=True)
class ReLUParams:
    negative_slope: float = 0.0


@dataclasses.dataclass(frozen=True)
class InputParams:
    """input_param: one shape per top, or one shape for all of them."""

    shapes: tuple = ()


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a Caffe net, whichever format it came from.

    `type` is the new-style string ("Convolution"); `blobs` are float32 arrays in
    Caffe's layout (weights first, then biases); `params` is the layer's
    ConvolutionParams, PoolingParams, LRNParams, InnerProductParams, DropoutParams,
    ReLUParams or InputParams, or None for types without parameters read here.
    """

    name: str
    type: str
    bottoms: list = dataclasses.field(default_factory=list)
    tops: list = dataclasses.field(default_factory=list)
    blobs: list = dataclasses.field(default_factory=list)
    params: object = None


@dataclasses.dataclass
class CaffeNet:
    """A Caffe net in file order; `format` is "layer" (field 100) or "layers" (V1, field 2).

    `inputs` maps each declared input blob to its shape, from NetParameter's
    input/input_shape/input_dim or from Input layers (the two ways deploy.prototxt
    files declare the image batch).
    """

    name: str
    layers: list
    format: str
    inputs: dict = dataclasses.field(default_factory=dict)

    def layer(self, name):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no layer named {name!r} in net {self.name!r}")


def _one_line(text):
    return " ".join(str(text).split())


def _float32_value(value):
    """A proto float as the shortest decimal naming that float32 (0.0001, not 9.99e-05).

    Caffe computes with the float32 value, and the short form is what the prototxt
    author wrote, so it compares equal to the number in the file's text.
    """
    return float(str(np.float32(value)))


# The shared field of ConvolutionParameter / PoolingParameter and its per-axis pair.
_SEPARATE_FIELDS = {
    "kernel_size": ("kernel_h", "kernel_w"),
    "stride": ("stride_h", "stride_w"),
    "pad": ("pad_h", "pad_w"),
}


def _shared_pair(values, default):
    """(h, w) from a shared value: none gives the default, one serves both, two are (h, w)."""
    values = [values] if isinstance(values, int) else list(values)
    if not values:
        return (default, default)
    return (int(values[0]), int(values[-1]))


def _hw(proto, shared_name, default):
    """(h, w) by Caffe's rule: `<name>_h`/`<name>_w` when set, else the shared field."""
    h_name, w_name = _SEPARATE_FIELDS[shared_name]
    if proto.HasField(h_name):
        return (int(getattr(proto, h_name)), int(getattr(proto, w_name)))
    return _shared_pair(getattr(proto, shared_name), default)


def _convolution_params(proto):
    # BaseConvolutionLayer::LayerSetUp: kernel_h/_w override kernel_size, where one
    # value serves both dimensions and two are (h, w); likewise stride and pad.
    return ConvolutionParams(
        num_output=int(proto.num_output),
        kernel=_hw(proto, "kernel_size", 0),
        stride=_hw(proto, "stride", 1),
        pad=_hw(proto, "pad", 0),
        dilation=_shared_pair(proto.dilation, 1),
        group=int(proto.group),
        bias_term=bool(proto.bias_term),
    )


def _enum_name(proto, field_name):
    """The lower-case name of an enum field's value ("max" for pool: MAX)."""
    enum_type = proto.DESCRIPTOR.fields_by_name[field_name].enum_type
    return enum_type.values_by_number[getattr(proto, field_name)].name.lower()


def _pooling_params(proto):
    # PoolingLayer::LayerSetUp: kernel_size or kernel_h/_w, and pad and stride shared
    # unless pad_h / stride_h is set; global pooling takes the whole input instead.
    global_pooling = bool(proto.global_pooling)
    return PoolingParams(
        method=_enum_name(proto, "pool"),
        kernel=None if global_pooling else _hw(proto, "kernel_size", 0),
        stride=_hw(proto, "stride", 1),
        pad=_hw(proto, "pad", 0),
        global_pooling=global_pooling,
        round_mode=_enum_name(proto, "round_mode"),
    )


def _lrn_params(proto):
    return LRNParams(
        local_size=int(proto.local_size),
        alpha=_float32_value(proto.alpha),
        beta=_float32_value(proto.beta),
        k=_float32_value(proto.k),
        norm_region=_enum_name(proto, "norm_region"),
    )


def _layer_params(layer_type, proto):
    """The parameters of the types AlexNet uses, from a LayerParameter or V1LayerParameter."""
    if layer_type in ("Convolution", "Deconvolution"):
        return _convolution_params(proto.convolution_param)
    if layer_type == "Pooling":
        return _pooling_params(proto.pooling_param)
    if layer_type == "LRN":
        return _lrn_params(proto.lrn_param)
    if layer_type == "InnerProduct":
        ip = proto.inner_product_param
        return InnerProductParams(
            int(ip.num_output), bool(ip.bias_term), int(ip.axis), bool(ip.transpose)
        )
    if layer_type == "Dropout":
        return DropoutParams(_float32_value(proto.dropout_param.dropout_ratio))
    if layer_type == "ReLU":
        return ReLUParams(_float32_value(proto.relu_param.negative_slope))
    if layer_type == "Input":
        return InputParams(tuple(tuple(int(d) for d in s.dim) for s in proto.input_param.shape))
    return None


_LEGACY_DIMS = ("num", "channels", "height", "width")
# The rank each blob of a layer has in the current format. V1 files store every blob
# 4-D, an inner product's weights as [1, 1, out, in] and biases as [1, 1, 1, n]; Caffe's
# own upgrade keeps those shapes, so "layer" files converted from V1 have them too.
_BLOB_RANKS = {"Convolution": (4, 1), "Deconvolution": (4, 1), "InnerProduct": (2, 1)}


def _blob_shape(blob):
    """The blob's dims: `shape` if set, else the legacy 4-D fields, else None."""
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    if any(blob.HasField(name) for name in _LEGACY_DIMS):
        return tuple(int(getattr(blob, name)) for name in _LEGACY_DIMS)
    return None


def _blob_array(blob, where, layer_type, index):
    """A BlobProto's values as float32 in its shape, with V1's padding axes dropped."""
    values = blob.data if len(blob.data) else blob.double_data
    shape = _blob_shape(blob)
    if shape is None:
        shape = (len(values),)
    if any(d < 0 for d in shape):
        raise CaffeFormatError(
            f"{where}: blob {index} has shape {list(shape)}, with a negative dimension.")
    needed = math.prod(shape)
    if len(values) != needed:
        raise CaffeFormatError(
            f"{where}: blob {index} has {len(values)} values, "
            f"its shape {list(shape)} needs {needed}."
        )
    array = np.array(values, dtype=np.float32).reshape(shape)
    ranks = _BLOB_RANKS.get(layer_type, ())
    if index < len(ranks) and array.ndim > ranks[index]:
        leading = array.shape[: array.ndim - ranks[index]]
        if all(d == 1 for d in leading):
            array = array.reshape(array.shape[array.ndim - ranks[index]:])
    return array


def _layer_from_proto(proto, layer_type, path, index):
    """A CaffeLayer from a LayerParameter or V1LayerParameter already typed by the caller."""
    if not layer_type:
        raise CaffeFormatError(
            f'{path}: layer {index} ("{proto.name}") has no type; nets from before '
            "Caffe's V1 format must first be upgraded with Caffe's upgrade_net_proto_binary."
        )
    where = f'{path}: layer "{proto.name}"'
    return CaffeLayer(
        name=proto.name,
        type=layer_type,
        bottoms=list(proto.bottom),
        tops=list(proto.top),
        blobs=[_blob_array(b, where, layer_type, i) for i, b in enumerate(proto.blobs)],
        params=_layer_params(layer_type, proto),
    )


def _net_inputs(net, layers):
    """Input blob name -> shape, from NetParameter's deprecated fields and Input layers."""
    inputs = {}
    for i, name in enumerate(net.input):
        if i < len(net.input_shape):
            inputs[name] = tuple(int(d) for d in net.input_shape[i].dim)
        elif len(net.input_dim) >= 4 * (i + 1):
            inputs[name] = tuple(int(d) for d in net.input_dim[4 * i: 4 * i + 4])
        else:
            inputs[name] = None
    for layer in layers:
        if layer.type == "Input" and layer.params.shapes:
            shapes = layer.params.shapes
            for i, top in enumerate(layer.tops):
                inputs[top] = shapes[i] if len(shapes) > 1 else shapes[0]
    return inputs


def _net_from_message(net, path, kind):
    """A CaffeNet from a parsed NetParameter, preferring `layer` when a file has both."""
    if len(net.layer):
        layers = [
            _layer_from_proto(proto, proto.type, path, i) for i, proto in enumerate(net.layer)
        ]
        fmt = "layer"
    elif len(net.layers):
        layers = [
            _layer_from_proto(proto, V1_LAYER_TYPES.get(_V1_TYPE_NAMES[proto.type].name, ""),
                              path, i)
            for i, proto in enumerate(net.layers)
        ]
        fmt = "layers"
    else:
        raise CaffeFormatError(f"{path}: holds no layers; it is not a Caffe {kind}.")
    return CaffeNet(name=net.name, layers=layers, format=fmt, inputs=_net_inputs(net, layers))


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CaffeFormatError(f"{path}: no such file.") from None
    except OSError as error:
        raise CaffeFormatError(f"{path}: cannot be read ({_one_line(error.strerror)}).") from None


def _read_varint(data, position):
    """(value, next position) of the varint at position, or (None, len) if data ends first."""
    value = 0
    for shift in range(0, 70, 7):
        if position >= len(data):
            return None, len(data)
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
    return None, len(data)


# NetParameter's fields (caffe.proto) -> the wire types they may arrive with: varint 0,
# length-delimited 2 (strings, messages, packed repeated numbers).
_NET_PARAMETER_WIRE_TYPES = {
    1: {2}, 2: {2}, 3: {2}, 4: {0, 2}, 5: {0}, 6: {2}, 7: {0}, 8: {2}, 100: {2},
}


def _string_field(data, field_number):
    """The first string with field_number among data's fields, or None if it is not reached."""
    position = 0
    while position < len(data):
        tag, position = _read_varint(data, position)
        if tag is None or tag & 7 not in (0, 2):
            return None
        value, position = _read_varint(data, position)
        if value is None:
            return None
        if tag & 7 == 2:
            if tag >> 3 == field_number and position + value <= len(data):
                return data[position:position + value].decode("utf-8", "replace")
            position += value
    return None


def _truncation(data):
    """How a NetParameter encoding is cut short, or None if data is not one cut short.

    Only the top-level fields are walked, and only while they are NetParameter's own
    fields with their wire types, so that other bytes are not taken for a cut model.
    """
    position, layer_count = 0, 0
    while position < len(data):
        tag, position = _read_varint(data, position)
        if tag is None or tag & 7 not in _NET_PARAMETER_WIRE_TYPES.get(tag >> 3, ()):
            return None
        value, position = _read_varint(data, position)
        if value is None or (tag & 7 == 2 and position + value > len(data)):
            break
        position += value if tag & 7 == 2 else 0
        layer_count += tag >> 3 in (2, 100)
    else:
        return None
    what = f"layer {layer_count}" if tag >> 3 in (2, 100) else f"NetParameter field {tag >> 3}"
    if value is None:
        return f"the header of {what} runs past the end"
    if tag >> 3 in (2, 100):
        # LayerParameter: `optional string name = 1;`, V1LayerParameter: `... name = 4;`.
        name = _string_field(data[position:], 1 if tag >> 3 == 100 else 4)
        what += f' ("{name}")' if name is not None else ""
    return f"{what} needs {position + value} bytes"


def _parse_binary(message_class, path, kind):
    data = _read_bytes(path)
    message = message_class()
    try:
        message.ParseFromString(data)
    except (DecodeError, UnicodeDecodeError) as error:
        truncation = _truncation(data) if message_class is NetParameter else None
        if truncation:
            raise CaffeFormatError(
                f"{path}: truncated: {truncation}, the file has {len(data)} "
                "(an incomplete download?)."
            ) from None
        raise CaffeFormatError(
            f"{path}: not a Caffe {kind}, or cut short (protobuf: {_one_line(error)})."
        ) from None
    return message


def read_caffemodel(path):
    """The CaffeNet with weights in a binary .caffemodel (a caffe.NetParameter)."""
    net = _parse_binary(NetParameter, path, "model (.caffemodel)")
    return _net_from_message(net, path, "model (.caffemodel)")


# Caffe's deepest message in a net is four levels down (NetParameter > layer >
# convolution_param > weight_filler); the text parser recurses once per level, so a
# file nested thousands deep would exhaust the stack and the memory first.
MAX_PROTOTXT_NESTING = 32
# What the nesting count looks at: strings and comments (skipped), and the braces and
# angle brackets that open and close messages in protobuf text format.
_PROTOTXT_TOKENS = re.compile(r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|#[^\n]*|[{}<>]""")


def _check_nesting(text, path):
    depth = 0
    for token in _PROTOTXT_TOKENS.finditer(text):
        mark = token.group()
        if mark in "{<":
            depth += 1
            if depth > MAX_PROTOTXT_NESTING:
                line = text.count("\n", 0, token.start()) + 1
                raise CaffeFormatError(
                    f"{path}: messages nested more than {MAX_PROTOTXT_NESTING} deep (line "
                    f"{line}); a Caffe net nests at most a few.")
        elif mark in "}>":
            depth -= 1


def read_prototxt(path):
    """The CaffeNet a text .prototxt describes (no blobs); fields not read here are skipped."""
    try:
        text = _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise CaffeFormatError(
            f"{path}: not a Caffe net in protobuf text format (not UTF-8: {_one_line(error)})."
        ) from None
    _check_nesting(text, path)
    try:
        net = text_format.Parse(text, NetParameter(), allow_unknown_field=True)
    except text_format.ParseError as error:
        raise CaffeFormatError(
            f"{path}: not a Caffe net in protobuf text format ({_one_line(error)})."
        ) from None
    return _net_from_message(net, path, "net (.prototxt)")


def read_mean_binaryproto(path):
    """The mean image [C, H, W] float32 (BGR, 0..255 for ImageNet) of a .binaryproto.

    Caffe's compute_image_mean writes one BlobProto with num=1 and the 4-D fields;
    a `shape` of [C, H, W] or [1, C, H, W] is accepted as well.
    """
    blob = _parse_binary(BlobProto, path, "mean (.binaryproto BlobProto)")
    if not len(blob.data) and not len(blob.double_data):
        raise CaffeFormatError(f"{path}: holds no values; it is not a Caffe mean .binaryproto.")
    mean = _blob_array(blob, path, "", 0)
    if mean.ndim == 4 and mean.shape[0] == 1:
        mean = mean[0]
    if mean.ndim != 3:
        raise CaffeFormatError(
            f"{path}: the mean has shape {list(mean.shape)}; expected [C, H, W] or [1, C, H, W]."
        )
    return mean
