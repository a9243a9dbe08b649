// AdamW updates on the GPU, bit-identical to crates/edgetune-core/src/optim (adamw.rs `adamw_element`,
// state8bit.rs `adamw_update_8bit`): every element operation is an explicit IEEE round-to-
// nearest intrinsic in the CPU's order, so nothing is contracted to an FMA.
//
//   p ← p·decay;  m ← m + (1−β1)·(g − m);  v ← v·β2 + ((1−β2)·g)·g
//   p ← p + ((−step_size)·m) / (√v / bc2_sqrt + eps)
//
// f32 state: p, g, m, v: [n].
// 8-bit blockwise state (docs/METHODS.md#8-bit-adamw-state): blocks of 256 elements; absmax: [2·nb]
// (absmax_m[nb] then absmax_v[nb]); q_m, q_v: [n] u8 codes; maps: [512] f32 = signed map then
// unsigned map (DynamicMaps, sorted ascending). m = signed[q_m]·absmax_m[b], v = unsigned[q_v]·
// absmax_v[b]; after the update each moment is divided by the block's new absmax and stored
// as the nearest level (ties to the lower level); an all-zero block stores absmax 0 and codes
// signed_zero / 0.
#include "common.cuh"

struct EtAdamW {
  float decay, omb1, beta2, omb2, step_size, bc2_sqrt, eps;
};

__device__ __forceinline__ void et_adamw_element(float& p, float g, float& m, float& v,
                                                 const EtAdamW& k) {
  p = __fmul_rn(p, k.decay);
  m = __fadd_rn(m, __fmul_rn(k.omb1, __fadd_rn(g, -m)));
  v = __fadd_rn(__fmul_rn(v, k.beta2), __fmul_rn(__fmul_rn(k.omb2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), k.bc2_sqrt), k.eps);
  p = __fadd_rn(p, __fdiv_rn(__fmul_rn(-k.step_size, m), denom));
}

// Grid (cdiv(n, 256)), block 256.
extern "C" __global__ void __launch_bounds__(256)
et_adamw_f32(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
             float* __restrict__ v, int n, float decay, float one_minus_beta1, float beta2,
             float one_minus_beta2, float step_size, float bc2_sqrt, float eps) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const EtAdamW k = {decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps};
  float pi = p[i], mi = m[i], vi = v[i];
  et_adamw_element(pi, g[i], mi, vi, k);
  p[i] = pi;
  m[i] = mi;
  v[i] = vi;
}

// Code of the level of `map` (256 ascending values) nearest to x: first level ≥ x (Rust's
// partition_point), then the lower neighbour wins ties; beyond the ends → 0 / 255; NaN → 0.
__device__ __forceinline__ int et_quantize_nearest(const float* map, float x) {
  int lo = 0, hi = 256;  // partition_point(|l| l < x): first index with !(map[i] < x)
  while (lo < hi) {
    const int mid = (lo + hi) >> 1;
    if (map[mid] < x)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (lo == 0) return 0;
  if (lo == 256) return 255;
  return __fadd_rn(x, -map[lo - 1]) <= __fadd_rn(map[lo], -x) ? lo - 1 : lo;
}

// Grid (cdiv(n, 256)) — exactly one block per quantization block — block 256.
extern "C" __global__ void __launch_bounds__(256)
et_adamw_8bit(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ absmax,
              unsigned char* __restrict__ q_m, unsigned char* __restrict__ q_v,
              const float* __restrict__ maps, int signed_zero, int n, float decay,
              float one_minus_beta1, float beta2, float one_minus_beta2, float step_size,
              float bc2_sqrt, float eps) {
  __shared__ float smap[512];
  __shared__ float scratch[32];
  for (int j = threadIdx.x; j < 512; j += blockDim.x) smap[j] = maps[j];
  __syncthreads();
  const int nb = (n + 255) / 256;
  const int b = blockIdx.x;
  const int i = b * 256 + threadIdx.x;
  const bool live = i < n;
  const EtAdamW k = {decay, one_minus_beta1, beta2, one_minus_beta2, step_size, bc2_sqrt, eps};
  float mi = 0.0f, vi = 0.0f;
  if (live) {
    mi = __fmul_rn(smap[q_m[i]], absmax[b]);
    vi = __fmul_rn(smap[256 + q_v[i]], absmax[nb + b]);
    float pi = p[i];
    et_adamw_element(pi, g[i], mi, vi, k);
    p[i] = pi;
  }
  // fmaxf is exact, so the tree order does not matter: same absmax as the CPU's running max.
  const float max_m = et_block_max(live ? fabsf(mi) : 0.0f, scratch);
  const float max_v = et_block_max(live ? fabsf(vi) : 0.0f, scratch);
  if (threadIdx.x == 0) {
    absmax[b] = max_m;
    absmax[nb + b] = max_v;
  }
  if (live) {
    q_m[i] = (unsigned char)(max_m > 0.0f ? et_quantize_nearest(smap, __fdiv_rn(mi, max_m))
                                          : signed_zero);
    q_v[i] = (unsigned char)(max_v > 0.0f ? et_quantize_nearest(smap + 256, __fdiv_rn(vi, max_v))
                                          : 0);
  }
}
