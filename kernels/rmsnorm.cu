// RMSNorm forward and input gradient (Backend::rmsnorm, Backend::rmsnorm_backward), one block
// per row; mirrors crates/edgetune-core/src/backend/cpu/rmsnorm.rs.
//
//   x, y, dy, dx: [n, dim]   w: [dim]   rstd: [n]
//   forward:  rstd[i] = 1 / sqrt(Σ_j x[i,j]² / dim + eps),  y[i,j] = x[i,j] · rstd[i] · w[j]
//   backward: dx[i,k] = r · (w[k]·dy[i,k] − x[i,k] · r²/dim · Σ_j dy[i,j]·w[j]·x[i,j]),  r = rstd[i]
//
// Sums are f32 per thread (strided), then a fixed-order block tree: deterministic.
#include "common.cuh"

// Grid (n), block 256. `rstd` may be NULL.
extern "C" __global__ void __launch_bounds__(256)
et_rmsnorm_fwd(const float* __restrict__ x, const float* __restrict__ w, float* __restrict__ y,
               float* __restrict__ rstd, int n, int dim, float eps) {
  __shared__ float scratch[32];
  const int i = blockIdx.x;
  if (i >= n) return;
  const float* xr = x + (size_t)i * dim;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) ss = fmaf(xr[j], xr[j], ss);
  ss = et_block_sum(ss, scratch);
  const float r = 1.0f / sqrtf(ss / (float)dim + eps);
  float* yr = y + (size_t)i * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = xr[j] * r * w[j];
  if (rstd != 0 && threadIdx.x == 0) rstd[i] = r;
}

// Grid (n), block 256. Overwrites dx.
extern "C" __global__ void __launch_bounds__(256)
et_rmsnorm_bwd(const float* __restrict__ x, const float* __restrict__ w,
               const float* __restrict__ rstd, const float* __restrict__ dy,
               float* __restrict__ dx, int n, int dim) {
  __shared__ float scratch[32];
  const int i = blockIdx.x;
  if (i >= n) return;
  const float* xr = x + (size_t)i * dim;
  const float* dyr = dy + (size_t)i * dim;
  float dot = 0.0f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dot = fmaf(dyr[j] * w[j], xr[j], dot);
  dot = et_block_sum(dot, scratch);
  const float r = rstd[i];
  const float c = r * r / (float)dim * dot;
  float* dxr = dx + (size_t)i * dim;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) dxr[j] = r * (w[j] * dyr[j] - xr[j] * c);
}
