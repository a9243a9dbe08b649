//! Q4_K kernels for x86-64 with AVX2 + FMA: dequantize, the one-row dot and the 4-row dot.

use super::super::x86::{hsum_ps, load_ps, load_u8x8_epi32};
use super::{BLOCK_BYTES, QK_K, blocks, f16_le, get_scale_min_k4, unpack_scales_mins_k4};
use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma")]
pub(super) fn dequantize_avx2(src: &[u8], dst: &mut [f32]) {
    let mask = _mm256_set1_epi32(0x0f);
    for (b, y) in blocks(src).zip(dst.chunks_exact_mut(QK_K)) {
        let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
        for (c, (q, y)) in
            b.qs.chunks_exact(32)
                .zip(y.chunks_exact_mut(64))
                .enumerate()
        {
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let d1 = _mm256_set1_ps(d * f32::from(sc1));
            let d2 = _mm256_set1_ps(d * f32::from(sc2));
            let min1 = _mm256_set1_ps(dmin * f32::from(m1));
            let min2 = _mm256_set1_ps(dmin * f32::from(m2));
            for k in 0..4 {
                // SAFETY: q has 32 bytes, so 8k..8k+8 (k < 4) is readable.
                let v = unsafe { load_u8x8_epi32(q.as_ptr().add(8 * k)) };
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                // Separate multiply and subtract (no FMA) to round exactly like ggml.
                let y_lo = _mm256_sub_ps(_mm256_mul_ps(d1, lo), min1);
                let y_hi = _mm256_sub_ps(_mm256_mul_ps(d2, hi), min2);
                // SAFETY: y has 64 floats; 8k..8k+8 and 32+8k..40+8k are in bounds.
                unsafe {
                    _mm256_storeu_ps(y.as_mut_ptr().add(8 * k), y_lo);
                    _mm256_storeu_ps(y.as_mut_ptr().add(32 + 8 * k), y_hi);
                }
            }
        }
    }
}

/// Super-blocks of x per segment: the sub-block sums of one segment live on the stack.
const SEG: usize = 32;

/// See [`super::dot_rows`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_rows_avx2(rows: &[u8], row_bytes: usize, x: &[f32], y: &mut [f32]) {
    // Clamp to what the slices hold, so the raw reads below stay in bounds.
    let nb = x.len() / QK_K;
    if row_bytes < nb * BLOCK_BYTES {
        return y.fill(0.0);
    }
    let n_rows = y.len().min(rows.len() / row_bytes.max(1));
    y.fill(0.0);
    let mut sums = [0f32; 8 * SEG];
    for s0 in (0..nb).step_by(SEG) {
        let ns = SEG.min(nb - s0);
        let xs = &x[s0 * QK_K..(s0 + ns) * QK_K];
        for (s, xc) in sums.iter_mut().zip(xs.chunks_exact(32)) {
            // SAFETY: xc holds 32 floats.
            let v = unsafe {
                let p = xc.as_ptr();
                _mm256_add_ps(
                    _mm256_add_ps(load_ps(p), load_ps(p.add(8))),
                    _mm256_add_ps(load_ps(p.add(16)), load_ps(p.add(24))),
                )
            };
            *s = hsum_ps(v);
        }
        let base = s0 * BLOCK_BYTES;
        let mut r = 0;
        while r + 4 <= n_rows {
            // SAFETY: rows r..r+4 hold blocks s0..s0+ns (row_bytes ≥ nb·144); xs holds
            // ns·256 values and sums 8·ns.
            let v = unsafe {
                rows_avx2::<4>(
                    rows.as_ptr().add(r * row_bytes + base),
                    row_bytes,
                    xs,
                    &sums,
                    ns,
                )
            };
            for (out, v) in y[r..r + 4].iter_mut().zip(v) {
                *out += v;
            }
            r += 4;
        }
        while r < n_rows {
            // SAFETY: as above, for one row.
            let v = unsafe {
                rows_avx2::<1>(
                    rows.as_ptr().add(r * row_bytes + base),
                    row_bytes,
                    xs,
                    &sums,
                    ns,
                )
            };
            y[r] += v[0];
            r += 1;
        }
    }
}

/// Dots of `R` rows (from `p`, `row_bytes` apart, `nb` blocks each) with x (`256·nb`
/// values) whose 32-element sub-block sums are `sums`.
///
/// # Safety
/// `p` must point at `R` readable rows of `nb` blocks `row_bytes` apart; x must hold
/// `256·nb` values and `sums` `8·nb`; the CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn rows_avx2<const R: usize>(
    p: *const u8,
    row_bytes: usize,
    x: &[f32],
    sums: &[f32],
    nb: usize,
) -> [f32; R] {
    const PREFETCH: usize = 768;
    debug_assert!(x.len() >= nb * QK_K && sums.len() >= 8 * nb);
    let mask = _mm256_set1_epi32(0x0f);
    let mut acc = [_mm256_setzero_ps(); R];
    let xp = x.as_ptr();
    for sb in 0..nb {
        // SAFETY (whole body): block sb of row r is the 144 bytes at
        // p + r·row_bytes + 144·sb (d, dmin, 12 scale bytes, 128 quant bytes), and
        // x[256·sb..256·sb + 256], sums[8·sb..8·sb + 8] are in bounds, per the contract.
        unsafe {
            let svec = load_ps(sums.as_ptr().add(8 * sb));
            let mut scales = [[0f32; 8]; R];
            for (r, (acc_r, sc_r)) in acc.iter_mut().zip(scales.iter_mut()).enumerate() {
                let blk = p.add(r * row_bytes + BLOCK_BYTES * sb);
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH).cast());
                // Lanes 0 and 1: d and dmin.
                let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(
                    blk.cast::<i32>(),
                )));
                let d = _mm256_broadcastss_ps(dm);
                let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
                let (sc, mn) = super::scales_mins_u64(&*blk.add(4).cast::<[u8; 12]>());
                let widen =
                    |v: u64| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(v as i64)));
                // Min term of the whole block: −Σ_j (dmin·m_j)·(Σx of sub-block j).
                *acc_r = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, widen(mn)), svec, *acc_r);
                _mm256_storeu_ps(sc_r.as_mut_ptr(), _mm256_mul_ps(d, widen(sc)));
            }
            let xb = xp.add(QK_K * sb);
            for c in 0..4 {
                // Chunk c: 32 quant bytes, low nibbles sub-block 2c, high ones 2c + 1.
                let mut q_lo = [_mm256_setzero_ps(); R];
                let mut q_hi = [_mm256_setzero_ps(); R];
                for k in 0..4 {
                    let xl = load_ps(xb.add(64 * c + 8 * k));
                    let xh = load_ps(xb.add(64 * c + 32 + 8 * k));
                    for r in 0..R {
                        let qp = p.add(r * row_bytes + BLOCK_BYTES * sb + 16 + 32 * c + 8 * k);
                        let v = load_u8x8_epi32(qp);
                        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
                        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                        q_lo[r] = _mm256_fmadd_ps(lo, xl, q_lo[r]);
                        q_hi[r] = _mm256_fmadd_ps(hi, xh, q_hi[r]);
                    }
                }
                for r in 0..R {
                    let s_lo = _mm256_broadcast_ss(&scales[r][2 * c]);
                    let s_hi = _mm256_broadcast_ss(&scales[r][2 * c + 1]);
                    acc[r] = _mm256_fmadd_ps(s_lo, q_lo[r], acc[r]);
                    acc[r] = _mm256_fmadd_ps(s_hi, q_hi[r], acc[r]);
                }
            }
        }
    }
    acc.map(|v| hsum_ps(v))
}

#[target_feature(enable = "avx2,fma")]
pub(super) fn dot_avx2(row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len() / BLOCK_BYTES * QK_K, x.len());
    let mask = _mm256_set1_epi32(0x0f);
    // acc_q: Σ d·sc·(Σq·x); acc_m: Σ dmin·m·(Σx); two of each to shorten the chains.
    let mut acc_q = [_mm256_setzero_ps(); 2];
    let mut acc_m = [_mm256_setzero_ps(); 2];
    for (b, xb) in blocks(row).zip(x.chunks_exact(QK_K)) {
        let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
        let (sc, mn) = unpack_scales_mins_k4(&b.scales);
        for (c, (q, xc)) in b.qs.chunks_exact(32).zip(xb.chunks_exact(64)).enumerate() {
            let (mut qx_lo, mut qx_hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut x_lo, mut x_hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for k in 0..4 {
                // SAFETY: q has 32 bytes and xc 64 floats; offsets 8k+8 ≤ 32 and
                // 32+8k+8 ≤ 64 for k < 4.
                let (v, xl, xh) = unsafe {
                    (
                        load_u8x8_epi32(q.as_ptr().add(8 * k)),
                        load_ps(xc.as_ptr().add(8 * k)),
                        load_ps(xc.as_ptr().add(32 + 8 * k)),
                    )
                };
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                qx_lo = _mm256_fmadd_ps(lo, xl, qx_lo);
                qx_hi = _mm256_fmadd_ps(hi, xh, qx_hi);
                x_lo = _mm256_add_ps(x_lo, xl);
                x_hi = _mm256_add_ps(x_hi, xh);
            }
            let s1 = _mm256_set1_ps(d * f32::from(sc[2 * c]));
            let s2 = _mm256_set1_ps(d * f32::from(sc[2 * c + 1]));
            let m1 = _mm256_set1_ps(dmin * f32::from(mn[2 * c]));
            let m2 = _mm256_set1_ps(dmin * f32::from(mn[2 * c + 1]));
            acc_q[0] = _mm256_fmadd_ps(s1, qx_lo, acc_q[0]);
            acc_q[1] = _mm256_fmadd_ps(s2, qx_hi, acc_q[1]);
            acc_m[0] = _mm256_fmadd_ps(m1, x_lo, acc_m[0]);
            acc_m[1] = _mm256_fmadd_ps(m2, x_hi, acc_m[1]);
        }
    }
    let q = _mm256_add_ps(acc_q[0], acc_q[1]);
    let m = _mm256_add_ps(acc_m[0], acc_m[1]);
    hsum_ps(_mm256_sub_ps(q, m))
}
