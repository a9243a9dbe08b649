// Quantized matrix products (Backend::matmul_xwt / Backend::matmul_dyw), reading GGUF blocks
// straight from the weight bytes:
//
//   xwt: y[n, out]  = x[n, in]   · Ŵᵀ      W = [out, in] quantized, row r at w + r·row_bytes
//   dyw: dx[n, in]  = dy[n, out] · Ŵ       (input gradient; the frozen base has no dW)
//
// Ŵ is decoded 16 elements at a time by et_dequant16 (dequant.cuh: every ggml type). Two paths:
//
// - `_mma` (sm_80+, compiled out of the sm72 PTX): a block computes a 64×64 tile of the output
//   with 4 warps (2×2, 32×32 each = 2×4 m16n8 tiles), K in steps of 32: the activation tile is
//   converted to bf16 and the W tile decoded to bf16 into shared memory (rows padded to 40
//   bf16 = 80 bytes so the fragment loads hit 32 distinct banks), then
//   `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32` accumulates in f32 registers.
//   For dyw the W tile is stored transposed (Bs[n][k] = W[k][n]) so both products use the
//   same "row.col" fragment code.
// - `_simple` (any arch, f32 FMA): xwt with one warp per W row and 4 tokens per block (W read
//   once per 4 tokens: the generation path, and everything on sm_72); dyw with 16 column
//   groups × 16 row lanes per block, partial sums reduced through shared memory.
//
// Requirements (checked by the host): in % 16 == 0; n, out, in ≥ 1.
#include "dequant.cuh"

// ---------------------------------------------------------------------------------------------
// Simple f32 paths (all architectures)

// y[n, out] = x[n, in] · Ŵᵀ. Grid (cdiv(out, 8), cdiv(n, 4)), block 256.
extern "C" __global__ void __launch_bounds__(256)
et_matmul_xwt_simple(const float* __restrict__ x, const unsigned char* __restrict__ w, int wtype,
                     int row_bytes, float* __restrict__ y, int n, int out, int in) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = blockIdx.x * 8 + warp;
  const int t0 = blockIdx.y * 4;
  if (r >= out) return;
  const int nt = min(4, n - t0);
  const u8* wr = w + (size_t)r * (size_t)row_bytes;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const int groups = in / 16;
  for (int g = lane; g < groups; g += 32) {
    float v[16];
    et_dequant16(wtype, wr, g, in - 16 * g, v);
#pragma unroll
    for (int t = 0; t < 4; t++) {
      if (t < nt) {
        const float* xr = x + (size_t)(t0 + t) * in + 16 * g;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < 16; j++) s = fmaf(v[j], xr[j], s);
        acc[t] += s;
      }
    }
  }
#pragma unroll
  for (int t = 0; t < 4; t++) {
    const float s = et_warp_sum(acc[t]);
    if (lane == 0 && t < nt) y[(size_t)(t0 + t) * out + r] = s;
  }
}

// dx[n, in] = dy[n, out] · Ŵ. Grid (cdiv(in, 256), cdiv(n, 4)), block 256: thread (cg = t%16,
// rl = t/16) sums rows r ≡ rl (mod 16) for the 16 columns of group blockIdx.x·16 + cg.
extern "C" __global__ void __launch_bounds__(256)
et_matmul_dyw_simple(const float* __restrict__ dy, const unsigned char* __restrict__ w, int wtype,
                     int row_bytes, float* __restrict__ dx, int n, int out, int in) {
  __shared__ float red[16][257];
  const int cg = threadIdx.x & 15, rl = threadIdx.x >> 4;
  const int g = blockIdx.x * 16 + cg;
  const int t0 = blockIdx.y * 4;
  const int nt = min(4, n - t0);
  const bool active = 16 * g < in;
  float acc[4][16];
#pragma unroll
  for (int t = 0; t < 4; t++)
#pragma unroll
    for (int j = 0; j < 16; j++) acc[t][j] = 0.0f;
  if (active) {
    for (int r = rl; r < out; r += 16) {
      float v[16];
      et_dequant16(wtype, w + (size_t)r * (size_t)row_bytes, g, in - 16 * g, v);
#pragma unroll
      for (int t = 0; t < 4; t++) {
        const float d = t < nt ? dy[(size_t)(t0 + t) * out + r] : 0.0f;
#pragma unroll
        for (int j = 0; j < 16; j++) acc[t][j] = fmaf(d, v[j], acc[t][j]);
      }
    }
  }
  const int col = blockIdx.x * 256 + threadIdx.x;
#pragma unroll
  for (int t = 0; t < 4; t++) {
#pragma unroll
    for (int j = 0; j < 16; j++) red[rl][cg * 16 + j] = acc[t][j];
    __syncthreads();
    float s = 0.0f;
#pragma unroll
    for (int k = 0; k < 16; k++) s += red[k][threadIdx.x];
    if (t < nt && col < in) dx[(size_t)(t0 + t) * in + col] = s;
    __syncthreads();
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core paths (sm_80+: bf16 mma.sync)

#if !ET_CUDA || __CUDA_ARCH__ >= 800

#define MM_BM 64
#define MM_BN 64
#define MM_BK 32
#define MM_LD 40  // bf16 per shared row: BK + 8 (80 bytes: conflict-free fragment loads)

// Two f32 -> one register of two bf16 (round to nearest even); `lo` in the low half.
__device__ __forceinline__ u32 et_pack_bf16x2(float lo, float hi) {
#if ET_CUDA
  u32 r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return et_emu_bf16_bits(lo) | (et_emu_bf16_bits(hi) << 16);
#endif
}

// A tile: rows m0.. of a row-major f32 [rows, ld] matrix, columns k0..k0+32, to bf16 As[64][LD]
// (zeros outside rows × kmax).
__device__ __forceinline__ void et_load_act_tile(u16* As, const float* a, int rows, int ld,
                                                 int m0, int k0, int kmax) {
  for (int idx = threadIdx.x; idx < MM_BM * MM_BK / 2; idx += 128) {
    const int r = idx >> 4, cp = (idx & 15) * 2;
    const int row = m0 + r, c = k0 + cp;
    float lo = 0.0f, hi = 0.0f;
    if (row < rows) {
      const float* p = a + (size_t)row * ld + c;
      if (c < kmax) lo = p[0];
      if (c + 1 < kmax) hi = p[1];
    }
    *(u32*)(As + r * MM_LD + cp) = et_pack_bf16x2(lo, hi);
  }
}

// acc[mt][nt][4] += As(warp rows) · Bs(warp cols)ᵀ over the 32-wide K tile.
__device__ __forceinline__ void et_mma_tile(const u16* As, const u16* Bs, float acc[2][4][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int kk = 0; kk < MM_BK; kk += 16) {
    u32 a[2][4], b[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; mt++) {
      const u16* p = As + (wm + mt * 16 + gid) * MM_LD + kk + tig * 2;
      a[mt][0] = *(const u32*)(p);
      a[mt][1] = *(const u32*)(p + 8 * MM_LD);
      a[mt][2] = *(const u32*)(p + 8);
      a[mt][3] = *(const u32*)(p + 8 * MM_LD + 8);
    }
#pragma unroll
    for (int nt = 0; nt < 4; nt++) {
      const u16* p = Bs + (wn + nt * 8 + gid) * MM_LD + kk + tig * 2;
      b[nt][0] = *(const u32*)(p);
      b[nt][1] = *(const u32*)(p + 8);
    }
#pragma unroll
    for (int mt = 0; mt < 2; mt++)
#pragma unroll
      for (int nt = 0; nt < 4; nt++) {
        float* c = acc[mt][nt];
#if !ET_CUDA
        et_emu_mma_m16n8k16_bf16(c, a[mt], b[nt]);
#else
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[mt][0]), "r"(a[mt][1]), "r"(a[mt][2]), "r"(a[mt][3]), "r"(b[nt][0]),
              "r"(b[nt][1]));
#endif
      }
  }
}

// Writes the block's 64×64 accumulator tile to c[rows, cols] at (m0, n0), bounds-checked.
__device__ __forceinline__ void et_store_tile(float* c, int rows, int cols, int m0, int n0,
                                              float acc[2][4][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const int gid = lane >> 2, tig = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 2; mt++)
#pragma unroll
    for (int nt = 0; nt < 4; nt++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int row = m0 + wm + mt * 16 + gid + 8 * h;
        const int col = n0 + wn + nt * 8 + tig * 2;
        if (row < rows) {
          float* p = c + (size_t)row * cols + col;
          if (col < cols) p[0] = acc[mt][nt][2 * h];
          if (col + 1 < cols) p[1] = acc[mt][nt][2 * h + 1];
        }
      }
}

// y[n, out] = x[n, in] · Ŵᵀ. Grid (cdiv(out, 64), cdiv(n, 64)), block 128.
extern "C" __global__ void __launch_bounds__(128)
et_matmul_xwt_mma(const float* __restrict__ x, const unsigned char* __restrict__ w, int wtype,
                  int row_bytes, float* __restrict__ y, int n, int out, int in) {
  __shared__ __align__(16) u16 As[MM_BM * MM_LD];
  __shared__ __align__(16) u16 Bs[MM_BN * MM_LD];
  const int n0 = blockIdx.x * MM_BN, m0 = blockIdx.y * MM_BM;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int k = 0; k < 4; k++) acc[i][j][k] = 0.0f;
  // W tile: thread t decodes 16 values of W row n0 + t/2, K group (k0/16 + t%2).
  const int wrow = n0 + (threadIdx.x >> 1), whalf = threadIdx.x & 1;
  const u8* wr = w + (size_t)min(wrow, out - 1) * (size_t)row_bytes;
  for (int k0 = 0; k0 < in; k0 += MM_BK) {
    et_load_act_tile(As, x, n, in, m0, k0, in);
    {
      const int g = k0 / 16 + whalf;
      float v[16];
      if (wrow < out && 16 * g < in) {
        et_dequant16(wtype, wr, g, in - 16 * g, v);
      } else {
#pragma unroll
        for (int j = 0; j < 16; j++) v[j] = 0.0f;
      }
      u32* dst = (u32*)(Bs + (threadIdx.x >> 1) * MM_LD + whalf * 16);
#pragma unroll
      for (int j = 0; j < 8; j++) dst[j] = et_pack_bf16x2(v[2 * j], v[2 * j + 1]);
    }
    __syncthreads();
    et_mma_tile(As, Bs, acc);
    __syncthreads();
  }
  et_store_tile(y, n, out, m0, n0, acc);
}

// dx[n, in] = dy[n, out] · Ŵ. Grid (cdiv(in, 64), cdiv(n, 64)), block 128. K runs over W rows.
extern "C" __global__ void __launch_bounds__(128)
et_matmul_dyw_mma(const float* __restrict__ dy, const unsigned char* __restrict__ w, int wtype,
                  int row_bytes, float* __restrict__ dx, int n, int out, int in) {
  __shared__ __align__(16) u16 As[MM_BM * MM_LD];
  __shared__ __align__(16) u16 Bs[MM_BN * MM_LD];
  const int n0 = blockIdx.x * MM_BN, m0 = blockIdx.y * MM_BM;
  float acc[2][4][4];
#pragma unroll
  for (int i = 0; i < 2; i++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int k = 0; k < 4; k++) acc[i][j][k] = 0.0f;
  // W tile: thread t decodes W row k0 + t/4, columns n0 + 16·(t%4) .. +16, stored transposed.
  const int kr = threadIdx.x >> 2, cgrp = threadIdx.x & 3;
  const int g = n0 / 16 + cgrp;
  for (int k0 = 0; k0 < out; k0 += MM_BK) {
    et_load_act_tile(As, dy, n, out, m0, k0, out);
    {
      const int row = k0 + kr;
      float v[16];
      if (row < out && 16 * g < in) {
        et_dequant16(wtype, w + (size_t)row * (size_t)row_bytes, g, in - 16 * g, v);
      } else {
#pragma unroll
        for (int j = 0; j < 16; j++) v[j] = 0.0f;
      }
#pragma unroll
      for (int j = 0; j < 16; j++)
        Bs[(cgrp * 16 + j) * MM_LD + kr] = (u16)(et_pack_bf16x2(v[j], 0.0f) & 0xffffu);
    }
    __syncthreads();
    et_mma_tile(As, Bs, acc);
    __syncthreads();
  }
  et_store_tile(dx, n, in, m0, n0, acc);
}

#endif  // !ET_CUDA || __CUDA_ARCH__ >= 800
