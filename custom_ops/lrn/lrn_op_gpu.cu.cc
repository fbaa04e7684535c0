// CUDA kernels of the paper's local response normalization (forward and
// gradient), free of TensorFlow headers; see lrn_gpu_launcher.h.
//
// One thread per element of the [pixels, channels] tensor. The 2r+1 neighbours
// an element reads are the same few cache lines its warp already loaded, so
// DRAM traffic stays at one read per input and one write per output: the
// kernels are memory-bound and the extra arithmetic of the window is free.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "lrn_gpu_launcher.h"

namespace {

template <typename T>
struct Acc {
  using type = float;
};
template <>
struct Acc<double> {
  using type = double;
};

__host__ __device__ inline float ToAcc(float v) { return v; }
__host__ __device__ inline double ToAcc(double v) { return v; }
__host__ __device__ inline float ToAcc(__half v) { return __half2float(v); }
__host__ __device__ inline float ToAcc(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__host__ __device__ inline T FromAcc(typename Acc<T>::type v);
template <>
__host__ __device__ inline float FromAcc<float>(float v) {
  return v;
}
template <>
__host__ __device__ inline double FromAcc<double>(double v) {
  return v;
}
template <>
__host__ __device__ inline __half FromAcc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__host__ __device__ inline __nv_bfloat16 FromAcc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// n^-beta, with the paper's beta = 0.75 as two square roots instead of pow.
template <typename A>
__host__ __device__ inline A NegPow(A n, A beta) {
  using std::pow;
  using std::sqrt;
  if (beta == A(0.75)) {
    const A root = sqrt(n);
    return A(1) / (root * sqrt(root));
  }
  return pow(n, -beta);
}

// bias + alpha * sum of squares over channels c - r .. c + r of one pixel.
template <typename T>
__host__ __device__ inline typename Acc<T>::type Norm(const T* pixel, int c,
                                                      int channels, int r,
                                                      typename Acc<T>::type bias,
                                                      typename Acc<T>::type alpha) {
  using A = typename Acc<T>::type;
  const int lo = c - r < 0 ? 0 : c - r;
  const int hi = c + r > channels - 1 ? channels - 1 : c + r;
  A sum = 0;
  for (int j = lo; j <= hi; ++j) {
    const A v = ToAcc(pixel[j]);
    sum += v * v;
  }
  return bias + alpha * sum;
}

template <typename T>
__host__ __device__ inline T ForwardElement(const T* x, int64_t i,
                                            int channels, int r,
                                            typename Acc<T>::type bias,
                                            typename Acc<T>::type alpha,
                                            typename Acc<T>::type beta) {
  const int c = static_cast<int>(i % channels);
  const T* pixel = x + (i - c);
  const auto n = Norm(pixel, c, channels, r, bias, alpha);
  return FromAcc<T>(ToAcc(x[i]) * NegPow(n, beta));
}

// dx_j = dy_j n_j^-beta - 2 alpha beta x_j sum_{i in window(j)} dy_i x_i n_i^(-beta-1),
// times (x_j > 0) with through_relu (ReluGrad's product with 1 or 0).
template <typename T>
__host__ __device__ inline T BackwardElement(const T* dy, const T* x,
                                             int64_t e, int channels, int r,
                                             typename Acc<T>::type bias,
                                             typename Acc<T>::type alpha,
                                             typename Acc<T>::type beta,
                                             bool through_relu) {
  using A = typename Acc<T>::type;
  const int c = static_cast<int>(e % channels);
  const int64_t base = e - c;
  const int lo = c - r < 0 ? 0 : c - r;
  const int hi = c + r > channels - 1 ? channels - 1 : c + r;
  A cross = 0;
  A own_scale = 0;
  for (int i = lo; i <= hi; ++i) {
    const A n = Norm(x + base, i, channels, r, bias, alpha);
    const A scale = NegPow(n, beta);
    if (i == c) own_scale = scale;
    cross += ToAcc(dy[base + i]) * ToAcc(x[base + i]) * scale / n;
  }
  const T dx = FromAcc<T>(ToAcc(dy[e]) * own_scale -
                          A(2) * alpha * beta * ToAcc(x[e]) * cross);
  // As ReluGrad: the stored value times 1 or 0 (a float16 overflow stays inf * 0 = NaN).
  if (!through_relu) return dx;
  return FromAcc<T>(ToAcc(dx) * (ToAcc(x[e]) > A(0) ? A(1) : A(0)));
}

template <typename T>
__global__ void LrnForwardKernel(const T* __restrict__ x, T* __restrict__ y,
                                 int64_t count, int channels, int r,
                                 typename Acc<T>::type bias,
                                 typename Acc<T>::type alpha,
                                 typename Acc<T>::type beta) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(blockDim.x) * gridDim.x) {
    y[i] = ForwardElement(x, i, channels, r, bias, alpha, beta);
  }
}

template <typename T>
__global__ void LrnBackwardKernel(const T* __restrict__ dy,
                                  const T* __restrict__ x, T* __restrict__ dx,
                                  int64_t count, int channels, int r,
                                  typename Acc<T>::type bias,
                                  typename Acc<T>::type alpha,
                                  typename Acc<T>::type beta,
                                  bool through_relu) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count;
       i += int64_t(blockDim.x) * gridDim.x) {
    dx[i] = BackwardElement(dy, x, i, channels, r, bias, alpha, beta, through_relu);
  }
}

template <typename T>
int LaunchForward(const void* x, void* y, int64_t pixels, int channels, int r,
                  double bias, double alpha, double beta, int grid, int block,
                  void* stream) {
  using A = typename Acc<T>::type;
  const int64_t count = pixels * channels;
  if (count == 0) return 0;
  LrnForwardKernel<T><<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const T*>(x), static_cast<T*>(y), count, channels, r,
      A(bias), A(alpha), A(beta));
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int LaunchBackward(const void* dy, const void* x, void* dx, int64_t pixels,
                   int channels, int r, double bias, double alpha, double beta,
                   int through_relu, int grid, int block, void* stream) {
  using A = typename Acc<T>::type;
  const int64_t count = pixels * channels;
  if (count == 0) return 0;
  LrnBackwardKernel<T><<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(
      static_cast<const T*>(dy), static_cast<const T*>(x),
      static_cast<T*>(dx), count, channels, r, A(bias), A(alpha), A(beta),
      through_relu != 0);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

extern "C" {

int alexnet_lrn_forward(int dtype, const void* x, void* y, int64_t pixels,
                        int channels, int depth_radius, double bias,
                        double alpha, double beta, int grid, int block,
                        void* stream) {
  switch (dtype) {
    case ALEXNET_LRN_FLOAT16:
      return LaunchForward<__half>(x, y, pixels, channels, depth_radius, bias,
                                   alpha, beta, grid, block, stream);
    case ALEXNET_LRN_BFLOAT16:
      return LaunchForward<__nv_bfloat16>(x, y, pixels, channels,
                                          depth_radius, bias, alpha, beta,
                                          grid, block, stream);
    case ALEXNET_LRN_FLOAT32:
      return LaunchForward<float>(x, y, pixels, channels, depth_radius, bias,
                                  alpha, beta, grid, block, stream);
    case ALEXNET_LRN_FLOAT64:
      return LaunchForward<double>(x, y, pixels, channels, depth_radius, bias,
                                   alpha, beta, grid, block, stream);
  }
  return -1;
}

int alexnet_lrn_backward(int dtype, const void* dy, const void* x, void* dx,
                         int64_t pixels, int channels, int depth_radius,
                         double bias, double alpha, double beta,
                         int through_relu, int grid, int block, void* stream) {
  switch (dtype) {
    case ALEXNET_LRN_FLOAT16:
      return LaunchBackward<__half>(dy, x, dx, pixels, channels, depth_radius,
                                    bias, alpha, beta, through_relu, grid,
                                    block, stream);
    case ALEXNET_LRN_BFLOAT16:
      return LaunchBackward<__nv_bfloat16>(dy, x, dx, pixels, channels,
                                           depth_radius, bias, alpha, beta,
                                           through_relu, grid, block, stream);
    case ALEXNET_LRN_FLOAT32:
      return LaunchBackward<float>(dy, x, dx, pixels, channels, depth_radius,
                                   bias, alpha, beta, through_relu, grid,
                                   block, stream);
    case ALEXNET_LRN_FLOAT64:
      return LaunchBackward<double>(dy, x, dx, pixels, channels, depth_radius,
                                    bias, alpha, beta, through_relu, grid,
                                    block, stream);
  }
  return -1;
}

void alexnet_lrn_forward_host_f32(const float* x, float* y, int64_t pixels,
                                  int channels, int depth_radius, double bias,
                                  double alpha, double beta) {
  for (int64_t i = 0; i < pixels * channels; ++i) {
    y[i] = ForwardElement(x, i, channels, depth_radius, float(bias),
                          float(alpha), float(beta));
  }
}

void alexnet_lrn_backward_host_f32(const float* dy, const float* x, float* dx,
                                   int64_t pixels, int channels,
                                   int depth_radius, double bias, double alpha,
                                   double beta, int through_relu) {
  for (int64_t i = 0; i < pixels * channels; ++i) {
    dx[i] = BackwardElement(dy, x, i, channels, depth_radius, float(bias),
                            float(alpha), float(beta), through_relu != 0);
  }
}

const char* alexnet_lrn_error_string(int code) {
  if (code == -1) return "unknown dtype code";
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

}  // extern "C"
