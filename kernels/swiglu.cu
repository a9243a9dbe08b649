// SwiGLU forward and backward (Backend::swiglu, Backend::swiglu_backward), element-wise over
// n = n_tokens · ffn values; mirrors crates/edgetune-core/src/backend/cpu/swiglu.rs.
//
//   out = silu(gate) · up,  silu(g) = g / (1 + e^−g)
//   σ = 1 / (1 + e^−g):  dgate = dh · up · σ · (1 + g·(1 − σ)),  dup = dh · silu(g)
// expf overflows to +inf for g < −88: g / inf = −0 and σ = 0, the correct limits.
#include "common.cuh"

// Grid (cdiv(n, 256)), block 256.
extern "C" __global__ void __launch_bounds__(256)
et_swiglu_fwd(const float* __restrict__ gate, const float* __restrict__ up,
              float* __restrict__ out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = g / (1.0f + expf(-g)) * up[i];
}

// Grid (cdiv(n, 256)), block 256. Overwrites dgate and dup.
extern "C" __global__ void __launch_bounds__(256)
et_swiglu_bwd(const float* __restrict__ gate, const float* __restrict__ up,
              const float* __restrict__ dh, float* __restrict__ dgate, float* __restrict__ dup,
              int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i], u = up[i], d = dh[i];
  const float sig = 1.0f / (1.0f + expf(-g));
  const float silu = g * sig;
  dgate[i] = d * u * (sig * (1.0f + g * (1.0f - sig)));
  dup[i] = d * silu;
}
