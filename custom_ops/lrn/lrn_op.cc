// TensorFlow ops AlexnetTf>LocalResponseNorm and AlexnetTf>LocalResponseNormGrad:
// the paper's LRN (Section 3.3) on NHWC tensors, with CPU kernels here and CUDA
// kernels in lrn_op_gpu.cu.cc (registered under GOOGLE_CUDA).
//
// TensorFlow's own CPU LRN forms the window sum as a banded [C, C] matrix
// product per pixel block and its gradient as a scalar loop; here each pixel's
// channels are summed in a window of 2r+1 (vectorised passes for small r, a
// sum over blocks for large r), so both directions stay close to memory speed.
#define EIGEN_USE_THREADS
#if GOOGLE_CUDA
#define EIGEN_USE_GPU
#endif

#include "lrn_op.h"

#include <algorithm>
#include <cfloat>
#include <climits>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/types.h"
#include "tensorflow/core/platform/threadpool.h"

#if GOOGLE_CUDA
#include "lrn_gpu_launcher.h"
#include "tensorflow/core/util/gpu_launch_config.h"
#endif

#ifndef ALEXNET_TF_BUILT_FOR_TENSORFLOW
#define ALEXNET_TF_BUILT_FOR_TENSORFLOW "unknown"
#endif

// The TensorFlow version whose headers this library was compiled with, and the
// version of the ops' interface (their inputs and attributes; alexnet_tf/ops.py's
// OPS_VERSION). The Python loader reads both from the file before loading it:
// loading a library built against another framework version can crash the
// process, and one built from older sources lacks attributes the package sets.
extern "C" __attribute__((used, visibility("default")))
const char alexnet_tf_build_stamp[] =
    "alexnet_tf-built-for-tensorflow=" ALEXNET_TF_BUILT_FOR_TENSORFLOW
    ";alexnet_tf-ops-version=2;";

namespace alexnet_tf {

using ::tensorflow::DEVICE_CPU;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::shape_inference::InferenceContext;
using ::tensorflow::shape_inference::ShapeHandle;
namespace errors = ::tensorflow::errors;
using CPUDevice = Eigen::ThreadPoolDevice;

REGISTER_OP("AlexnetTf>LocalResponseNorm")
    .Input("input: T")
    .Output("output: T")
    .Attr("depth_radius: int = 2")
    .Attr("bias: float = 2.0")
    .Attr("alpha: float = 0.0001")
    .Attr("beta: float = 0.75")
    .Attr("T: {half, bfloat16, float, double} = DT_FLOAT")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle input;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &input));
      c->set_output(0, input);
      return absl::OkStatus();
    })
    .Doc(R"doc(
The paper's cross-channel local response normalization of an NHWC tensor:
output[..., i] = input[..., i] /
    (bias + alpha * sum_{j=max(0,i-r)}^{min(C-1,i+r)} input[..., j]^2)^beta
with r = depth_radius. alpha is not divided by the window size.
)doc");

REGISTER_OP("AlexnetTf>LocalResponseNormGrad")
    .Input("grads: T")
    .Input("input: T")
    .Output("output: T")
    .Attr("depth_radius: int = 2")
    .Attr("bias: float = 2.0")
    .Attr("alpha: float = 0.0001")
    .Attr("beta: float = 0.75")
    .Attr("through_relu: bool = false")
    .Attr("T: {half, bfloat16, float, double} = DT_FLOAT")
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle grads, input;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 4, &grads));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 4, &input));
      TF_RETURN_IF_ERROR(c->Merge(grads, input, &input));
      c->set_output(0, input);
      return absl::OkStatus();
    })
    .Doc(R"doc(
Gradient of AlexnetTf>LocalResponseNorm at `input`, applied to `grads`.

With through_relu, `input` is a ReLU's output and the gradient goes on through
that ReLU in the same pass: each output multiplied by (input > 0), exactly as
ReluGrad(output, input) would, without another pass over the tensor.
)doc");

namespace {

// float16 and bfloat16 are computed in float32; float64 stays float64.
template <typename T>
struct CpuAcc {
  using type = float;
};
template <>
struct CpuAcc<double> {
  using type = double;
};

// Up to this radius the window sum is an unrolled sum of 2r+1 shifted vector
// loads per channel (the paper's r = 2 is five); beyond it WindowSums' blocks
// are cheaper.
constexpr int kMaxDirectWindowRadius = 8;

template <int R, typename A>
void DirectWindowSums(const A* __restrict__ padded, int channels,
                      A* __restrict__ out) {
  for (int c = 0; c < channels; ++c) {
    A sum = padded[c];
    for (int d = 1; d <= 2 * R; ++d) sum += padded[c + d];
    out[c] = sum;
  }
}

template <typename A, int... R>
void DirectWindowSumsFor(int r, const A* padded, int channels, A* out,
                         std::integer_sequence<int, R...>) {
  ((r == R ? DirectWindowSums<R>(padded, channels, out) : void()), ...);
}

// out[c] = sum of padded[c .. c + 2r], where padded holds r zeros, the C
// values, then r zeros.
template <typename A>
void WindowSums(const A* __restrict__ padded, int channels, int r,
                A* __restrict__ out) {
  if (r <= kMaxDirectWindowRadius) {
    DirectWindowSumsFor(
        r, padded, channels, out,
        std::make_integer_sequence<int, kMaxDirectWindowRadius + 1>());
    return;
  }
  // Beyond it, blocks of w = 2r + 1 values: each window is the sum from its first
  // value to the end of its block plus the sum from the start of the next block to
  // its last value (van Herk / Gil-Werman), two passes and one add per channel
  // whatever r is. Nothing is ever subtracted, so a huge square that leaves the
  // window leaves no rounding residue behind, and a NaN or infinity stays in the
  // windows that hold it, as in the formula.
  const int w = 2 * r + 1;
  const int length = channels + 2 * r;
  thread_local std::vector<A> suffix, prefix;
  suffix.resize(length);
  prefix.resize(length);
  for (int k = 0; k < length; ++k) {
    prefix[k] = k % w == 0 ? padded[k] : prefix[k - 1] + padded[k];
  }
  for (int k = length - 1; k >= 0; --k) {
    suffix[k] = (k + 1) % w == 0 || k + 1 == length ? padded[k] : suffix[k + 1] + padded[k];
  }
  for (int c = 0; c < channels; ++c) {
    out[c] = c % w == 0 ? suffix[c] : suffix[c] + prefix[c + w - 1];
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// 1/sqrt(v) to about 2 ulp: the hardware's 12-bit estimate and one
// Newton-Raphson step, y' = y (1.5 - 0.5 v y^2).
inline __m256 RsqrtRefined(__m256 v) {
  const __m256 y = _mm256_rsqrt_ps(v);
  const __m256 half_v_y2 = _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v),
                                         _mm256_mul_ps(y, y));
  return _mm256_mul_ps(y, _mm256_sub_ps(_mm256_set1_ps(1.5f), half_v_y2));
}

// n^-3/4 and 1/n: a = n^-1/2, b = a^-1/2 = n^1/4, n^-3/4 = a * a * b and 1/n = a * a,
// without sqrt, pow or division, which would bound the kernel by their throughput.
// n is at least bias, at least twice float32's smallest normal value. For an
// infinite n (a square past float32's range) the estimates give NaN where the
// formula gives 0: those lanes are cleared. From n = 2^126 on, 1/n is subnormal,
// which TensorFlow's threads flush to zero, so the outputs there are 0 where the
// formula gives n^-3/4, below 1e-28.
inline void Scales8(__m256 n, __m256* scale, __m256* inv) {
  const __m256 a = RsqrtRefined(n);
  const __m256 a2 = _mm256_mul_ps(a, a);
  const __m256 infinite = _mm256_cmp_ps(n, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ);
  *inv = _mm256_andnot_ps(infinite, a2);
  *scale = _mm256_andnot_ps(infinite, _mm256_mul_ps(a2, RsqrtRefined(a)));
}

// g * (relu_output > 0), as TensorFlow's ReluGrad computes it (a product with 1 or 0,
// so the same bits, signed zeros and NaNs included).
inline __m256 ReluGrad8(__m256 g, __m256 relu_output) {
  const __m256 active = _mm256_cmp_ps(relu_output, _mm256_setzero_ps(), _CMP_GT_OQ);
  return _mm256_mul_ps(g, _mm256_and_ps(active, _mm256_set1_ps(1.0f)));
}
#endif

// From window sums s: n = bias + alpha s, scale = n^-beta and, if inv_norm is
// not null, inv_norm = 1 / n.
template <typename A>
void ScalesFromSums(const A* __restrict__ sums, int channels, A bias, A alpha,
                    A beta, A* __restrict__ scale, A* __restrict__ inv_norm) {
  int c = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<A, float>) {
    if (beta == 0.75f) {
      // The paper's beta in vectors (Scales8).
      const __m256 vbias = _mm256_set1_ps(bias), valpha = _mm256_set1_ps(alpha);
      for (; c + 8 <= channels; c += 8) {
        const __m256 n = _mm256_fmadd_ps(valpha, _mm256_loadu_ps(sums + c), vbias);
        __m256 scales, inv;
        Scales8(n, &scales, &inv);
        _mm256_storeu_ps(scale + c, scales);
        if (inv_norm != nullptr) _mm256_storeu_ps(inv_norm + c, inv);
      }
    }
  }
#endif
  for (; c < channels; ++c) {
    const A n = bias + alpha * sums[c];
    scale[c] = beta == A(0.75) ? A(1) / (std::sqrt(n) * std::sqrt(std::sqrt(n)))
                               : std::pow(n, -beta);
    if (inv_norm != nullptr) inv_norm[c] = A(1) / n;
  }
}

// out[c] = a[c] * b[c] - k * d[c] * e[c] (k = 0 and d = e = null for a plain product),
// times (relu_output[c] > 0) when relu_output is not null: ReluGrad's arithmetic, a
// product with 1 or 0.
// The paper net's outputs are hundreds of MB, far beyond the caches: with `stream`,
// float32 rows aligned to 32 bytes are written with non-temporal stores, which skip
// reading each cache line before overwriting it, a quarter to a third of the op's
// memory traffic. Outputs that fit in the caches (the small net's few MB, which the
// next op reads at once) are stored normally, to stay there.
template <typename T, typename A>
void WriteOutputRow(T* __restrict__ out, const A* __restrict__ a, const A* __restrict__ b,
                    A k, const A* __restrict__ d, const A* __restrict__ e,
                    const A* __restrict__ relu_output, int channels, bool stream) {
  int c = 0;
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float> && std::is_same_v<A, float>) {
    const bool aligned = reinterpret_cast<uintptr_t>(out) % 32 == 0;
    const __m256 vk = _mm256_set1_ps(k);
    for (; c + 8 <= channels; c += 8) {
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(a + c), _mm256_loadu_ps(b + c));
      if (d != nullptr) {
        v = _mm256_fnmadd_ps(_mm256_mul_ps(vk, _mm256_loadu_ps(d + c)),
                             _mm256_loadu_ps(e + c), v);
      }
      if (relu_output != nullptr) v = ReluGrad8(v, _mm256_loadu_ps(relu_output + c));
      if (stream && aligned) {
        _mm256_stream_ps(out + c, v);
      } else {
        _mm256_storeu_ps(out + c, v);
      }
    }
  }
#endif
  for (; c < channels; ++c) {
    A v = a[c] * b[c];
    if (d != nullptr) v -= k * d[c] * e[c];
    T stored = static_cast<T>(v);
    // ReluGrad multiplies the stored value, so a float16 overflow stays inf * 0 = NaN.
    if (relu_output != nullptr) {
      stored = static_cast<T>(static_cast<A>(stored) * (relu_output[c] > A(0) ? A(1) : A(0)));
    }
    out[c] = stored;
  }
}

// Input values in the accumulation type: the input itself when T is already
// that type, else converted into `buffer`.
template <typename A, typename T>
const A* AsAcc(const T* __restrict__ values, int channels, A* __restrict__ buffer) {
  if constexpr (std::is_same_v<T, A>) {
    return values;
  } else {
    for (int c = 0; c < channels; ++c) buffer[c] = static_cast<A>(values[c]);
    return buffer;
  }
}

#if defined(__AVX2__) && defined(__FMA__)
// Pixels per block of the float32 paths below: each block's squares are written
// first and read back after, so that the window's unaligned loads do not wait on
// the stores that just wrote them (a store-forwarding stall on every load that
// spans two stores, which had cost more than the arithmetic).
constexpr int kPixelBlock = 32;

// Fills rows[i] (r zeros, C values, r zeros; the zeros set once) with the squares
// of pixel i of the block.
inline void BlockSquares(const float* __restrict__ x, float* __restrict__ rows, int pixels,
                         int channels, int r) {
  const int stride = channels + 2 * r;
  for (int i = 0; i < pixels; ++i) {
    const float* __restrict__ xs = x + int64_t{i} * channels;
    float* __restrict__ squares = rows + i * stride + r;
    for (int c = 0; c < channels; ++c) squares[c] = xs[c] * xs[c];
  }
}

// The window sums of channels c .. c + 7 of a padded row: WindowSums' order.
inline __m256 WindowSum8(const float* __restrict__ row, int c, int r) {
  __m256 sum = _mm256_loadu_ps(row + c);
  for (int d = 1; d <= 2 * r; ++d) sum = _mm256_add_ps(sum, _mm256_loadu_ps(row + c + d));
  return sum;
}


inline void Store8(float* out, __m256 v, bool stream) {
  if (stream) {
    _mm256_stream_ps(out, v);
  } else {
    _mm256_storeu_ps(out, v);
  }
}

// The forward pass of float32 pixels whose channels are a multiple of 8, with
// beta = 0.75: the arithmetic of WindowSums, ScalesFromSums and WriteOutputRow, in
// the same order (so the same results), in 8-channel vectors and without their
// separate passes over each pixel's channels, which cost more than the arithmetic
// when a pixel has few channels (the small net's 16 and 32).
inline void ForwardBlockFloat8(const float* __restrict__ x, float* __restrict__ y,
                               float* __restrict__ rows, int pixels, int channels, int r,
                               __m256 vbias, __m256 valpha, bool stream) {
  BlockSquares(x, rows, pixels, channels, r);
  const int stride = channels + 2 * r;
  stream = stream && reinterpret_cast<uintptr_t>(y) % 32 == 0 && channels % 8 == 0;
  for (int i = 0; i < pixels; ++i) {
    const int64_t offset = int64_t{i} * channels;
    for (int c = 0; c < channels; c += 8) {
      __m256 scale, inv;
      Scales8(_mm256_fmadd_ps(valpha, WindowSum8(rows + i * stride, c, r), vbias), &scale,
              &inv);
      Store8(y + offset + c, _mm256_mul_ps(_mm256_loadu_ps(x + offset + c), scale), stream);
    }
  }
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
// The backward pass of such pixels: BackwardPixels' arithmetic, in its order, in
// 8-channel vectors. The block's rows of squares are then overwritten, pixel by
// pixel, with dy x n^-beta / n, whose window sums the second pass needs.
inline void BackwardBlockFloat8(const float* __restrict__ dy, const float* __restrict__ x,
                                float* __restrict__ dx, float* __restrict__ rows,
                                float* __restrict__ scales, int pixels, int channels, int r,
                                __m256 vbias, __m256 valpha, __m256 two_alpha_beta,
                                bool through_relu, bool stream) {
  BlockSquares(x, rows, pixels, channels, r);
  const int stride = channels + 2 * r;
  for (int i = 0; i < pixels; ++i) {
    const int64_t offset = int64_t{i} * channels;
    float* __restrict__ row = rows + i * stride;
    float* __restrict__ scale_row = scales + offset;
    for (int c = 0; c < channels; c += 8) {
      __m256 scale, inv;
      Scales8(_mm256_fmadd_ps(valpha, WindowSum8(row, c, r), vbias), &scale, &inv);
      _mm256_storeu_ps(scale_row + c, scale);
      // As BackwardPixels: ((dy * x) * scale) * inv_norm, into the next row's place
      // only once this row's sums are all read: kept in dx meanwhile.
      const __m256 term = _mm256_mul_ps(_mm256_mul_ps(
          _mm256_mul_ps(_mm256_loadu_ps(dy + offset + c), _mm256_loadu_ps(x + offset + c)),
          scale), inv);
      _mm256_storeu_ps(dx + offset + c, term);
    }
    for (int c = 0; c < channels; c += 8) {
      _mm256_storeu_ps(row + r + c, _mm256_loadu_ps(dx + offset + c));
    }
  }
  stream = stream && reinterpret_cast<uintptr_t>(dx) % 32 == 0;
  for (int i = 0; i < pixels; ++i) {
    const int64_t offset = int64_t{i} * channels;
    for (int c = 0; c < channels; c += 8) {
      const __m256 sum = WindowSum8(rows + i * stride, c, r);
      const __m256 xv = _mm256_loadu_ps(x + offset + c);
      __m256 v = _mm256_mul_ps(_mm256_loadu_ps(dy + offset + c),
                               _mm256_loadu_ps(scales + offset + c));
      v = _mm256_fnmadd_ps(_mm256_mul_ps(two_alpha_beta, xv), sum, v);
      if (through_relu) v = ReluGrad8(v, xv);
      Store8(dx + offset + c, v, stream);
    }
  }
}
#endif

// Channels of one pixel at most, and the window radius below them: a block of
// kPixelBlock pixels' padded channels stays far inside an int.
constexpr int64_t kMaxChannels = int64_t{1} << 24;

// Outputs from this size on are written with non-temporal stores (WriteOutputRow):
// larger than the caches of the machines this runs on.
constexpr int64_t kStreamingOutputBytes = int64_t{64} << 20;

template <typename T>
void ForwardPixels(const LrnParams& p, const T* x, T* y, int64_t begin,
                   int64_t end, int channels, bool stream) {
  using A = typename CpuAcc<T>::type;
  const int r = p.depth_radius;
  std::vector<A> padded(channels + 2 * r, A(0)), converted(channels),
      sums(channels), scale(channels);
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    if (channels % 8 == 0 && p.beta == 0.75f && r <= kMaxDirectWindowRadius) {
      const __m256 vbias = _mm256_set1_ps(p.bias), valpha = _mm256_set1_ps(p.alpha);
      std::vector<float> rows(kPixelBlock * (channels + 2 * r), 0.0f);
      for (int64_t pixel = begin; pixel < end; pixel += kPixelBlock) {
        const int pixels = static_cast<int>(std::min<int64_t>(kPixelBlock, end - pixel));
        ForwardBlockFloat8(x + pixel * channels, y + pixel * channels, rows.data(), pixels,
                           channels, r, vbias, valpha, stream);
      }
      _mm_sfence();
      return;
    }
  }
#endif
  A* __restrict__ squares = padded.data() + r;
  for (int64_t pixel = begin; pixel < end; ++pixel) {
    const A* __restrict__ xs = AsAcc(x + pixel * channels, channels, converted.data());
    T* __restrict__ yp = y + pixel * channels;
    for (int c = 0; c < channels; ++c) squares[c] = xs[c] * xs[c];
    WindowSums(padded.data(), channels, r, sums.data());
    ScalesFromSums(sums.data(), channels, A(p.bias), A(p.alpha), A(p.beta),
                   scale.data(), static_cast<A*>(nullptr));
    WriteOutputRow(yp, xs, scale.data(), A(0), static_cast<const A*>(nullptr),
                   static_cast<const A*>(nullptr), static_cast<const A*>(nullptr), channels,
                   stream);
  }
#if defined(__AVX2__)
  _mm_sfence();  // non-temporal stores are visible before the op completes
#endif
}

// With n_i = bias + alpha * sum_{j in W(i)} x_j^2 and W symmetric:
//   dx_j = dy_j n_j^-beta - 2 alpha beta x_j sum_{i in W(j)} dy_i x_i n_i^(-beta-1)
template <typename T>
void BackwardPixels(const LrnParams& p, const T* dy, const T* x, T* dx,
                    int64_t begin, int64_t end, int channels, bool stream) {
  using A = typename CpuAcc<T>::type;
  const int r = p.depth_radius;
  const A two_alpha_beta = A(2) * A(p.alpha) * A(p.beta);
  std::vector<A> padded(channels + 2 * r, A(0)), converted_x(channels),
      converted_dy(channels), sums(channels), scale(channels), inv_norm(channels);
#if defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) {
    if (channels % 8 == 0 && p.beta == 0.75f && r <= kMaxDirectWindowRadius) {
      const __m256 vbias = _mm256_set1_ps(p.bias), valpha = _mm256_set1_ps(p.alpha);
      const __m256 vk = _mm256_set1_ps(two_alpha_beta);
      std::vector<float> rows(kPixelBlock * (channels + 2 * r), 0.0f);
      std::vector<float> scales(kPixelBlock * channels);
      for (int64_t pixel = begin; pixel < end; pixel += kPixelBlock) {
        const int pixels = static_cast<int>(std::min<int64_t>(kPixelBlock, end - pixel));
        const int64_t offset = pixel * channels;
        BackwardBlockFloat8(dy + offset, x + offset, dx + offset, rows.data(), scales.data(),
                            pixels, channels, r, vbias, valpha, vk, p.through_relu, stream);
      }
      _mm_sfence();
      return;
    }
  }
#endif
  A* __restrict__ inner = padded.data() + r;
  for (int64_t pixel = begin; pixel < end; ++pixel) {
    const int64_t offset = pixel * channels;
    const A* __restrict__ xs = AsAcc(x + offset, channels, converted_x.data());
    const A* __restrict__ dys = AsAcc(dy + offset, channels, converted_dy.data());
    for (int c = 0; c < channels; ++c) inner[c] = xs[c] * xs[c];
    WindowSums(padded.data(), channels, r, sums.data());
    ScalesFromSums(sums.data(), channels, A(p.bias), A(p.alpha), A(p.beta),
                   scale.data(), inv_norm.data());
    // The padded buffer is reused for dy_i x_i n_i^(-beta-1), its zero
    // borders untouched, and sums for its window sums.
    for (int c = 0; c < channels; ++c) {
      inner[c] = dys[c] * xs[c] * scale[c] * inv_norm[c];
    }
    WindowSums(padded.data(), channels, r, sums.data());
    WriteOutputRow(dx + offset, dys, scale.data(), two_alpha_beta, xs, sums.data(),
                   p.through_relu ? xs : nullptr, channels, stream);
  }
#if defined(__AVX2__)
  _mm_sfence();
#endif
}

// Cycles per pixel, for the thread pool's sharding.
int64_t CostPerPixel(const LrnParams& p, int channels) {
  return int64_t{channels} * (std::min(2 * p.depth_radius + 1, 20) + 30);
}

}  // namespace

template <typename T>
struct LrnForward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const LrnParams& params, const T* x,
                  T* y, int64_t pixels, int channels) {
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const bool stream = pixels * channels * int64_t{sizeof(T)} >= kStreamingOutputBytes;
    pool->ParallelFor(pixels, CostPerPixel(params, channels),
                      [&](int64_t begin, int64_t end) {
                        ForwardPixels(params, x, y, begin, end, channels, stream);
                      });
  }
};

template <typename T>
struct LrnBackward<CPUDevice, T> {
  void operator()(OpKernelContext* ctx, const LrnParams& params, const T* dy,
                  const T* x, T* dx, int64_t pixels, int channels) {
    auto* pool = ctx->device()->tensorflow_cpu_worker_threads()->workers;
    const bool stream = pixels * channels * int64_t{sizeof(T)} >= kStreamingOutputBytes;
    pool->ParallelFor(pixels, 2 * CostPerPixel(params, channels),
                      [&](int64_t begin, int64_t end) {
                        BackwardPixels(params, dy, x, dx, begin, end, channels, stream);
                      });
  }
};

// Attributes are checked once, when the kernel is built; tensors at each call.
class LrnKernelBase : public OpKernel {
 public:
  explicit LrnKernelBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t depth_radius;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("depth_radius", &depth_radius));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("bias", &params_.bias));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("alpha", &params_.alpha));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("beta", &params_.beta));
    OP_REQUIRES(ctx, depth_radius >= 0 && depth_radius < INT_MAX / 4,
                errors::InvalidArgument(
                    "depth_radius must be a non-negative integer, got ",
                    depth_radius));
    params_.depth_radius = static_cast<int>(depth_radius);
    // A bias below twice float32's smallest normal value is refused too: the vector
    // kernels' refinement of n^-1/2 halves n, which must stay a normal number (a
    // subnormal one is flushed to zero in TensorFlow's threads).
    OP_REQUIRES(ctx, std::isfinite(params_.bias) && params_.bias >= 2 * FLT_MIN,
                errors::InvalidArgument("bias must be > 0 and at least ", 2 * FLT_MIN,
                                        " (twice float32's smallest normal value), got ",
                                        params_.bias));
    OP_REQUIRES(ctx, std::isfinite(params_.alpha) && params_.alpha >= 0,
                errors::InvalidArgument("alpha must be >= 0, got ",
                                        params_.alpha));
    OP_REQUIRES(ctx, std::isfinite(params_.beta) && params_.beta >= 0,
                errors::InvalidArgument("beta must be >= 0, got ", params_.beta));
  }

 protected:
  // A 4-D NHWC tensor whose channels are wider than the window radius.
  absl::Status CheckInput(const Tensor& t, const char* what) const {
    if (t.dims() != 4) {
      return errors::InvalidArgument(what, " must be 4-D (NHWC), got shape ",
                                     t.shape().DebugString());
    }
    const int64_t channels = t.dim_size(3);
    if (params_.depth_radius >= channels) {
      return errors::InvalidArgument(
          "depth_radius ", params_.depth_radius,
          " is wider than the channels of ", what, " shape ",
          t.shape().DebugString(), "; it must be < ", channels);
    }
    // The kernels index a block of pixels' channels (32 x (C + 2r)) in an int.
    if (channels > kMaxChannels) {
      return errors::InvalidArgument("too many channels in ", what, " shape ",
                                     t.shape().DebugString(), "; at most ", kMaxChannels);
    }
    return absl::OkStatus();
  }

  LrnParams params_;
};

template <typename Device, typename T>
class LrnOp : public LrnKernelBase {
 public:
  using LrnKernelBase::LrnKernelBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    OP_REQUIRES_OK(ctx, CheckInput(input, "input"));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &output));
    if (input.NumElements() == 0) return;
    const int channels = static_cast<int>(input.dim_size(3));
    LrnForward<Device, T>()(ctx, params_, input.flat<T>().data(),
                            output->flat<T>().data(),
                            input.NumElements() / channels, channels);
  }
};

template <typename Device, typename T>
class LrnGradOp : public LrnKernelBase {
 public:
  explicit LrnGradOp(OpKernelConstruction* ctx) : LrnKernelBase(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("through_relu", &params_.through_relu));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& grads = ctx->input(0);
    const Tensor& input = ctx->input(1);
    OP_REQUIRES_OK(ctx, CheckInput(input, "input"));
    OP_REQUIRES(ctx, grads.shape() == input.shape(),
                errors::InvalidArgument(
                    "grads and input must have the same shape, got ",
                    grads.shape().DebugString(), " and ",
                    input.shape().DebugString()));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &output));
    if (input.NumElements() == 0) return;
    const int channels = static_cast<int>(input.dim_size(3));
    LrnBackward<Device, T>()(ctx, params_, grads.flat<T>().data(),
                             input.flat<T>().data(), output->flat<T>().data(),
                             input.NumElements() / channels, channels);
  }
};

#define REGISTER_LRN_KERNELS(DEVICE_NAME, DEVICE, T)                        \
  REGISTER_KERNEL_BUILDER(Name("AlexnetTf>LocalResponseNorm")               \
                              .Device(DEVICE_NAME)                          \
                              .TypeConstraint<T>("T"),                      \
                          LrnOp<DEVICE, T>);                                \
  REGISTER_KERNEL_BUILDER(Name("AlexnetTf>LocalResponseNormGrad")           \
                              .Device(DEVICE_NAME)                          \
                              .TypeConstraint<T>("T"),                      \
                          LrnGradOp<DEVICE, T>);

REGISTER_LRN_KERNELS(DEVICE_CPU, CPUDevice, Eigen::half)
REGISTER_LRN_KERNELS(DEVICE_CPU, CPUDevice, Eigen::bfloat16)
REGISTER_LRN_KERNELS(DEVICE_CPU, CPUDevice, float)
REGISTER_LRN_KERNELS(DEVICE_CPU, CPUDevice, double)

#if GOOGLE_CUDA
using GPUDevice = Eigen::GpuDevice;
using ::tensorflow::DEVICE_GPU;

// Eigen::half and Eigen::bfloat16 have the bit layout of CUDA's __half and
// __nv_bfloat16, so the TF-free kernels take the same buffers.
template <typename T>
struct LauncherDtype;
template <>
struct LauncherDtype<Eigen::half> {
  static constexpr int value = ALEXNET_LRN_FLOAT16;
};
template <>
struct LauncherDtype<Eigen::bfloat16> {
  static constexpr int value = ALEXNET_LRN_BFLOAT16;
};
template <>
struct LauncherDtype<float> {
  static constexpr int value = ALEXNET_LRN_FLOAT32;
};
template <>
struct LauncherDtype<double> {
  static constexpr int value = ALEXNET_LRN_FLOAT64;
};

namespace {
absl::Status GpuLaunchConfigFor(OpKernelContext* ctx, int64_t count,
                                ::tensorflow::GpuLaunchConfig* config) {
  if (count > INT_MAX) {
    return errors::InvalidArgument("LRN on the GPU takes at most ", INT_MAX,
                                   " elements, got ", count);
  }
  *config = ::tensorflow::GetGpuLaunchConfig(static_cast<int>(count),
                                             ctx->eigen_device<GPUDevice>());
  return absl::OkStatus();
}
}  // namespace

template <typename T>
struct LrnForward<GPUDevice, T> {
  void operator()(OpKernelContext* ctx, const LrnParams& p, const T* x, T* y,
                  int64_t pixels, int channels) {
    ::tensorflow::GpuLaunchConfig config;
    OP_REQUIRES_OK(ctx, GpuLaunchConfigFor(ctx, pixels * channels, &config));
    const int status = alexnet_lrn_forward(
        LauncherDtype<T>::value, x, y, pixels, channels, p.depth_radius,
        p.bias, p.alpha, p.beta, config.block_count, config.thread_per_block,
        ctx->eigen_device<GPUDevice>().stream());
    OP_REQUIRES(ctx, status == 0,
                errors::Internal("LRN forward kernel launch failed: ",
                                 alexnet_lrn_error_string(status)));
  }
};

template <typename T>
struct LrnBackward<GPUDevice, T> {
  void operator()(OpKernelContext* ctx, const LrnParams& p, const T* dy,
                  const T* x, T* dx, int64_t pixels, int channels) {
    ::tensorflow::GpuLaunchConfig config;
    OP_REQUIRES_OK(ctx, GpuLaunchConfigFor(ctx, pixels * channels, &config));
    const int status = alexnet_lrn_backward(
        LauncherDtype<T>::value, dy, x, dx, pixels, channels, p.depth_radius,
        p.bias, p.alpha, p.beta, p.through_relu, config.block_count,
        config.thread_per_block, ctx->eigen_device<GPUDevice>().stream());
    OP_REQUIRES(ctx, status == 0,
                errors::Internal("LRN gradient kernel launch failed: ",
                                 alexnet_lrn_error_string(status)));
  }
};

REGISTER_LRN_KERNELS(DEVICE_GPU, GPUDevice, Eigen::half)
REGISTER_LRN_KERNELS(DEVICE_GPU, GPUDevice, Eigen::bfloat16)
REGISTER_LRN_KERNELS(DEVICE_GPU, GPUDevice, float)
REGISTER_LRN_KERNELS(DEVICE_GPU, GPUDevice, double)
#endif  // GOOGLE_CUDA

#undef REGISTER_LRN_KERNELS

}  // namespace alexnet_tf
