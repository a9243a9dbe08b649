// Causal grouped-query attention, forward and backward, flash-style (Backend::attention,
// Backend::attention_backward); mirrors crates/edgetune-core/src/backend/cpu/attention.rs in f32 SIMT code.
//
//   q, out, dout, dq: [n_tokens, n_head · hd]     k, v, dk, dv: [kv_len, n_head_kv · hd]
//   lse: [n_tokens, n_head]                       kv_len = pos0 + n_tokens, hd ≤ 256
// Query i sits at position pos0 + i and sees keys 0..=pos0+i; query head h reads KV head
// h / (n_head / n_head_kv); s = q·k / sqrt(hd); lse = log Σ_t e^s (natural log).
//
// Keys are visited in tiles of 32 held in shared memory (rows padded to hd+1 floats: lane j
// reading key j's row hits bank j); lane j owns key j of a tile for the scores, and dimension
// d = lane + 32u (u < 8) of the accumulators. Nothing of size [seq, seq] exists.
//
// - fwd: a block = 4 warps = 4 consecutive queries of one head; online softmax per warp
//   (running max m and sum l; the accumulator is rescaled by e^(m_old − m_new)).
// - bwd_dq: same blocking; P = e^(s − lse), dP = dout·v, dS = P·(dP − D), D = dout·out;
//   dq = Σ_t dS·k_t / sqrt(hd).
// - bwd_dkdv: a block owns 32 keys of one KV head (8 warps); it visits every (query, head of the
//   group) that sees those keys, 8 at a time: each warp computes P and dS for the 32 keys, then
//   thread (key j = lane, dims d ≡ warp mod 8) accumulates dv_j += P·dout_i, dk_j += dS·q_i in
//   registers. Each block writes its own rows of dk/dv: no atomics, deterministic.
#include "common.cuh"

#define AT_KT 32    // keys per tile
#define AT_QW 4     // queries (warps) per fwd / dq block
#define AT_BW 8     // warps per dkdv block
#define AT_DPL 8    // accumulator dims per lane (fwd, dq): hd ≤ 256
#define AT_DPT 32   // accumulator dims per thread (dkdv): hd ≤ 256

// Loads keys t0..t0+32 of KV head kvh (rows past kv_len as zeros) into ks, vs [32][hd+1].
__device__ __forceinline__ void et_load_kv_tile(float* ks, float* vs, const float* k,
                                                const float* v, int t0, int kv_len, int kvh,
                                                int kvw, int hd) {
  for (int idx = threadIdx.x; idx < AT_KT * hd; idx += blockDim.x) {
    const int kk = idx / hd, d = idx - kk * hd, t = t0 + kk;
    float a = 0.0f, b = 0.0f;
    if (t < kv_len) {
      const size_t at = (size_t)t * kvw + (size_t)kvh * hd + d;
      a = k[at];
      b = v[at];
    }
    ks[kk * (hd + 1) + d] = a;
    vs[kk * (hd + 1) + d] = b;
  }
}

__device__ __forceinline__ float et_dot_sh(const float* a, const float* b, int hd) {
  float s = 0.0f;
  for (int d = 0; d < hd; d++) s = fmaf(a[d], b[d], s);
  return s;
}

// Grid (cdiv(n_tokens, 4), n_head), block 128, dynamic shared 4·(4·hd + 64·(hd+1)) bytes.
extern "C" __global__ void __launch_bounds__(128)
et_attention_fwd(const float* __restrict__ q, const float* __restrict__ k,
                 const float* __restrict__ v, float* __restrict__ out, float* __restrict__ lse,
                 int n_tokens, int pos0, int n_head, int n_head_kv, int hd) {
  ET_DYNAMIC_SHARED(float, sm);
  float* qs = sm;                       // [4][hd]
  float* ks = qs + AT_QW * hd;          // [32][hd+1]
  float* vs = ks + AT_KT * (hd + 1);    // [32][hd+1]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = blockIdx.y, kvh = h / (n_head / n_head_kv);
  const int i = blockIdx.x * AT_QW + warp;
  const bool live = i < n_tokens;
  const int qw = n_head * hd, kvw = n_head_kv * hd, kv_len = pos0 + n_tokens;
  const float scale = 1.0f / sqrtf((float)hd);
  float* qrow = qs + warp * hd;
  for (int d = lane; d < hd; d += 32) qrow[d] = live ? q[(size_t)i * qw + h * hd + d] : 0.0f;
  const int kend = pos0 + min((int)blockIdx.x * AT_QW + AT_QW, n_tokens);  // block's visible keys
  const int my_end = pos0 + i + 1;
  float m = -__int_as_float(0x7f800000), l = 0.0f;
  float acc[AT_DPL];
#pragma unroll
  for (int u = 0; u < AT_DPL; u++) acc[u] = 0.0f;
  for (int t0 = 0; t0 < kend; t0 += AT_KT) {
    __syncthreads();  // the previous tile is consumed (and qs written, the first time)
    et_load_kv_tile(ks, vs, k, v, t0, kv_len, kvh, kvw, hd);
    __syncthreads();
    if (!live || t0 >= my_end) continue;  // warp-uniform
    const int t = t0 + lane;
    const bool vis = t < my_end;
    const float s = vis ? et_dot_sh(qrow, ks + lane * (hd + 1), hd) * scale
                        : -__int_as_float(0x7f800000);
    const float m_new = fmaxf(m, et_warp_max(s));
    const float p = vis ? expf(s - m_new) : 0.0f;
    const float corr = expf(m - m_new);  // 0 on the first tile (m = −inf)
    l = l * corr + et_warp_sum(p);
#pragma unroll
    for (int u = 0; u < AT_DPL; u++) acc[u] *= corr;
    const int nvis = min(AT_KT, my_end - t0);
    for (int j = 0; j < nvis; j++) {
      const float pj = __shfl_sync(0xffffffffu, p, j);
      const float* vr = vs + j * (hd + 1);
#pragma unroll
      for (int u = 0; u < AT_DPL; u++) {
        const int d = lane + 32 * u;
        if (d < hd) acc[u] = fmaf(pj, vr[d], acc[u]);
      }
    }
    m = m_new;
  }
  if (!live) return;
  const float inv_l = 1.0f / l;
  float* orow = out + (size_t)i * qw + h * hd;
#pragma unroll
  for (int u = 0; u < AT_DPL; u++) {
    const int d = lane + 32 * u;
    if (d < hd) orow[d] = acc[u] * inv_l;
  }
  if (lse != 0 && lane == 0) lse[(size_t)i * n_head + h] = m + logf(l);
}

// Grid (cdiv(n_tokens, 4), n_head), block 128, dynamic shared 4·(8·hd + 64·(hd+1)) bytes.
// Overwrites dq.
extern "C" __global__ void __launch_bounds__(128)
et_attention_bwd_dq(const float* __restrict__ q, const float* __restrict__ k,
                    const float* __restrict__ v, const float* __restrict__ out,
                    const float* __restrict__ lse, const float* __restrict__ dout,
                    float* __restrict__ dq, int n_tokens, int pos0, int n_head, int n_head_kv,
                    int hd) {
  ET_DYNAMIC_SHARED(float, sm);
  float* qs = sm;                       // [4][hd]
  float* dos = qs + AT_QW * hd;         // [4][hd]
  float* ks = dos + AT_QW * hd;         // [32][hd+1]
  float* vs = ks + AT_KT * (hd + 1);    // [32][hd+1]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = blockIdx.y, kvh = h / (n_head / n_head_kv);
  const int i = blockIdx.x * AT_QW + warp;
  const bool live = i < n_tokens;
  const int qw = n_head * hd, kvw = n_head_kv * hd, kv_len = pos0 + n_tokens;
  const float scale = 1.0f / sqrtf((float)hd);
  float* qrow = qs + warp * hd;
  float* dorow = dos + warp * hd;
  float dsum = 0.0f;
  for (int d = lane; d < hd; d += 32) {
    const size_t at = (size_t)(live ? i : 0) * qw + h * hd + d;
    const float dd = live ? dout[at] : 0.0f;
    qrow[d] = live ? q[at] : 0.0f;
    dorow[d] = dd;
    dsum = fmaf(dd, live ? out[at] : 0.0f, dsum);
  }
  const float D = et_warp_sum(dsum);
  const float L = live ? lse[(size_t)i * n_head + h] : 0.0f;
  const int kend = pos0 + min((int)blockIdx.x * AT_QW + AT_QW, n_tokens);
  const int my_end = pos0 + i + 1;
  float acc[AT_DPL];
#pragma unroll
  for (int u = 0; u < AT_DPL; u++) acc[u] = 0.0f;
  for (int t0 = 0; t0 < kend; t0 += AT_KT) {
    __syncthreads();
    et_load_kv_tile(ks, vs, k, v, t0, kv_len, kvh, kvw, hd);
    __syncthreads();
    if (!live || t0 >= my_end) continue;
    const int t = t0 + lane;
    float ds = 0.0f;
    if (t < my_end) {
      const float p = expf(et_dot_sh(qrow, ks + lane * (hd + 1), hd) * scale - L);
      const float dp = et_dot_sh(dorow, vs + lane * (hd + 1), hd);
      ds = p * (dp - D);
    }
    const int nvis = min(AT_KT, my_end - t0);
    for (int j = 0; j < nvis; j++) {
      const float dsj = __shfl_sync(0xffffffffu, ds, j);
      const float* kr = ks + j * (hd + 1);
#pragma unroll
      for (int u = 0; u < AT_DPL; u++) {
        const int d = lane + 32 * u;
        if (d < hd) acc[u] = fmaf(dsj, kr[d], acc[u]);
      }
    }
  }
  if (!live) return;
  float* dqrow = dq + (size_t)i * qw + h * hd;
#pragma unroll
  for (int u = 0; u < AT_DPL; u++) {
    const int d = lane + 32 * u;
    if (d < hd) dqrow[d] = acc[u] * scale;
  }
}

// Grid (cdiv(pos0 + n_tokens, 32), n_head_kv), block 256, dynamic shared
// 4·(64·(hd+1) + 16·hd + 512) bytes. Overwrites dk and dv (all kv_len rows over the grid).
extern "C" __global__ void __launch_bounds__(256)
et_attention_bwd_dkdv(const float* __restrict__ q, const float* __restrict__ k,
                      const float* __restrict__ v, const float* __restrict__ out,
                      const float* __restrict__ lse, const float* __restrict__ dout,
                      float* __restrict__ dk, float* __restrict__ dv, int n_tokens, int pos0,
                      int n_head, int n_head_kv, int hd) {
  ET_DYNAMIC_SHARED(float, sm);
  float* ks = sm;                        // [32][hd+1]
  float* vs = ks + AT_KT * (hd + 1);     // [32][hd+1]
  float* qs = vs + AT_KT * (hd + 1);     // [8][hd]
  float* dos = qs + AT_BW * hd;          // [8][hd]
  float* ps = dos + AT_BW * hd;          // [8][32]
  float* dss = ps + AT_BW * AT_KT;       // [8][32]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kvh = blockIdx.y, group = n_head / n_head_kv;
  const int t0 = blockIdx.x * AT_KT;
  const int qw = n_head * hd, kvw = n_head_kv * hd, kv_len = pos0 + n_tokens;
  const float scale = 1.0f / sqrtf((float)hd);
  et_load_kv_tile(ks, vs, k, v, t0, kv_len, kvh, kvw, hd);
  // Thread (key j = lane, dims d = warp + 8u).
  float acc_k[AT_DPT], acc_v[AT_DPT];
#pragma unroll
  for (int u = 0; u < AT_DPT; u++) {
    acc_k[u] = 0.0f;
    acc_v[u] = 0.0f;
  }
  // Queries that see key t0 or later: i ≥ t0 − pos0.
  const int i_first = max(0, t0 - pos0);
  const int pairs = (n_tokens - i_first) * group;
  __syncthreads();
  for (int base = 0; base < pairs; base += AT_BW) {
    // Phase 1: warp w takes (query, head) pair base + w.
    const int pr = base + warp;
    float* qrow = qs + warp * hd;
    float* dorow = dos + warp * hd;
    if (pr < pairs) {
      const int i = i_first + pr / group, h = kvh * group + pr % group;
      float dsum = 0.0f;
      for (int d = lane; d < hd; d += 32) {
        const size_t at = (size_t)i * qw + h * hd + d;
        const float dd = dout[at];
        qrow[d] = q[at];
        dorow[d] = dd;
        dsum = fmaf(dd, out[at], dsum);
      }
      const float D = et_warp_sum(dsum);
      const float L = lse[(size_t)i * n_head + h];
      __syncwarp();
      const int t = t0 + lane;
      float p = 0.0f, ds = 0.0f;
      if (t < kv_len && t <= pos0 + i) {
        p = expf(et_dot_sh(qrow, ks + lane * (hd + 1), hd) * scale - L);
        const float dp = et_dot_sh(dorow, vs + lane * (hd + 1), hd);
        ds = p * (dp - D);
      }
      ps[warp * AT_KT + lane] = p;
      dss[warp * AT_KT + lane] = ds;
    } else {
      for (int d = lane; d < hd; d += 32) {
        qrow[d] = 0.0f;
        dorow[d] = 0.0f;
      }
      ps[warp * AT_KT + lane] = 0.0f;
      dss[warp * AT_KT + lane] = 0.0f;
    }
    __syncthreads();
    // Phase 2: dv_j += P·dout, dk_j += dS·q over the 8 pairs.
    for (int w = 0; w < AT_BW; w++) {
      const float p = ps[w * AT_KT + lane], ds = dss[w * AT_KT + lane];
      const float* qr = qs + w * hd;
      const float* dr = dos + w * hd;
#pragma unroll
      for (int u = 0; u < AT_DPT; u++) {
        const int d = warp + AT_BW * u;
        if (d < hd) {
          acc_v[u] = fmaf(p, dr[d], acc_v[u]);
          acc_k[u] = fmaf(ds, qr[d], acc_k[u]);
        }
      }
    }
    __syncthreads();
  }
  const int t = t0 + lane;
  if (t >= kv_len) return;
  const size_t at = (size_t)t * kvw + (size_t)kvh * hd;
#pragma unroll
  for (int u = 0; u < AT_DPT; u++) {
    const int d = warp + AT_BW * u;
    if (d < hd) {
      dk[at + d] = acc_k[u] * scale;
      dv[at + d] = acc_v[u];
    }
  }
}
