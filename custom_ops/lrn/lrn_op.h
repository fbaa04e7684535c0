// The paper's cross-channel local response normalization (Section 3.3):
//   b[i] = a[i] / (bias + alpha * sum_{|j - i| <= depth_radius} a[j]^2) ^ beta
// over the channels of each pixel of an NHWC tensor.
#ifndef ALEXNET_TF_CUSTOM_OPS_LRN_LRN_OP_H_
#define ALEXNET_TF_CUSTOM_OPS_LRN_LRN_OP_H_

#include <cstdint>

#include "tensorflow/core/framework/op_kernel.h"

namespace alexnet_tf {

struct LrnParams {
  int depth_radius;
  float bias;
  float alpha;
  float beta;
  // The gradient only: also through the ReLU whose output is the LRN's input.
  bool through_relu = false;
};

// y = LRN(x), x and y of [pixels, channels].
template <typename Device, typename T>
struct LrnForward {
  void operator()(tensorflow::OpKernelContext* ctx, const LrnParams& params,
                  const T* x, T* y, int64_t pixels, int channels);
};

// dx = gradient of LRN at x applied to dy, all of [pixels, channels]; with
// params.through_relu, times (x > 0).
template <typename Device, typename T>
struct LrnBackward {
  void operator()(tensorflow::OpKernelContext* ctx, const LrnParams& params,
                  const T* dy, const T* x, T* dx, int64_t pixels,
                  int channels);
};

}  // namespace alexnet_tf

#endif  // ALEXNET_TF_CUSTOM_OPS_LRN_LRN_OP_H_
