//! Q4_0: 32 weights per 18-byte block, value = d·(q − 8) with q a 4-bit unsigned nibble.
//!
//! Block layout (ggml `block_q4_0`): f16 `d`, then 16 bytes; element j (0..16) is the low
//! nibble of byte j and element j + 16 its high nibble.

use super::simd::{self, QK, as_blocks, as_blocks_mut, f16_bytes, f16_le};
use bytemuck::{Pod, Zeroable};

/// One Q4_0 block (18 bytes, align 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale, IEEE half, little-endian.
    pub d: [u8; 2],
    /// Packed nibbles: element j low, element j + 16 high.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::align_of::<BlockQ4_0>() == 1);

/// Decodes one block exactly as ggml's `dequantize_row_q4_0`: `(q − 8) as f32 · d`.
#[inline(always)]
fn decode_block(b: &BlockQ4_0, out: &mut [f32]) {
    let d = f16_le(b.d);
    for (j, &byte) in b.qs.iter().enumerate() {
        out[j] = ((byte & 0x0F) as i32 - 8) as f32 * d;
        out[j + QK / 2] = ((byte >> 4) as i32 - 8) as f32 * d;
    }
}

/// Scalar specification of the decoder (bit-exact with ggml and gguf-py).
pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / 18 * QK, dst.len());
    for (b, out) in as_blocks::<BlockQ4_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        decode_block(b, out);
    }
}

/// Fastest decoder; bitwise equal to [`dequantize_ref`] (same single f32 multiply per value).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::x86::has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        return unsafe { dequantize_avx2(src, dst) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline.
    return unsafe { dequantize_neon(src, dst) };
    #[allow(unreachable_code)]
    dequantize_ref(src, dst)
}

/// llama.cpp's `quantize_row_q4_0_ref`: d = (the value of largest magnitude) / −8, and
/// q = min(15, trunc(x/d + 8.5)) — the `+8.5` then truncation is ggml's rounding, kept for
/// byte-identical files.
pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / QK * 18, dst.len());
    for (xb, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ4_0>(dst)) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bytes(d);
        for j in 0..QK / 2 {
            // `as i8` truncates toward zero like C's (int8_t) cast for the in-range values
            // produced here (x·id ∈ [−8, 8] up to rounding, so x·id + 8.5 ∈ [0.5, 16.5]).
            let q0 = ((xb[j] * id + 8.5) as i8).min(15) as u8;
            let q1 = ((xb[j + QK / 2] * id + 8.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Σ dequantize_ref(row)[i]·x[i] in f64, rounded once: the specification of [`dot`].
pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0.0f32; row.len() / 18 * QK];
    dequantize_ref(row, &mut w);
    simd::dot_f64(&w, x)
}

/// Σ w[i]·x[i] for a Q4_0 row and f32 activations, SIMD chosen at run time.
pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len() / 18 * QK, x.len());
    #[cfg(target_arch = "x86_64")]
    if simd::x86::has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        return unsafe { dot_avx2(row, x) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline.
    return unsafe { dot_neon(row, x) };
    #[allow(unreachable_code)]
    simd::dot_decoded_scalar(row, x, decode_block)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(row: &[u8], x: &[f32]) -> f32 {
    use simd::x86::{f16_scale, sum_blocks};
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi32(0x0F);
    let eight = _mm256_set1_epi32(8);
    sum_blocks(row, x, |b: &BlockQ4_0, xb, acc| {
        // Bytes 0..8 and 8..16 zero-extended to i32 lanes straight from memory (one shuffle
        // each): their low nibbles are elements 0..16, their high nibbles elements 16..32, so
        // the lanes line up with contiguous activations and need no further shuffles.
        let q = b.qs.as_ptr();
        // SAFETY: qs is 16 bytes; each load reads 8 of them (unaligned load form).
        let (a, c) = unsafe {
            (
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.cast())),
                _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add(8).cast())),
            )
        };
        let f = |v: __m256i| _mm256_cvtepi32_ps(_mm256_sub_epi32(v, eight));
        let (q0, q1) = (f(_mm256_and_si256(a, mask)), f(_mm256_and_si256(c, mask)));
        let (q2, q3) = (f(_mm256_srli_epi32::<4>(a)), f(_mm256_srli_epi32::<4>(c)));
        let p = xb.as_ptr();
        debug_assert!(xb.len() >= QK);
        // SAFETY: xb holds 32 activations (sum_blocks passes 32-element chunks).
        let sum = unsafe {
            let s0 = _mm256_fmadd_ps(
                q2,
                _mm256_loadu_ps(p.add(16)),
                _mm256_mul_ps(q0, _mm256_loadu_ps(p)),
            );
            let s1 = _mm256_fmadd_ps(
                q3,
                _mm256_loadu_ps(p.add(24)),
                _mm256_mul_ps(q1, _mm256_loadu_ps(p.add(8))),
            );
            _mm256_add_ps(s0, s1)
        };
        _mm256_fmadd_ps(_mm256_set1_ps(f16_scale(b.d)), sum, acc)
    })
}

/// Matrix-vector kernel: `y[r] = Σ dequantized(row r)·x` for the `y.len()` rows stored back to
/// back in `rows` (`row_bytes` apart, `x.len() / 32` blocks each).
///
/// The AVX2 version streams four rows per pass over x, so each load of x feeds four rows, and
/// forms Σ(q − 8)·x as Σq·x − 8·Σx: the 8-lane Σx of a block is shared by the four rows and
/// starts each row's FMA chain, which removes the per-row subtraction of 8.
pub fn dot_rows(rows: &[u8], row_bytes: usize, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(row_bytes, x.len() / QK * 18);
    debug_assert!(rows.len() >= y.len() * row_bytes);
    #[cfg(target_arch = "x86_64")]
    if simd::x86::has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        return unsafe { dot_rows_avx2(rows, row_bytes, x, y) };
    }
    for (r, out) in y.iter_mut().enumerate() {
        *out = dot(&rows[r * row_bytes..(r + 1) * row_bytes], x);
    }
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_avx2(rows: &[u8], row_bytes: usize, x: &[f32], y: &mut [f32]) {
    // Clamp to what the slices hold, so the raw reads below stay in bounds whatever the caller.
    let blocks = x.len() / QK;
    if row_bytes < blocks * 18 {
        return y.fill(0.0);
    }
    let n_rows = y.len().min(rows.len() / row_bytes.max(1));
    let mut r = 0;
    while r + 4 <= n_rows {
        // SAFETY: rows r..r+4 lie inside `rows`, each holding `blocks` blocks; x holds
        // 32·blocks values.
        let v = unsafe { rows_avx2::<4>(rows.as_ptr().add(r * row_bytes), row_bytes, x, blocks) };
        y[r..r + 4].copy_from_slice(&v);
        r += 4;
    }
    while r < n_rows {
        // SAFETY: as above, for one row.
        let v = unsafe { rows_avx2::<1>(rows.as_ptr().add(r * row_bytes), row_bytes, x, blocks) };
        y[r] = v[0];
        r += 1;
    }
    y[n_rows..].fill(0.0);
}

/// Dots of `R` rows (starting at `p`, `row_bytes` apart, `blocks` blocks each) with x.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `p` must point at `R` readable rows of `blocks`
/// blocks `row_bytes` apart, and `x` must hold `32·blocks` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn rows_avx2<const R: usize>(
    p: *const u8,
    row_bytes: usize,
    x: &[f32],
    blocks: usize,
) -> [f32; R] {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= blocks * QK);
    const PREFETCH: usize = 768;
    let mask = _mm256_set1_epi32(0x0F);
    let minus8 = _mm256_set1_ps(-8.0);
    let mut acc = [_mm256_setzero_ps(); R];
    let (xp, mut bp) = (x.as_ptr(), p);
    for b in 0..blocks {
        // SAFETY (whole body): block b of each row is at bp + r·row_bytes (18 bytes: f16 d,
        // 16 nibble bytes) and x[32b..32b + 32] is inside x, per the function's contract.
        unsafe {
            let xb = xp.add(QK * b);
            let x0 = _mm256_loadu_ps(xb);
            let x1 = _mm256_loadu_ps(xb.add(8));
            let x2 = _mm256_loadu_ps(xb.add(16));
            let x3 = _mm256_loadu_ps(xb.add(24));
            // −8·Σx per lane: the offset of every row's quants, computed once for R rows.
            let init = _mm256_mul_ps(
                _mm256_add_ps(_mm256_add_ps(x0, x1), _mm256_add_ps(x2, x3)),
                minus8,
            );
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let blk = bp.add(r * row_bytes);
                // Software prefetch well ahead in each of the R row streams: the hardware
                // prefetcher alone leaves this loop waiting on DRAM.
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(PREFETCH).cast());
                let d =
                    _mm256_cvtph_ps(_mm_set1_epi16(std::ptr::read_unaligned(blk.cast::<i16>())));
                // Bytes 0..8 / 8..16 as i32 lanes: low nibbles are elements 0..16, high
                // nibbles 16..32, lining up with contiguous x.
                let a = _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.add(2).cast()));
                let c = _mm256_cvtepu8_epi32(_mm_loadl_epi64(blk.add(10).cast()));
                let q0 = _mm256_cvtepi32_ps(_mm256_and_si256(a, mask));
                let q1 = _mm256_cvtepi32_ps(_mm256_and_si256(c, mask));
                let q2 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(a));
                let q3 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(c));
                let s = _mm256_fmadd_ps(q0, x0, init);
                let s = _mm256_fmadd_ps(q1, x1, s);
                let s = _mm256_fmadd_ps(q2, x2, s);
                let s = _mm256_fmadd_ps(q3, x3, s);
                *acc_r = _mm256_fmadd_ps(d, s, *acc_r);
            }
            bp = bp.add(18);
        }
    }
    acc.map(|v| simd::x86::hsum(v))
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_avx2(src: &[u8], dst: &mut [f32]) {
    use simd::x86::{load16, nibbles};
    use std::arch::x86_64::*;
    let eight = _mm_set1_epi8(8);
    for (b, out) in as_blocks::<BlockQ4_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let (lo, hi) = nibbles(load16(&b.qs));
        let (lo, hi) = (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight));
        let d = _mm256_set1_ps(simd::x86::f16_scale(b.d));
        let parts = [
            lo,
            _mm_unpackhi_epi64(lo, lo),
            hi,
            _mm_unpackhi_epi64(hi, hi),
        ];
        for (k, part) in parts.into_iter().enumerate() {
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(part)), d);
            // SAFETY: `out` holds exactly 32 f32 and 8k + 8 <= 32.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), v) };
        }
    }
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn dot_neon(row: &[u8], x: &[f32]) -> f32 {
    use simd::neon::{block_dot_i8, load16, nibbles, sum_blocks};
    use std::arch::aarch64::*;
    let eight = vdupq_n_s8(8);
    sum_blocks(row, x, |b: &BlockQ4_0, xb, acc| {
        let (lo, hi) = nibbles(load16(&b.qs));
        let lo = vsubq_s8(vreinterpretq_s8_u8(lo), eight);
        let hi = vsubq_s8(vreinterpretq_s8_u8(hi), eight);
        vfmaq_n_f32(acc, block_dot_i8(lo, hi, xb), f16_le(b.d))
    })
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn dequantize_neon(src: &[u8], dst: &mut [f32]) {
    use simd::neon::{load16, nibbles};
    use std::arch::aarch64::*;
    let eight = vdupq_n_s8(8);
    for (b, out) in as_blocks::<BlockQ4_0>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        let (lo, hi) = nibbles(load16(&b.qs));
        let d = f16_le(b.d);
        for (k, part) in [lo, hi].into_iter().enumerate() {
            let q = vsubq_s8(vreinterpretq_s8_u8(part), eight);
            let w0 = vmovl_s8(vget_low_s8(q));
            let w1 = vmovl_high_s8(q);
            let f = [
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(w0))),
                vcvtq_f32_s32(vmovl_high_s16(w0)),
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(w1))),
                vcvtq_f32_s32(vmovl_high_s16(w1)),
            ];
            for (m, v) in f.into_iter().enumerate() {
                // SAFETY: `out` holds exactly 32 f32 and 16k + 4m + 4 <= 32.
                unsafe { vst1q_f32(out.as_mut_ptr().add(16 * k + 4 * m), vmulq_n_f32(v, d)) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::simd::test_util::*;

    const K: Kernels = Kernels {
        block_bytes: 18,
        scale_offsets: &[0],
        dequantize_ref,
        dequantize,
        dot_ref,
        dot,
        magnitude: None,
    };

    #[test]
    fn hand_built_block_decodes_to_known_values() {
        // d = 0.5 (f16 0x3800); byte j = (j low, 15 − j high) → element j = 0.5·(j − 8),
        // element j + 16 = 0.5·(7 − j).
        let mut blk = vec![0x00, 0x38];
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize_ref(&blk, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 0.5 * (j as f32 - 8.0));
            assert_eq!(out[j + 16], 0.5 * (7.0 - j as f32));
        }
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let want: f32 = (0..16)
            .map(|j| 0.5 * (j as f32 - 8.0) * j as f32)
            .sum::<f32>()
            + (0..16)
                .map(|j| 0.5 * (7.0 - j as f32) * (j + 16) as f32)
                .sum::<f32>();
        assert_eq!(dot_ref(&blk, &x), want);
        assert_eq!(dot(&blk, &x), want);
    }

    #[test]
    fn dot_matches_ref_on_random_rows() {
        check_random_rows(&K, 40, 0.1);
    }

    /// The portable fallback (used on targets without AVX2/NEON) against the reference.
    #[test]
    fn portable_dot_matches_ref() {
        let k = Kernels {
            dot: |r, x| simd::dot_decoded_scalar(r, x, decode_block),
            ..K
        };
        check_random_rows(&k, 43, 0.1);
        check_edge_rows(&k, 44);
    }

    /// `dot_rows` against `dot_ref` per row, for 1..=9 rows (the 4-row kernel and the
    /// remainder) of random and edge blocks. It sums q·x and −8·x separately, so the error
    /// scales with Σ|d|·(q + 8)·|x| rather than Σ|d·(q − 8)·x|.
    #[test]
    fn dot_rows_matches_ref() {
        let mut r = rng(45);
        for blocks in [1usize, 2, 7, 40] {
            for n_rows in 1..=9 {
                let row_bytes = blocks * 18;
                let mut rows = bytes(&mut r, n_rows * row_bytes);
                for (i, b) in rows.chunks_exact_mut(18).enumerate() {
                    // Every 5th block gets an edge scale (0, −0, subnormal, largest finite).
                    let d = match i % 10 {
                        0 => [0x00, 0x00],
                        5 => [0x00, 0x80],
                        3 => [0x01, 0x00],
                        8 => [0xFF, 0x7B],
                        _ => scale(&mut r, 0.1),
                    };
                    b[..2].copy_from_slice(&d);
                }
                let x = values(&mut r, blocks * QK, 1.0);
                let mut y = vec![f32::NAN; n_rows];
                dot_rows(&rows, row_bytes, &x, &mut y);
                for (i, row) in rows.chunks_exact(row_bytes).enumerate() {
                    let mag: f64 = as_blocks::<BlockQ4_0>(row)
                        .iter()
                        .zip(x.chunks_exact(QK))
                        .map(|(b, xb)| {
                            let d = f16_le(b.d).abs() as f64;
                            let q = |j: usize| {
                                let byte = b.qs[j % 16];
                                (if j < 16 { byte & 15 } else { byte >> 4 }) as f64
                            };
                            (0..QK)
                                .map(|j| d * (q(j) + 8.0) * (xb[j] as f64).abs())
                                .sum::<f64>()
                        })
                        .sum();
                    let what = format!("{blocks} blocks, row {i} of {n_rows}");
                    assert_dot_close(y[i], dot_ref(row, &x), mag, block_steps(blocks), &what);
                }
            }
        }
    }

    #[test]
    fn dot_matches_ref_on_edge_blocks() {
        check_edge_rows(&K, 41);
    }

    #[test]
    fn quantize_error_is_at_most_half_a_step() {
        // q = trunc(x/d + 8.5) rounds x/d + 8 to nearest (ties up), so |x − d(q − 8)| ≤ |d|/2
        // (computed with the f32 d; the stored f16 d adds |q − 8|·|d − d16| ≤ 8|d − d16|).
        // The clamp to 15 bites where x/d ≥ 7.5 (values near −max, the side with 7 levels
        // only): there the error is |d|·(x/d − 7) ≤ |d|.
        let mut r = rng(42);
        let src = values(&mut r, 64 * QK, 2.0);
        let mut q = vec![0u8; 64 * 18];
        quantize_ref(&src, &mut q);
        let mut back = vec![0.0; src.len()];
        dequantize_ref(&q, &mut back);
        for (bi, xb) in src.chunks_exact(QK).enumerate() {
            let max = xb
                .iter()
                .copied()
                .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
            let d = max / -8.0;
            let d16 = f16_le([q[bi * 18], q[bi * 18 + 1]]);
            let slack = 8.0 * (d - d16).abs() + 1e-6 * d.abs();
            for (j, &v) in xb.iter().enumerate() {
                let err = (v - back[bi * QK + j]).abs();
                let bound = if v / d >= 7.49 {
                    d.abs()
                } else {
                    d.abs() / 2.0
                } + slack;
                assert!(
                    err <= bound,
                    "block {bi} elem {j}: {v} → {} err {err} > {bound}",
                    back[bi * QK + j]
                );
            }
        }
    }

    #[test]
    fn quantize_known_block() {
        // max = −8 → d = 1, id = 1: x = k − 8 for k = 0..15 maps to nibble k; x = 8 → 16.5 → 15.
        let mut src = [0.0f32; 32];
        for j in 0..16 {
            src[j] = j as f32 - 8.0;
            src[j + 16] = 0.0;
        }
        src[31] = 7.4; // 15.9 → 15
        let mut q = [0u8; 18];
        quantize_ref(&src, &mut q);
        assert_eq!(f16_le([q[0], q[1]]), 1.0);
        for j in 0..16 {
            let hi = if j == 15 { 15 } else { 8 };
            assert_eq!(q[2 + j], j as u8 | (hi << 4), "byte {j}");
        }
        // All-zero block: d = 0/−8 = −0 (f16 0x8000, as in C), every nibble 8 (0 + 8.5 → 8).
        let mut z = [0u8; 18];
        quantize_ref(&[0.0; 32], &mut z);
        assert_eq!(
            z,
            [
                0, 0x80, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88, 0x88,
                0x88, 0x88, 0x88, 0x88
            ]
        );
    }
}
