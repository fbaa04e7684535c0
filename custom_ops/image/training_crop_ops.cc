// TensorFlow ops for the last steps of the paper's training augmentation
// (Section 4.1), one image at a time:
//
//   output = mirror_if(flip, resize(region, size) - mean[y:y + size, x:x + size]) + rgb
//
// where region is the part of the decoded image that the crop covers, resize is
// bilinear with half-pixel centres (tf.image.resize's default), mean is the
// dataset's mean image, (y, x) is the crop's offset in it, and rgb is the
// image's PCA lighting vector (crop_kernel.h).
//
// AlexnetTf>ResizeFlipAndNormalize takes the decoded uint8 region.
// AlexnetTf>DecodeJpegCropFlipAndNormalize takes the JPEG's bytes: it reads the
// image's size from the header, decodes only the crop's source window (the
// window that tf.io.decode_and_crop_jpeg would be given) with TensorFlow's own
// libjpeg-turbo into scratch memory, and resizes from there. As TensorFlow ops
// the same steps are a shape extraction, a dozen scalar ops for the window, the
// decode and the resize, each with its own output tensor.
#include <cmath>
#include <cstdint>
#include <string>

#include "crop_kernel.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/lib/jpeg/jpeg_mem.h"

namespace alexnet_tf {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
namespace errors = ::tensorflow::errors;

absl::Status SquareCropShape(InferenceContext* c) {
  int64_t size;
  TF_RETURN_IF_ERROR(c->GetAttr("size", &size));
  c->set_output(0, c->MakeShape({size, size, 3}));
  return absl::OkStatus();
}

REGISTER_OP("AlexnetTf>ResizeFlipAndNormalize")
    .Input("region: uint8")
    .Input("mean_image: float")
    .Input("mean_offset: int32")
    .Input("flip: bool")
    .Input("rgb: float")
    .Output("output: float")
    .Attr("size: int >= 1")
    .SetShapeFn(SquareCropShape)
    .Doc(R"doc(
Bilinear resize of a uint8 [h, w, 3] region to [size, size, 3] float32, minus
the mean image's [size, size] crop at mean_offset (y, x), mirrored left-right if
flip, plus rgb [3] on every pixel.
)doc");

REGISTER_OP("AlexnetTf>DecodeJpegCropFlipAndNormalize")
    .Input("contents: string")
    .Input("mean_image: float")
    .Input("mean_offset: int32")
    .Input("flip: bool")
    .Input("rgb: float")
    .Output("output: float")
    .Attr("size: int >= 1")
    .Attr("dct_method: string = ''")
    .SetShapeFn(SquareCropShape)
    .Doc(R"doc(
The training crop of a JPEG: its central square rescaled to S x S (S the side of
the square mean_image), the [size, size] crop at mean_offset (y, x) of that,
minus the mean image's crop there, mirrored left-right if flip, plus rgb [3] on
every pixel. Only the crop's source window is decoded and resized. Fails with
InvalidArgument on data that is not a decodable JPEG. dct_method as in
tf.io.decode_jpeg.
)doc");

namespace {

// Sides of the region and of the mean image stay below this, so that every index
// the kernel forms (3 x side, side + size) fits in an int.
constexpr int64_t kMaxSide = int64_t{1} << 24;
// The decoded window of a JPEG stays below this many bytes (libjpeg's lengths are
// ints); a header that asks for more is refused before anything is allocated.
constexpr int64_t kMaxWindowBytes = int64_t{1} << 31;

// The checks and values both ops share: inputs 1 to 4.
struct CropParameters {
  const float* mean;
  int mean_height;
  int mean_width;
  int offset_y;
  int offset_x;
  bool flip;
  const float* rgb;
};

absl::Status ReadCropParameters(OpKernelContext* ctx, int size, CropParameters* params) {
  const Tensor& mean = ctx->input(1);
  const Tensor& offset = ctx->input(2);
  const Tensor& flip = ctx->input(3);
  const Tensor& rgb = ctx->input(4);
  if (mean.dims() != 3 || mean.dim_size(2) != 3) {
    return errors::InvalidArgument("mean_image must be [H, W, 3], got shape ",
                                   mean.shape().DebugString());
  }
  if (offset.dims() != 1 || offset.dim_size(0) != 2) {
    return errors::InvalidArgument("mean_offset must be [2] (y, x), got shape ",
                                   offset.shape().DebugString());
  }
  if (flip.dims() != 0) {
    return errors::InvalidArgument("flip must be a scalar, got shape ",
                                   flip.shape().DebugString());
  }
  if (rgb.dims() != 1 || rgb.dim_size(0) != 3) {
    return errors::InvalidArgument("rgb must be [3], got shape ", rgb.shape().DebugString());
  }
  if (mean.dim_size(0) >= kMaxSide || mean.dim_size(1) >= kMaxSide) {
    return errors::InvalidArgument("mean_image must be smaller than ", kMaxSide, " x ",
                                   kMaxSide, ", got shape ", mean.shape().DebugString());
  }
  const float* lighting = rgb.flat<float>().data();
  if (!std::isfinite(lighting[0]) || !std::isfinite(lighting[1]) ||
      !std::isfinite(lighting[2])) {
    return errors::InvalidArgument("rgb must be finite, got (", lighting[0], ", ", lighting[1],
                                   ", ", lighting[2], ")");
  }
  // In 64 bits: an offset near 2^31 plus the size must not wrap around the check.
  const int64_t oy = offset.vec<int32_t>()(0);
  const int64_t ox = offset.vec<int32_t>()(1);
  if (oy < 0 || ox < 0 || oy + size > mean.dim_size(0) || ox + size > mean.dim_size(1)) {
    return errors::InvalidArgument("the ", size, "x", size, " crop at mean_offset (", oy, ", ",
                                   ox, ") does not fit in mean_image of shape ",
                                   mean.shape().DebugString());
  }
  *params = {mean.flat<float>().data(),
             static_cast<int>(mean.dim_size(0)),
             static_cast<int>(mean.dim_size(1)),
             static_cast<int>(oy),
             static_cast<int>(ox),
             flip.scalar<bool>()(),
             lighting};
  return absl::OkStatus();
}

absl::Status ReadSize(OpKernelConstruction* ctx, int* size) {
  int64_t value = 0;
  TF_RETURN_IF_ERROR(ctx->GetAttr("size", &value));
  if (value < 1 || value > (1 << 16)) {
    return errors::InvalidArgument("size must be in [1, 65536], got ", value);
  }
  *size = static_cast<int>(value);
  return absl::OkStatus();
}

void Crop(OpKernelContext* ctx, const uint8_t* region, int height, int width, int size,
          const CropParameters& params) {
  Tensor* output = nullptr;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({size, size, 3}), &output));
  ResizeFlipNormalize(region, height, width, params.mean, params.mean_width, params.offset_y,
                      params.offset_x, params.flip, params.rgb, size,
                      output->flat<float>().data());
}

class ResizeFlipAndNormalizeOp : public OpKernel {
 public:
  explicit ResizeFlipAndNormalizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadSize(ctx, &size_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& region = ctx->input(0);
    OP_REQUIRES(ctx, region.dims() == 3 && region.dim_size(2) == 3 &&
                         region.dim_size(0) > 0 && region.dim_size(1) > 0 &&
                         region.dim_size(0) < kMaxSide && region.dim_size(1) < kMaxSide,
                errors::InvalidArgument("region must be a non-empty [h, w, 3] image, got shape ",
                                        region.shape().DebugString()));
    CropParameters params;
    OP_REQUIRES_OK(ctx, ReadCropParameters(ctx, size_, &params));
    Crop(ctx, region.flat<uint8_t>().data(), static_cast<int>(region.dim_size(0)),
         static_cast<int>(region.dim_size(1)), size_, params);
  }

 private:
  int size_ = 0;
};

// The height and width in a baseline or progressive JPEG's frame header, without
// decoding; false if no frame header comes before the first scan.
bool JpegFrameSize(const uint8_t* data, size_t length, int* height, int* width) {
  if (length < 4 || data[0] != 0xFF || data[1] != 0xD8) return false;
  size_t i = 2;
  while (i + 4 <= length) {
    if (data[i] != 0xFF) return false;
    const uint8_t marker = data[i + 1];
    if (marker == 0xFF) {  // fill byte
      ++i;
      continue;
    }
    i += 2;
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;  // no length
    const size_t segment = (static_cast<size_t>(data[i]) << 8) | data[i + 1];
    if (segment < 2 || marker == 0xDA) return false;  // start of scan
    const bool frame = marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 &&
                       marker != 0xC8 && marker != 0xCC;
    if (frame) {
      if (i + 7 > length) return false;
      *height = (data[i + 3] << 8) | data[i + 4];
      *width = (data[i + 5] << 8) | data[i + 6];
      return *height > 0 && *width > 0;
    }
    i += segment;
  }
  return false;
}

class DecodeJpegCropFlipAndNormalizeOp : public OpKernel {
 public:
  explicit DecodeJpegCropFlipAndNormalizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadSize(ctx, &size_));
    std::string dct_method;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dct_method", &dct_method));
    // As tf.io.decode_jpeg: "" is TensorFlow's default, the fast integer DCT (not
    // libjpeg's, which UncompressFlags would keep), and other names are refused.
    OP_REQUIRES(ctx, dct_method.empty() || dct_method == "INTEGER_FAST" ||
                         dct_method == "INTEGER_ACCURATE",
                errors::InvalidArgument("dct_method must be '', 'INTEGER_FAST' or "
                                        "'INTEGER_ACCURATE', got '", dct_method, "'"));
    flags_.dct_method = dct_method == "INTEGER_ACCURATE" ? JDCT_ISLOW : JDCT_IFAST;
    flags_.components = 3;
    flags_.crop = true;
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& contents = ctx->input(0);
    OP_REQUIRES(ctx, contents.dims() == 0,
                errors::InvalidArgument("contents must be a scalar string, got shape ",
                                        contents.shape().DebugString()));
    CropParameters params;
    OP_REQUIRES_OK(ctx, ReadCropParameters(ctx, size_, &params));
    OP_REQUIRES(ctx, params.mean_height == params.mean_width,
                errors::InvalidArgument("mean_image must be square, got ", params.mean_height,
                                        "x", params.mean_width));
    const auto& bytes = contents.scalar<tensorflow::tstring>()();
    const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
    OP_REQUIRES(ctx, bytes.size() < (1u << 31),
                errors::InvalidArgument("JPEG of ", bytes.size(), " bytes is too large"));
    const int length = static_cast<int>(bytes.size());

    int height = 0, width = 0, components = 0;
    if (!JpegFrameSize(data, bytes.size(), &height, &width)) {
      OP_REQUIRES(ctx, tensorflow::jpeg::GetImageInfo(data, length, &width, &height,
                                                      &components),
                  errors::InvalidArgument("Invalid JPEG data, size ", length));
    }

    // The crop's source window in the image's central square, rounded to the
    // nearest pixel: input_pipeline._source_window.
    const int64_t side = std::min(height, width);
    const int64_t scale = params.mean_height;
    const int64_t window = std::min(std::max((2 * size_ * side + scale) / (2 * scale),
                                             int64_t{1}),
                                    side);
    const int64_t y = std::min((2 * params.offset_y * side + scale) / (2 * scale), side - window);
    const int64_t x = std::min((2 * params.offset_x * side + scale) / (2 * scale), side - window);
    OP_REQUIRES(ctx, window * window * 3 < kMaxWindowBytes,
                errors::InvalidArgument("the crop's window of a ", height, "x", width,
                                        " JPEG is ", window, "x", window,
                                        " pixels, too large to decode"));
    tensorflow::jpeg::UncompressFlags flags = flags_;
    flags.crop_y = static_cast<int>((height - side) / 2 + y);
    flags.crop_x = static_cast<int>((width - side) / 2 + x);
    flags.crop_height = flags.crop_width = static_cast<int>(window);

    Tensor region;
    int region_height = 0, region_width = 0;
    absl::Status allocated;
    const uint8_t* decoded = tensorflow::jpeg::Uncompress(
        data, length, flags, nullptr, [&](int w, int h, int c) -> uint8_t* {
          allocated = ctx->allocate_temp(tensorflow::DT_UINT8, TensorShape({h, w, c}), &region);
          if (!allocated.ok()) return nullptr;
          region_height = h;
          region_width = w;
          return region.flat<uint8_t>().data();
        });
    OP_REQUIRES_OK(ctx, allocated);
    OP_REQUIRES(ctx, decoded != nullptr && region_height == window && region_width == window,
                errors::InvalidArgument("Invalid JPEG data or crop window, data size ", length));
    Crop(ctx, decoded, region_height, region_width, size_, params);
  }

 private:
  int size_ = 0;
  tensorflow::jpeg::UncompressFlags flags_;
};

REGISTER_KERNEL_BUILDER(Name("AlexnetTf>ResizeFlipAndNormalize").Device(DEVICE_CPU),
                        ResizeFlipAndNormalizeOp);
REGISTER_KERNEL_BUILDER(Name("AlexnetTf>DecodeJpegCropFlipAndNormalize").Device(DEVICE_CPU),
                        DecodeJpegCropFlipAndNormalizeOp);

}  // namespace
}  // namespace alexnet_tf
