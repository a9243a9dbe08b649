// Element-wise utilities over n f32 values: the residual add (Backend::add_assign), and zero /
// copy / scale (gradient clipping, zeroing gradient buffers, ignored cross-entropy chunks).
//
//   et_add_assign: x[i] += y[i]     et_scale: x[i] *= s     et_zero: x[i] = 0
//   et_copy: dst[i] = src[i] (non-overlapping)
#include "common.cuh"

// All: grid (cdiv(n, 256)), block 256.
extern "C" __global__ void __launch_bounds__(256)
et_add_assign(float* __restrict__ x, const float* __restrict__ y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += y[i];
}

extern "C" __global__ void __launch_bounds__(256) et_scale(float* __restrict__ x, float s, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= s;
}

extern "C" __global__ void __launch_bounds__(256) et_zero(float* __restrict__ x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = 0.0f;
}

extern "C" __global__ void __launch_bounds__(256)
et_copy(float* __restrict__ dst, const float* __restrict__ src, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = src[i];
}
