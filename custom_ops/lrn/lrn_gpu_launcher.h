// C-style entry points of the CUDA LRN kernels.
//
// Nothing here depends on TensorFlow, so lrn_op_gpu.cu.cc can be compiled with
// plain nvcc and driven from Python (ctypes + CuPy) to check the kernels against
// NumPy on any CUDA machine: see tools/check_cuda_lrn.py. TensorFlow's GPU
// kernels (lrn_op.cc, under GOOGLE_CUDA) call the same functions with launch
// sizes from GetGpuLaunchConfig and the op's stream.
#ifndef ALEXNET_TF_CUSTOM_OPS_LRN_LRN_GPU_LAUNCHER_H_
#define ALEXNET_TF_CUSTOM_OPS_LRN_LRN_GPU_LAUNCHER_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types, in the order of the kernels' template instantiations.
enum AlexnetLrnDtype {
  ALEXNET_LRN_FLOAT16 = 0,
  ALEXNET_LRN_BFLOAT16 = 1,
  ALEXNET_LRN_FLOAT32 = 2,
  ALEXNET_LRN_FLOAT64 = 3,
};

// All tensors are NHWC, contiguous, flattened to [pixels, channels].
// Return 0 on success, else a cudaError_t value (or -1 for an unknown dtype).
int alexnet_lrn_forward(int dtype, const void* x, void* y, int64_t pixels,
                        int channels, int depth_radius, double bias,
                        double alpha, double beta, int grid, int block,
                        void* stream);

// dx = d(LRN(x))/dx applied to dy; with through_relu != 0, times (x > 0): on
// through the ReLU whose output x is.
int alexnet_lrn_backward(int dtype, const void* dy, const void* x, void* dx,
                         int64_t pixels, int channels, int depth_radius,
                         double bias, double alpha, double beta,
                         int through_relu, int grid, int block, void* stream);

// The same per-element code run on the host, float32 only: lets the kernel
// bodies be checked against NumPy on a machine with nvcc but no GPU.
void alexnet_lrn_forward_host_f32(const float* x, float* y, int64_t pixels,
                                  int channels, int depth_radius, double bias,
                                  double alpha, double beta);
void alexnet_lrn_backward_host_f32(const float* dy, const float* x, float* dx,
                                   int64_t pixels, int channels,
                                   int depth_radius, double bias, double alpha,
                                   double beta, int through_relu);

const char* alexnet_lrn_error_string(int code);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif  // ALEXNET_TF_CUSTOM_OPS_LRN_LRN_GPU_LAUNCHER_H_
