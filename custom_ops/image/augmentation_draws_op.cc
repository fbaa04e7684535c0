// TensorFlow op AlexnetTf>AugmentationDraws: the random choices of the paper's
// training augmentation (Section 4.1) for the index-th image of a stream, in one
// op instead of the two dozen small ones that input_pipeline's
// random_crop_window and _lighting_rgb are made of, with the same values:
//
//   crop seed [seed, 2 * index]: u = stateless_uniform([3]); offset = min(floor(u[:2] *
//     (image_size - crop_size + 1)), image_size - crop_size); flip = u[2] < 0.5
//   lighting seed [seed, 2 * index + 1]: a = stateless_normal([3]) * stddev;
//     rgb = a @ lighting_basis
//
// The draws use TensorFlow's own seed scrambling (GenerateKey), Philox generator
// and distributions, which is what tf.random.stateless_uniform and
// stateless_normal run on the CPU.
#include <cmath>
#include <cstdint>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/kernels/stateless_random_ops.h"
#include "tensorflow/core/lib/random/philox_random.h"
#include "tensorflow/core/lib/random/random_distributions.h"

namespace alexnet_tf {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::random::PhiloxRandom;
using ::tensorflow::shape_inference::InferenceContext;
namespace errors = ::tensorflow::errors;

REGISTER_OP("AlexnetTf>AugmentationDraws")
    .Input("index: int64")
    .Input("lighting_basis: float")
    .Output("offset: int32")
    .Output("flip: bool")
    .Output("rgb: float")
    .Attr("seed: int")
    .Attr("image_size: int >= 1")
    .Attr("crop_size: int >= 1")
    .Attr("lighting_stddev: float")
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->MakeShape({2}));
      c->set_output(1, c->Scalar());
      c->set_output(2, c->MakeShape({3}));
      return absl::OkStatus();
    })
    .Doc(R"doc(
The crop offset (y, x) in the image_size square, the mirror coin and the PCA
lighting vector (a @ lighting_basis, a ~ N(0, lighting_stddev) per component) of
the index-th image of a stream seeded by seed.
)doc");

namespace {

constexpr int64_t kIndexLimit = int64_t{1} << 62;

// The generator that TensorFlow's stateless ops build from seed (seed0, seed1).
absl::Status SeededPhilox(int64_t seed0, int64_t seed1, PhiloxRandom* generator) {
  Tensor seed(tensorflow::DT_INT64, TensorShape({2}));
  seed.vec<int64_t>()(0) = seed0;
  seed.vec<int64_t>()(1) = seed1;
  PhiloxRandom::Key key;
  PhiloxRandom::ResultType counter;
  TF_RETURN_IF_ERROR(tensorflow::GenerateKey(seed, &key, &counter));
  *generator = PhiloxRandom(counter, key);
  return absl::OkStatus();
}

class AugmentationDrawsOp : public OpKernel {
 public:
  explicit AugmentationDrawsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t image_size = 0, crop_size = 0;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("image_size", &image_size));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("crop_size", &crop_size));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("lighting_stddev", &stddev_));
    OP_REQUIRES(ctx, crop_size <= image_size && image_size <= (1 << 24),
                errors::InvalidArgument("crop_size ", crop_size, " must be at most image_size ",
                                        image_size, " (at most 2^24)"));
    OP_REQUIRES(ctx, std::isfinite(stddev_) && stddev_ >= 0.0f,
                errors::InvalidArgument("lighting_stddev must be finite and >= 0, got ",
                                        stddev_));
    span_ = static_cast<int>(image_size - crop_size + 1);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& index = ctx->input(0);
    const Tensor& basis = ctx->input(1);
    OP_REQUIRES(ctx, index.dims() == 0,
                errors::InvalidArgument("index must be a scalar, got shape ",
                                        index.shape().DebugString()));
    OP_REQUIRES(ctx, basis.dims() == 2 && basis.dim_size(0) == 3 && basis.dim_size(1) == 3,
                errors::InvalidArgument("lighting_basis must be [3, 3], got shape ",
                                        basis.shape().DebugString()));
    const int64_t i = index.scalar<int64_t>()();
    // The seeds 2i and 2i + 1 must not overflow.
    OP_REQUIRES(ctx, i >= 0 && i < kIndexLimit,
                errors::InvalidArgument("index must be in [0, 2^62), got ", i));
    const auto b = basis.matrix<float>();
    for (int k = 0; k < 3; ++k) {
      for (int c = 0; c < 3; ++c) {
        OP_REQUIRES(ctx, std::isfinite(b(k, c)),
                    errors::InvalidArgument("lighting_basis must be finite, got ", b(k, c),
                                            " at [", k, ", ", c, "]"));
      }
    }

    PhiloxRandom crop_generator;
    OP_REQUIRES_OK(ctx, SeededPhilox(seed_, 2 * i, &crop_generator));
    const auto u =
        tensorflow::random::UniformDistribution<PhiloxRandom, float>()(&crop_generator);
    PhiloxRandom lighting_generator;
    OP_REQUIRES_OK(ctx, SeededPhilox(seed_, 2 * i + 1, &lighting_generator));
    const auto n =
        tensorflow::random::NormalDistribution<PhiloxRandom, float>()(&lighting_generator);

    Tensor* offset = nullptr;
    Tensor* flip = nullptr;
    Tensor* rgb = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({2}), &offset));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &flip));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({3}), &rgb));
    const float span = static_cast<float>(span_);
    for (int k = 0; k < 2; ++k) {
      offset->vec<int32_t>()(k) =
          std::min(static_cast<int32_t>(std::floor(u[k] * span)), span_ - 1);
    }
    flip->scalar<bool>()() = u[2] < 0.5f;
    for (int c = 0; c < 3; ++c) {
      float sum = 0.0f;
      for (int k = 0; k < 3; ++k) sum += n[k] * stddev_ * b(k, c);
      rgb->vec<float>()(c) = sum;
    }
  }

 private:
  int64_t seed_ = 0;
  float stddev_ = 0.0f;
  int span_ = 1;
};

REGISTER_KERNEL_BUILDER(Name("AlexnetTf>AugmentationDraws").Device(DEVICE_CPU),
                        AugmentationDrawsOp);

}  // namespace
}  // namespace alexnet_tf
