// Decoding of GGUF/ggml weight rows on the GPU: `et_dequant16(type, row, g, out)` writes the 16
// consecutive elements `16g .. 16g+16` of a row (raw little-endian block bytes, as mapped from
// the file) to `out[16]`. Every ggml type src/quant knows is handled; 16 is the common
// granularity: each type's block (1, 32 or 256 elements) splits into whole groups of 16 that
// share one scale (Q4_0/Q8_0/…: half a block; K-quants: one sub-block or half of one).
//
// Block layouts (bytes; d/dmin are f16 unless noted) — docs/FORMATS.md#quant-blocks, ggml-quants.c:
//   Q4_0   18: d, qs[16]            x = ((qs[j] & 15) | qs[j] >> 4 for j+16) − 8) · d
//   Q4_1   20: d, m, qs[16]         x = q · d + m
//   Q5_0   22: d, qh[4], qs[16]     5th bit of element j is bit j of qh (u32 LE); x = (q − 16)·d
//   Q5_1   24: d, m, qh[4], qs[16]  x = q · d + m
//   Q8_0   34: d, qs[32] (i8)       Q8_1 36: d, s, qs[32]
//   Q2_K   84: scales[16], qs[64], d, dmin          16 groups of 16, 2-bit q, 4+4-bit scale/min
//   Q3_K  110: hmask[32], qs[64], scales[12], d     16 groups, 2-bit q + high bit, 6-bit scales
//   Q4_K  144: d, dmin, scales[12], qs[128]         8 sub-blocks of 32, 6-bit scale/min
//   Q5_K  176: d, dmin, scales[12], qh[32], qs[128]
//   Q6_K  210: ql[128], qh[64], scales[16] (i8), d  16 groups, 4+2-bit q, i8 scales
//   Q8_K  292: d (f32), qs[256] (i8), bsums[16]
//   IQ4_NL 18: d, qs[16]           x = d · KVALUES[nibble]
//   F32 / F16 / BF16: plain elements.
#pragma once
#include "common.cuh"

// ggml type ids (GgmlType in src/quant/mod.rs).
#define ET_F32 0
#define ET_F16 1
#define ET_Q4_0 2
#define ET_Q4_1 3
#define ET_Q5_0 6
#define ET_Q5_1 7
#define ET_Q8_0 8
#define ET_Q8_1 9
#define ET_Q2_K 10
#define ET_Q3_K 11
#define ET_Q4_K 12
#define ET_Q5_K 13
#define ET_Q6_K 14
#define ET_Q8_K 15
#define ET_IQ4_NL 20
#define ET_BF16 30

// IQ4_NL's 16 non-uniform levels (ggml `kvalues_iq4nl`).
#if ET_CUDA
__constant__ signed char et_iq4nl_values[16] =
#else
static const signed char et_iq4nl_values[16] =
#endif
    {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};

// Scale `j` (0..8) and min of a Q4_K/Q5_K block from its 12 packed bytes: the first four
// sub-blocks keep 6 bits in the low bits of bytes j (scale) and j+4 (min); the last four split
// into 4 low bits (byte j+4) and 2 high bits (top bits of bytes j−4 and j).
ET_HD void et_k4_scale_min(int j, const u8* q, int* sc, int* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

// Scale `i` (0..16) of a Q3_K block from its 12 packed bytes: 4 low bits in a nibble of bytes
// 0..7, 2 high bits in bytes 8..11; stored with an offset of 32.
ET_HD int et_q3k_scale(int i, const u8* s) {
  int lo = i < 8 ? (s[i] & 0xF) : (s[i - 8] >> 4);
  int hi = (s[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
  return (lo | (hi << 4)) - 32;
}

// Elements `16g .. 16g+16` of a row of type `type` whose bytes start at `row`. For the plain
// float types `valid` (the row length minus 16g) bounds the read; elements past it are 0.
ET_HD void et_dequant16(int type, const u8* row, int g, int valid, float* out) {
  switch (type) {
    case ET_F32:
    case ET_F16:
    case ET_BF16: {
      for (int j = 0; j < 16; j++) {
        const int e = 16 * g + j;
        float x = 0.0f;
        if (j < valid) {
          if (type == ET_F32)
            x = et_ld_f32(row + 4 * (long long)e);
          else if (type == ET_F16)
            x = et_ld_f16(row + 2 * (long long)e);
          else
            x = et_bf16_to_float(et_ld_u16(row + 2 * (long long)e));
        }
        out[j] = x;
      }
      break;
    }
    case ET_Q4_0:
    case ET_IQ4_NL: {
      const u8* b = row + 18 * (g >> 1);
      const float d = et_ld_f16(b);
      const int shift = (g & 1) * 4;
      for (int j = 0; j < 16; j++) {
        const int q = (b[2 + j] >> shift) & 15;
        out[j] = type == ET_Q4_0 ? (float)(q - 8) * d : d * (float)et_iq4nl_values[q];
      }
      break;
    }
    case ET_Q4_1: {
      const u8* b = row + 20 * (g >> 1);
      const float d = et_ld_f16(b), m = et_ld_f16(b + 2);
      const int shift = (g & 1) * 4;
      for (int j = 0; j < 16; j++) out[j] = (float)((b[4 + j] >> shift) & 15) * d + m;
      break;
    }
    case ET_Q5_0:
    case ET_Q5_1: {
      const bool one = type == ET_Q5_1;
      const u8* b = row + (one ? 24 : 22) * (g >> 1);
      const float d = et_ld_f16(b), m = one ? et_ld_f16(b + 2) : 0.0f;
      const u32 qh = et_ld_u32(b + (one ? 4 : 2));
      const u8* qs = b + (one ? 8 : 6);
      const int shift = (g & 1) * 4, hbit = (g & 1) * 16;
      for (int j = 0; j < 16; j++) {
        const int q = ((qs[j] >> shift) & 15) | (((qh >> (j + hbit)) & 1) << 4);
        out[j] = one ? (float)q * d + m : (float)(q - 16) * d;
      }
      break;
    }
    case ET_Q8_0:
    case ET_Q8_1: {
      const int bb = type == ET_Q8_0 ? 34 : 36;
      const u8* b = row + bb * (g >> 1);
      const float d = et_ld_f16(b);
      const i8* qs = (const i8*)(b + (type == ET_Q8_0 ? 2 : 4)) + (g & 1) * 16;
      for (int j = 0; j < 16; j++) out[j] = (float)qs[j] * d;
      break;
    }
    case ET_Q2_K: {
      // Element e of a block: half h = e/128, shift pair jj = (e%128)/32, byte qs[32h + e%32];
      // group g (of 16) has scale byte scales[g].
      const u8* b = row + 84 * (g >> 4);
      const int gi = g & 15, h = gi >> 3, jj = (gi & 7) >> 1, l0 = (gi & 1) * 16;
      const float d = et_ld_f16(b + 80), dmin = et_ld_f16(b + 82);
      const int sc = b[gi];
      const float dl = d * (float)(sc & 0xF), ml = dmin * (float)(sc >> 4);
      const u8* q = b + 16 + 32 * h + l0;
      for (int j = 0; j < 16; j++) out[j] = dl * (float)((q[j] >> (2 * jj)) & 3) - ml;
      break;
    }
    case ET_Q3_K: {
      const u8* b = row + 110 * (g >> 4);
      const int gi = g & 15, h = gi >> 3, jj = (gi & 7) >> 1, l0 = (gi & 1) * 16;
      const float dl = et_ld_f16(b + 108) * (float)et_q3k_scale(gi, b + 96);
      const u8* hm = b + l0;
      const u8* q = b + 32 + 32 * h + l0;
      const int mask = 1 << (4 * h + jj);
      for (int j = 0; j < 16; j++) {
        const int v = ((q[j] >> (2 * jj)) & 3) - ((hm[j] & mask) ? 0 : 4);
        out[j] = dl * (float)v;
      }
      break;
    }
    case ET_Q4_K:
    case ET_Q5_K: {
      // Chunk c = e/64 of a block: low nibbles of qs[32c..32c+32] are sub-block 2c, high
      // nibbles sub-block 2c+1; group g covers half a sub-block.
      const bool five = type == ET_Q5_K;
      const u8* b = row + (five ? 176 : 144) * (g >> 4);
      const int gi = g & 15, c = gi >> 2, sub = (gi >> 1) & 1, l0 = (gi & 1) * 16;
      const float d = et_ld_f16(b), dmin = et_ld_f16(b + 2);
      int sc, mn;
      et_k4_scale_min(2 * c + sub, b + 4, &sc, &mn);
      const float dl = d * (float)sc, ml = dmin * (float)mn;
      const u8* qs = b + (five ? 48 : 16) + 32 * c + l0;
      const u8* qh = b + 16 + l0;
      const int hmask = 1 << (2 * c + sub);
      for (int j = 0; j < 16; j++) {
        int q = (qs[j] >> (4 * sub)) & 15;
        if (five && (qh[j] & hmask)) q += 16;
        out[j] = dl * (float)q - ml;
      }
      break;
    }
    case ET_Q6_K: {
      // Half h = e/128, quarter qq = (e%128)/32, l = e%32: low 4 bits from ql[64h + l + 32(qq&1)]
      // (high nibble when qq ≥ 2), high 2 bits from qh[32h + l] >> 2qq; scale sc[8h + l/16 + 2qq].
      const u8* b = row + 210 * (g >> 4);
      const int gi = g & 15, h = gi >> 3, qq = (gi & 7) >> 1, l0 = (gi & 1) * 16;
      const float d = et_ld_f16(b + 208);
      const float dl = d * (float)((const i8*)(b + 192))[8 * h + (gi & 1) + 2 * qq];
      const u8* ql = b + 64 * h + 32 * (qq & 1) + l0;
      const u8* qh = b + 128 + 32 * h + l0;
      const int lshift = (qq >> 1) * 4;
      for (int j = 0; j < 16; j++) {
        const int q = (((ql[j] >> lshift) & 15) | (((qh[j] >> (2 * qq)) & 3) << 4)) - 32;
        out[j] = dl * (float)q;
      }
      break;
    }
    case ET_Q8_K: {
      const u8* b = row + 292 * (g >> 4);
      const float d = et_ld_f32(b);
      const i8* qs = (const i8*)(b + 4) + 16 * (g & 15);
      for (int j = 0; j < 16; j++) out[j] = d * (float)qs[j];
      break;
    }
    default:
      for (int j = 0; j < 16; j++) out[j] = 0.0f;
  }
}
