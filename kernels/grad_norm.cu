// Sum of squares of a gradient tensor in f64 (optim::clip::sum_squares), for the global
// gradient norm: two deterministic stages (fixed grid, fixed tree order).
//
//   et_sum_squares: partials[b] = Σ g[i]² over block b's grid-stride range, g: [n]
//   et_reduce_f64:  out[0] = (accumulate ? out[0] : 0) + Σ_{b < m} partials[b]
// Each f32 square is exact in f64; the host takes sqrt of the accumulated total.
#include "common.cuh"

// Grid (G = min(1024, cdiv(n, 2048)), at least 1), block 256.
extern "C" __global__ void __launch_bounds__(256)
et_sum_squares(const float* __restrict__ g, int n, double* __restrict__ partials) {
  __shared__ double scratch[32];
  double acc = 0.0;
  const size_t stride = (size_t)gridDim.x * blockDim.x;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (size_t)n; i += stride) {
    const double v = (double)g[i];
    acc += v * v;
  }
  acc = et_block_sum_f64(acc, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// Grid (1), block 256.
extern "C" __global__ void __launch_bounds__(256)
et_reduce_f64(const double* __restrict__ partials, int m, double* __restrict__ out,
              int accumulate) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < m; i += blockDim.x) acc += partials[i];
  acc = et_block_sum_f64(acc, scratch);
  if (threadIdx.x == 0) out[0] = (accumulate ? out[0] : 0.0) + acc;
}
