"""Writes Caffe's files (.caffemodel in either format, .binaryproto means) with
alexnet_tf.caffe_proto's message classes, for the tests of the reader and the importer."""

import numpy as np

from alexnet_tf import caffe_proto


def _write_hw(proto, shared_name, pair, default):
    """Writes an (h, w) pair as Caffe's own files do: one shared value when h == w."""
    h, w = (int(v) for v in pair)
    if h != w:
        h_name, w_name = caffe_proto._SEPARATE_FIELDS[shared_name]
        setattr(proto, h_name, h)
        setattr(proto, w_name, w)
    elif h != default:
        field = getattr(proto, shared_name)
        if isinstance(field, int):
            setattr(proto, shared_name, h)
        else:
            field.append(h)


def _write_convolution(proto, params):
    proto.num_output = params.num_output
    _write_hw(proto, "kernel_size", params.kernel, None)
    _write_hw(proto, "stride", params.stride, 1)
    _write_hw(proto, "pad", params.pad, 0)
    if tuple(params.dilation) != (1, 1):
        proto.dilation.extend([int(d) for d in params.dilation])
    if params.group != 1:
        proto.group = params.group
    if not params.bias_term:
        proto.bias_term = False


def _write_pooling(proto, params):
    proto.pool = caffe_proto.PoolingParameter.PoolMethod.Value(params.method.upper())
    if params.global_pooling:
        proto.global_pooling = True
    else:
        _write_hw(proto, "kernel_size", params.kernel, None)
    _write_hw(proto, "stride", params.stride, 1)
    _write_hw(proto, "pad", params.pad, 0)
    if params.round_mode != "ceil":
        proto.round_mode = caffe_proto.PoolingParameter.RoundMode.Value(params.round_mode.upper())


def _write_params(proto, params):
    """Fills the layer message's *_param field for params (field names shared by V1)."""
    if isinstance(params, caffe_proto.ConvolutionParams):
        _write_convolution(proto.convolution_param, params)
    elif isinstance(params, caffe_proto.PoolingParams):
        _write_pooling(proto.pooling_param, params)
    elif isinstance(params, caffe_proto.LRNParams):
        lrn = proto.lrn_param
        lrn.local_size, lrn.alpha, lrn.beta, lrn.k = (
            params.local_size, params.alpha, params.beta, params.k
        )
        lrn.norm_region = caffe_proto.LRNParameter.NormRegion.Value(params.norm_region.upper())
    elif isinstance(params, caffe_proto.InnerProductParams):
        ip = proto.inner_product_param
        ip.num_output, ip.bias_term = params.num_output, params.bias_term
        ip.axis, ip.transpose = params.axis, params.transpose
    elif isinstance(params, caffe_proto.DropoutParams):
        proto.dropout_param.dropout_ratio = params.ratio
    elif isinstance(params, caffe_proto.ReLUParams):
        proto.relu_param.negative_slope = params.negative_slope
    elif isinstance(params, caffe_proto.InputParams):
        for shape in params.shapes:
            proto.input_param.shape.add().dim.extend([int(d) for d in shape])
    elif params is not None:
        raise ValueError(f"cannot write layer parameters of type {type(params).__name__}")


def _write_blob(blob, array, legacy_4d):
    """Fills a caffe_proto.BlobProto: `shape` (current Caffe) or num/channels/height/width (V1)."""
    array = np.asarray(array, dtype=np.float32)
    if legacy_4d:
        if array.ndim > 4:
            raise ValueError(f"a V1 blob has at most 4 axes; this one has shape {array.shape}")
        dims = (1,) * (4 - array.ndim) + array.shape
        blob.num, blob.channels, blob.height, blob.width = dims
    else:
        blob.shape.dim.extend(array.shape)
    # A packed float field is the float32 values little-endian on the wire, so merging
    # that encoding is exact, and much faster than extending `data` with 60 million
    # Python floats one by one.
    payload = np.ascontiguousarray(array, dtype="<f4").tobytes()
    blob.MergeFromString(_encoded_field(5, payload))


def _encoded_field(field_number, payload):
    """A length-delimited field (wire type 2) of the protobuf encoding."""
    return varint(field_number << 3 | 2) + varint(len(payload)) + payload


def varint(n):
    """Base-128 varint: 7 bits a byte, low group first, high bit set on all but the last;
    a negative number as its 64-bit two's complement (ten bytes), as protobuf's int32
    and int64 are."""
    n = n % 2**64
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_caffemodel(path, layers, fmt="layer", name=""):
    """Writes CaffeLayers as a binary .caffemodel in the "layer" or V1 "layers" format.

    Each format is written as its Caffe generation wrote it: "layer" blobs with
    `shape`, V1 "layers" blobs with the 4-D fields (inner products [1, 1, out, in]).
    """
    if fmt not in ("layer", "layers"):
        raise ValueError(f'fmt is "layer" or "layers", not {fmt!r}')
    net = caffe_proto.NetParameter(name=name) if name else caffe_proto.NetParameter()
    for layer in layers:
        if fmt == "layer":
            proto = net.layer.add(name=layer.name, type=layer.type)
        elif layer.type in caffe_proto._V1_TYPE_NUMBERS:
            proto = net.layers.add(name=layer.name, type=caffe_proto._V1_TYPE_NUMBERS[layer.type])
        else:
            raise ValueError(f'layer "{layer.name}": type {layer.type!r} has no V1 equivalent')
        proto.bottom.extend(layer.bottoms)
        proto.top.extend(layer.tops)
        for array in layer.blobs:
            _write_blob(proto.blobs.add(), array, legacy_4d=fmt == "layers")
        _write_params(proto, layer.params)
    with open(path, "wb") as f:
        f.write(net.SerializeToString())


def write_mean_binaryproto(path, mean_chw):
    """Writes a mean image [C, H, W] as compute_image_mean does: num=1 and the 4-D fields."""
    mean = np.asarray(mean_chw, dtype=np.float32)
    if mean.ndim != 3:
        raise ValueError(f"the mean image is [C, H, W]; got shape {mean.shape}")
    blob = caffe_proto.BlobProto()
    _write_blob(blob, mean[np.newaxis], legacy_4d=True)
    with open(path, "wb") as f:
        f.write(blob.SerializeToString())
