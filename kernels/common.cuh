// Shared helpers of the edgetune kernels: qualifiers, f16/bf16 conversions, warp/block
// reductions. Included by every kernels/*.cu (NVRTC, -I kernels). No CUDA headers are needed:
// conversions use inline PTX, so the PTX does not depend on header versions.
//
// The decoding routines (dequant.cuh) also compile as plain C++ (g++) for the host-side test
// scripts/test-dequant-cuh.sh, hence the ET_HD / ET_HOST switches below.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define ET_CUDA 1
#define ET_HD __device__ __forceinline__
// Dynamic shared memory of a launch, as an array of T.
#define ET_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#else
// Host build: the CPU emulation of the CUDA execution model used by the kernel tests
// (kernels/test/emu.h: one std::thread per CUDA thread, barriers for __syncthreads and warps).
#define ET_CUDA 0
#include "test/emu.h"
#define ET_HD static inline
#endif

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef signed char i8;

// IEEE half (bits) -> f32, exact.
ET_HD float et_half_to_float(u16 h) {
#if ET_CUDA
  float f;
  asm("{ .reg .b16 t; mov.b16 t, %1; cvt.f32.f16 %0, t; }" : "=f"(f) : "h"(h));
  return f;
#else
  u32 sign = (u32)(h >> 15) << 31;
  u32 exp = (h >> 10) & 0x1f;
  u32 man = h & 0x3ff;
  u32 bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {
      // Subnormal: normalise.
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while ((man & 0x400) == 0);
      bits = sign | ((u32)(127 - 15 - e) << 23) | ((man & 0x3ff) << 13);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &bits, 4);
  return f;
#endif
}

// bf16 (bits) -> f32, exact.
ET_HD float et_bf16_to_float(u16 h) {
  u32 bits = (u32)h << 16;
#if ET_CUDA
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, 4);
  return f;
#endif
}

// Unaligned little-endian loads from raw GGUF bytes (blocks are only 2-byte aligned at best).
ET_HD u16 et_ld_u16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }
ET_HD u32 et_ld_u32(const u8* p) {
  return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}
ET_HD float et_ld_f16(const u8* p) { return et_half_to_float(et_ld_u16(p)); }
ET_HD float et_ld_f32(const u8* p) {
  u32 bits = et_ld_u32(p);
#if ET_CUDA
  return __uint_as_float(bits);
#else
  float f;
  memcpy(&f, &bits, 4);
  return f;
#endif
}

// Warp-wide sum / max (all 32 lanes active), result in every lane.
__device__ __forceinline__ float et_warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ double et_warp_sum_f64(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float et_warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum for blockDim.x a multiple of 32 (≤ 1024); `scratch` holds 32 floats of shared
// memory. Every thread gets the result. Fixed reduction order: deterministic.
__device__ __forceinline__ float et_block_sum(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = et_warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nw ? scratch[lane] : 0.0f;
  return et_warp_sum(v);
}
__device__ __forceinline__ double et_block_sum_f64(double v, double* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = et_warp_sum_f64(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nw ? scratch[lane] : 0.0;
  return et_warp_sum_f64(v);
}
__device__ __forceinline__ float et_block_max(float v, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = et_warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < nw ? scratch[lane] : -__int_as_float(0x7f800000);
  return et_warp_max(v);
}
