//! Q4_1: 32 weights per 20-byte block, value = d·q + m with q a 4-bit unsigned nibble.
//!
//! Block layout (ggml `block_q4_1`): f16 `d`, f16 `m`, then 16 bytes of nibbles (element j low,
//! element j + 16 high), as Q4_0.

use super::simd::{self, QK, as_blocks, as_blocks_mut, f16_bytes, f16_le};
use bytemuck::{Pod, Zeroable};

/// One Q4_1 block (20 bytes, align 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale, IEEE half, little-endian.
    pub d: [u8; 2],
    /// Offset (the block minimum), IEEE half, little-endian.
    pub m: [u8; 2],
    /// Packed nibbles: element j low, element j + 16 high.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::align_of::<BlockQ4_1>() == 1);

/// Decodes one block as ggml / gguf-py: `q as f32 · d`, then `+ m`, two f32 roundings.
#[inline(always)]
fn decode_block(b: &BlockQ4_1, out: &mut [f32]) {
    let (d, m) = (f16_le(b.d), f16_le(b.m));
    for (j, &byte) in b.qs.iter().enumerate() {
        out[j] = (byte & 0x0F) as f32 * d + m;
        out[j + QK / 2] = (byte >> 4) as f32 * d + m;
    }
}

/// Scalar specification of the decoder (bit-exact with ggml and gguf-py).
pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / 20 * QK, dst.len());
    for (b, out) in as_blocks::<BlockQ4_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        decode_block(b, out);
    }
}

/// Fastest decoder; bitwise equal to [`dequantize_ref`] (the same multiply, then add, per value:
/// no fused multiply-add).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::x86::has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        return unsafe { dequantize_avx2(src, dst) };
    }
    dequantize_ref(src, dst)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize_avx2(src: &[u8], dst: &mut [f32]) {
    use simd::x86::{load16, nibbles};
    use std::arch::x86_64::*;
    for (b, out) in as_blocks::<BlockQ4_1>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        // Nibbles 0..15 as bytes: elements 0..16 in `lo`, 16..32 in `hi`.
        let (lo, hi) = nibbles(load16(&b.qs));
        let d = _mm256_set1_ps(simd::x86::f16_scale(b.d));
        let m = _mm256_set1_ps(simd::x86::f16_scale(b.m));
        let parts = [
            lo,
            _mm_unpackhi_epi64(lo, lo),
            hi,
            _mm_unpackhi_epi64(hi, hi),
        ];
        for (k, part) in parts.into_iter().enumerate() {
            let q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
            let v = _mm256_add_ps(_mm256_mul_ps(q, d), m);
            // SAFETY: `out` holds exactly 32 f32 and 8k + 8 <= 32.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * k), v) };
        }
    }
}

/// llama.cpp's `quantize_row_q4_1_ref`: d = (max − min)/15, m = min,
/// q = min(15, trunc((x − min)/d + 0.5)).
pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / QK * 20, dst.len());
    for (xb, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockQ4_1>(dst)) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16_bytes(d);
        b.m = f16_bytes(min);
        for j in 0..QK / 2 {
            // (x − min)·id ∈ [0, 15] up to rounding; `as i8` truncates like C's (int8_t).
            let q0 = (((xb[j] - min) * id + 0.5) as i8).min(15) as u8;
            let q1 = (((xb[j + QK / 2] - min) * id + 0.5) as i8).min(15) as u8;
            b.qs[j] = q0 | (q1 << 4);
        }
    }
}

/// Σ dequantize_ref(row)[i]·x[i] in f64, rounded once: the specification of [`dot`].
pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0.0f32; row.len() / 20 * QK];
    dequantize_ref(row, &mut w);
    simd::dot_f64(&w, x)
}

/// Σ w[i]·x[i] for a Q4_1 row, computed per block as d·Σq·x + m·Σx, SIMD chosen at run time.
pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len() / 20 * QK, x.len());
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
    use simd::x86::{block_dot_i8, block_sum, f16_scale, hsum, load16, nibbles};
    use std::arch::x86_64::*;
    // One accumulator for the d·Σq·x parts and one for the m·Σx parts.
    let mut acc_q = _mm256_setzero_ps();
    let mut acc_m = _mm256_setzero_ps();
    for (b, xb) in as_blocks::<BlockQ4_1>(row).iter().zip(x.chunks_exact(QK)) {
        let (lo, hi) = nibbles(load16(&b.qs));
        let qx = block_dot_i8(lo, hi, xb);
        let sx = block_sum(xb);
        acc_q = _mm256_fmadd_ps(_mm256_set1_ps(f16_scale(b.d)), qx, acc_q);
        acc_m = _mm256_fmadd_ps(_mm256_set1_ps(f16_scale(b.m)), sx, acc_m);
    }
    hsum(_mm256_add_ps(acc_q, acc_m))
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn dot_neon(row: &[u8], x: &[f32]) -> f32 {
    use simd::neon::{block_dot_i8, block_sum, load16, nibbles};
    use std::arch::aarch64::*;
    let mut acc_q = vdupq_n_f32(0.0);
    let mut acc_m = vdupq_n_f32(0.0);
    for (b, xb) in as_blocks::<BlockQ4_1>(row).iter().zip(x.chunks_exact(QK)) {
        let (lo, hi) = nibbles(load16(&b.qs));
        let qx = block_dot_i8(vreinterpretq_s8_u8(lo), vreinterpretq_s8_u8(hi), xb);
        acc_q = vfmaq_n_f32(acc_q, qx, f16_le(b.d));
        acc_m = vfmaq_n_f32(acc_m, block_sum(xb), f16_le(b.m));
    }
    vaddvq_f32(vaddq_f32(acc_q, acc_m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::simd::test_util::*;

    /// Σ|d·q·x| + Σ|m·x|: the kernel sums the two parts separately, so its rounding error is
    /// relative to both, not to Σ|(d·q + m)·x| (which may cancel).
    fn magnitude(row: &[u8], x: &[f32]) -> f64 {
        let mut sum = 0.0;
        for (b, xb) in as_blocks::<BlockQ4_1>(row).iter().zip(x.chunks_exact(QK)) {
            let (d, m) = (f16_le(b.d) as f64, f16_le(b.m) as f64);
            for (j, &byte) in b.qs.iter().enumerate() {
                let (q0, q1) = ((byte & 15) as f64, (byte >> 4) as f64);
                sum += (d * q0 * xb[j] as f64).abs() + (m * xb[j] as f64).abs();
                sum += (d * q1 * xb[j + 16] as f64).abs() + (m * xb[j + 16] as f64).abs();
            }
        }
        sum
    }

    const K: Kernels = Kernels {
        block_bytes: 20,
        scale_offsets: &[0, 2],
        dequantize_ref,
        dequantize,
        dot_ref,
        dot,
        magnitude: Some(magnitude),
    };

    #[test]
    fn hand_built_block_decodes_to_known_values() {
        // d = 2 (0x4000), m = −1 (0xBC00); byte j = (j low, 15 − j high).
        let mut blk = vec![0x00, 0x40, 0x00, 0xBC];
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize_ref(&blk, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * j as f32 - 1.0);
            assert_eq!(out[j + 16], 2.0 * (15 - j) as f32 - 1.0);
        }
        let x = [1.0f32; 32];
        // Σ over both halves of 2q − 1 = 2·(2·120) − 32 = 448.
        assert_eq!(dot_ref(&blk, &x), 448.0);
        assert_eq!(dot(&blk, &x), 448.0);
    }

    #[test]
    fn dot_matches_ref_on_random_rows() {
        check_random_rows(&K, 50, 0.1);
    }

    #[test]
    fn dot_matches_ref_on_edge_blocks() {
        check_edge_rows(&K, 51);
    }

    #[test]
    fn quantize_error_is_at_most_half_a_step() {
        // q = trunc((x − min)/d + 0.5) rounds to nearest, and (x − min)/d ∈ [0, 15], so the
        // clamp never bites: |x − (d·q + m)| ≤ d/2, plus the f16 rounding of d (times q ≤ 15)
        // and of m, plus a few f32 roundings of the decoded value.
        let mut r = rng(52);
        let src = values(&mut r, 64 * QK, 2.0);
        let mut q = vec![0u8; 64 * 20];
        quantize_ref(&src, &mut q);
        let mut back = vec![0.0; src.len()];
        dequantize_ref(&q, &mut back);
        for (bi, xb) in src.chunks_exact(QK).enumerate() {
            let min = xb.iter().copied().fold(f32::MAX, f32::min);
            let max = xb.iter().copied().fold(-f32::MAX, f32::max);
            let d = (max - min) / 15.0;
            let d16 = f16_le([q[bi * 20], q[bi * 20 + 1]]);
            let m16 = f16_le([q[bi * 20 + 2], q[bi * 20 + 3]]);
            let slack = 15.0 * (d - d16).abs()
                + (min - m16).abs()
                + 4.0 * f32::EPSILON * max.abs().max(min.abs());
            for (j, &v) in xb.iter().enumerate() {
                let err = (v - back[bi * QK + j]).abs();
                assert!(err <= d / 2.0 + slack, "block {bi} elem {j}: {v} err {err}");
            }
        }
    }

    #[test]
    fn quantize_known_block() {
        // min = 0, max = 15 → d = 1, m = 0; x = j maps to nibble j; x = 2.5 → trunc(3.0) = 3.
        let mut src = [0.0f32; 32];
        for j in 0..16 {
            src[j] = j as f32;
            src[j + 16] = 15.0 - j as f32;
        }
        src[16] = 2.5;
        src[17] = 15.0; // keep max = 15 even with src[16] changed
        let mut q = [0u8; 20];
        quantize_ref(&src, &mut q);
        assert_eq!(&q[..4], &[0x00, 0x3C, 0x00, 0x00]);
        assert_eq!(q[4], 3 << 4);
        assert_eq!(q[5], 1 | (15 << 4));
        for j in 2..16 {
            assert_eq!(q[4 + j], j as u8 | ((15 - j as u8) << 4), "byte {j}");
        }
        // Constant block: d = 0, m = the constant, every nibble 0.
        let mut c = [0u8; 20];
        quantize_ref(&[3.0; 32], &mut c);
        assert_eq!(&c[..4], &[0x00, 0x00, 0x00, 0x42]);
        assert!(c[4..].iter().all(|&b| b == 0));
    }
}
