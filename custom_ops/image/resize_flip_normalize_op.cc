// TensorFlow op AlexnetTf>ResizeFlipAndNormalize: the last steps of the paper's
// training augmentation (Section 4.1) for one image, in one pass over the crop.
//
//   output = mirror_if(flip, resize(region, size) - mean[y:y + size, x:x + size]) + rgb
//
// where resize is bilinear with half-pixel centres (tf.image.resize's default)
// from the decoded uint8 source region of the crop, mean is the dataset's mean
// image, (y, x) is the crop's offset in it, and rgb is the image's PCA lighting
// vector. As separate TensorFlow ops these are a cast of the region to float, a
// resize, a mirror, a subtraction and an addition: five passes over
// float tensors, which cost about as much per image as a third of its JPEG
// decode. Here each output row is one vertical blend of two source rows and one
// horizontal pass that interpolates, mirrors, subtracts and adds.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"

namespace alexnet_tf {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::shape_inference::InferenceContext;
namespace errors = ::tensorflow::errors;

REGISTER_OP("AlexnetTf>ResizeFlipAndNormalize")
    .Input("region: uint8")
    .Input("mean_image: float")
    .Input("mean_offset: int32")
    .Input("flip: bool")
    .Input("rgb: float")
    .Output("output: float")
    .Attr("size: int >= 1")
    .SetShapeFn([](InferenceContext* c) {
      int64_t size;
      TF_RETURN_IF_ERROR(c->GetAttr("size", &size));
      c->set_output(0, c->MakeShape({size, size, 3}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
Bilinear resize of a uint8 [h, w, 3] region to [size, size, 3] float32, minus
the mean image's [size, size] crop at mean_offset (y, x), mirrored left-right if
flip, plus rgb [3] on every pixel.
)doc");

namespace {

// Where output index i samples an input of in_size pixels resized to out_size,
// the same taps and weights as TensorFlow's bilinear resize with half-pixel
// centres. (It blends horizontally first, this op vertically first: equal up to
// float rounding.)
struct Tap {
  int lower;
  int upper;
  float lerp;
};

Tap HalfPixelTap(int i, int in_size, float scale) {
  const float in = (static_cast<float>(i) + 0.5f) * scale - 0.5f;
  const float in_floor = std::floor(in);
  return {std::max(static_cast<int>(in_floor), 0),
          std::min(static_cast<int>(std::ceil(in)), in_size - 1), in - in_floor};
}

class ResizeFlipAndNormalizeOp : public OpKernel {
 public:
  explicit ResizeFlipAndNormalizeOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t size;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("size", &size));
    OP_REQUIRES(ctx, size >= 1 && size <= (1 << 16),
                errors::InvalidArgument("size must be in [1, 65536], got ", size));
    size_ = static_cast<int>(size);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& region = ctx->input(0);
    const Tensor& mean = ctx->input(1);
    const Tensor& offset = ctx->input(2);
    const Tensor& flip = ctx->input(3);
    const Tensor& rgb = ctx->input(4);
    OP_REQUIRES(ctx, region.dims() == 3 && region.dim_size(2) == 3 &&
                         region.dim_size(0) > 0 && region.dim_size(1) > 0 &&
                         region.dim_size(0) < (1 << 24) && region.dim_size(1) < (1 << 24),
                errors::InvalidArgument("region must be a non-empty [h, w, 3] image, got shape ",
                                        region.shape().DebugString()));
    OP_REQUIRES(ctx, mean.dims() == 3 && mean.dim_size(2) == 3,
                errors::InvalidArgument("mean_image must be [H, W, 3], got shape ",
                                        mean.shape().DebugString()));
    OP_REQUIRES(ctx, offset.dims() == 1 && offset.dim_size(0) == 2,
                errors::InvalidArgument("mean_offset must be [2] (y, x), got shape ",
                                        offset.shape().DebugString()));
    OP_REQUIRES(ctx, flip.dims() == 0,
                errors::InvalidArgument("flip must be a scalar, got shape ",
                                        flip.shape().DebugString()));
    OP_REQUIRES(ctx, rgb.dims() == 1 && rgb.dim_size(0) == 3,
                errors::InvalidArgument("rgb must be [3], got shape ",
                                        rgb.shape().DebugString()));
    const int oy = offset.vec<int32_t>()(0);
    const int ox = offset.vec<int32_t>()(1);
    OP_REQUIRES(ctx, oy >= 0 && ox >= 0 && oy + size_ <= mean.dim_size(0) &&
                         ox + size_ <= mean.dim_size(1),
                errors::InvalidArgument("the ", size_, "x", size_, " crop at mean_offset (", oy,
                                        ", ", ox, ") does not fit in mean_image of shape ",
                                        mean.shape().DebugString()));

    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({size_, size_, 3}), &output));

    const int height = static_cast<int>(region.dim_size(0));
    const int width = static_cast<int>(region.dim_size(1));
    const float scale_y = static_cast<float>(height) / size_;
    const float scale_x = static_cast<float>(width) / size_;
    const bool mirror = flip.scalar<bool>()();
    const float* add = rgb.flat<float>().data();

    // Per output column, in output order (mirrored if flip): the two source
    // columns, the weight of the right one, and the mean's column.
    std::vector<int> left(size_), right(size_), mean_col(size_);
    std::vector<float> weight(size_);
    for (int x = 0; x < size_; ++x) {
      const int xs = mirror ? size_ - 1 - x : x;
      const Tap tap = HalfPixelTap(xs, width, scale_x);
      left[x] = 3 * tap.lower;
      right[x] = 3 * tap.upper;
      weight[x] = tap.lerp;
      mean_col[x] = 3 * (ox + xs);
    }

    const uint8_t* src = region.flat<uint8_t>().data();
    const float* mean_data = mean.flat<float>().data();
    const int64_t mean_stride = 3 * mean.dim_size(1);
    float* out = output->flat<float>().data();
    std::vector<float> blend(3 * static_cast<size_t>(width));
    for (int y = 0; y < size_; ++y) {
      const Tap tap = HalfPixelTap(y, height, scale_y);
      const uint8_t* top = src + 3 * static_cast<int64_t>(width) * tap.lower;
      const uint8_t* bottom = src + 3 * static_cast<int64_t>(width) * tap.upper;
      // Vertical blend of the two source rows: contiguous, so it vectorises.
      for (int i = 0; i < 3 * width; ++i) {
        const float t = top[i];
        blend[i] = t + (static_cast<float>(bottom[i]) - t) * tap.lerp;
      }
      const float* mean_row = mean_data + (oy + y) * mean_stride;
      float* out_row = out + 3 * static_cast<int64_t>(size_) * y;
      for (int x = 0; x < size_; ++x) {
        const float* l = blend.data() + left[x];
        const float* r = blend.data() + right[x];
        const float* m = mean_row + mean_col[x];
        for (int c = 0; c < 3; ++c) {
          out_row[3 * x + c] = l[c] + (r[c] - l[c]) * weight[x] - m[c] + add[c];
        }
      }
    }
  }

 private:
  int size_;
};

REGISTER_KERNEL_BUILDER(Name("AlexnetTf>ResizeFlipAndNormalize").Device(DEVICE_CPU),
                        ResizeFlipAndNormalizeOp);

}  // namespace
}  // namespace alexnet_tf
