//! K-quants: ggml's 256-element super-block formats (Q2_K … Q6_K, Q8_K) and their shared helpers.
//!
//! Every K-quant block covers `QK_K = 256` consecutive elements of a row and splits them into
//! sub-blocks of 16 (Q2_K, Q3_K, Q6_K) or 32 (Q4_K, Q5_K) elements, each with its own small
//! integer scale (and, for Q2_K/Q4_K/Q5_K, its own min), all multiplied by one f16 super-scale.
//! The layouts and the exact f32 operation order of every dequantizer follow ggml's
//! `dequantize_row_q*_K` and gguf-py's `quants.py`.
//!
//! This module holds what several formats share: f16 field access, ggml's `nearest_int`, the
//! 6-bit scale/min packing of Q4_K and Q5_K (`get_scale_min_k4`), the f64 reference dot product,
//! a generic "decode one block, then vector dot" kernel for the formats without a dedicated SIMD
//! dot, and the SIMD horizontal sums. The scale searches of the reference quantizers are in
//! [`scale_fit`].

// Index loops here spell out ggml's block layouts (element l + 32k, byte 64n + l, …), which
// iterator chains would hide.
#![allow(clippy::needless_range_loop)]

pub mod q2_k;
pub mod q3_k;
pub mod q4_k;
pub mod q5_k;
pub mod q6_k;
pub mod q8_k;
pub mod scale_fit;
#[cfg(test)]
mod test_util;

/// Elements per super-block, for every K-quant.
pub const QK_K: usize = 256;

/// Reads a little-endian f16 field as f32 (exact: every f16 is an f32).
#[inline(always)]
pub(crate) fn f16_le(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

/// Rounds an f32 to a little-endian f16 field, to nearest even as `GGML_FP32_TO_FP16` does.
#[inline(always)]
pub(crate) fn f16_le_from_f32(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// ggml's `nearest_int`: round to nearest, ties to even, through the 1.5·2²³ magic number.
///
/// Exact for |v| ≤ 4194303; outside that range (and for NaN / ∞) it returns the same garbage
/// ggml's C does, which keeps the quantizers' behaviour identical on odd inputs instead of
/// panicking.
#[inline(always)]
pub(crate) fn nearest_int(v: f32) -> i32 {
    let biased = v + 12_582_912.0;
    ((biased.to_bits() & 0x007f_ffff) as i32) - 0x0040_0000
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K / Q5_K block, as ggml's
/// `get_scale_min_k4` unpacks them from the 12 packed bytes.
///
/// Layout (bit 7 on the left): bytes 0–3 `MMSSSSSS` hold scales 0–3 and the top bits of scales
/// 4–7; bytes 4–7 `MMmmmmmm` hold mins 0–3 and the top bits of mins 4–7; bytes 8–11
/// `mmmmssss` hold the low nibbles of min and scale 4–7.
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All eight (scale, min) pairs of a Q4_K / Q5_K block.
#[inline(always)]
pub fn unpack_scales_mins_k4(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let mut sc = [0u8; 8];
    let mut mn = [0u8; 8];
    for j in 0..8 {
        (sc[j], mn[j]) = get_scale_min_k4(j, q);
    }
    (sc, mn)
}

/// Packs eight 6-bit scales and mins (values above 63 are masked to 6 bits) the way
/// `quantize_row_q4_K_ref` does; the inverse of [`get_scale_min_k4`].
pub fn pack_scales_mins_k4(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j] & 63, mn[j] & 63);
        if j < 4 {
            q[j] |= ls;
            q[j + 4] |= lm;
        } else {
            q[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            q[j - 4] |= (ls >> 4) << 6;
            q[j] |= (lm >> 4) << 6;
        }
    }
    q
}

/// The specification of every K-quant `dot`: each block is decoded with the format's reference
/// dequantizer, then Σ y·x is formed with f64 products and an f64 sum, rounded once at the end.
pub(crate) fn dot_ref_with(
    row: &[u8],
    x: &[f32],
    block_bytes: usize,
    dequantize_ref: fn(&[u8], &mut [f32]),
) -> f32 {
    debug_assert_eq!(row.len() / block_bytes * QK_K, x.len());
    let mut decoded = [0f32; QK_K];
    let mut sum = 0f64;
    for (block, xb) in row.chunks_exact(block_bytes).zip(x.chunks_exact(QK_K)) {
        dequantize_ref(block, &mut decoded);
        for (y, xv) in decoded.iter().zip(xb) {
            sum += f64::from(*y) * f64::from(*xv);
        }
    }
    sum as f32
}

/// Σ y·x for formats without a dedicated SIMD kernel: each block is decoded into a stack buffer
/// with `decode_block` (the bit-exact reference) and dotted with x by the fastest f32 kernel.
pub(crate) fn dot_decoded(
    row: &[u8],
    x: &[f32],
    block_bytes: usize,
    decode_block: fn(&[u8], &mut [f32]),
) -> f32 {
    debug_assert_eq!(row.len() / block_bytes * QK_K, x.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            return unsafe { x86::dot_decoded_avx2(row, x, block_bytes, decode_block) };
        }
    }
    let mut decoded = [0f32; QK_K];
    let mut acc = [0f32; 16];
    for (block, xb) in row.chunks_exact(block_bytes).zip(x.chunks_exact(QK_K)) {
        decode_block(block, &mut decoded);
        // Sixteen independent partial sums: the compiler vectorizes this (NEON on aarch64,
        // SSE2 on x86-64) and no single chain grows longer than 16 per block.
        for (yc, xc) in decoded.chunks_exact(16).zip(xb.chunks_exact(16)) {
            for i in 0..16 {
                acc[i] += yc[i] * xc[i];
            }
        }
    }
    pairwise_sum16(&acc)
}

/// Sums 16 partial sums as a balanced tree (depth 4).
#[inline(always)]
pub(crate) fn pairwise_sum16(a: &[f32; 16]) -> f32 {
    let mut v = *a;
    let mut n = 16;
    while n > 1 {
        n /= 2;
        for i in 0..n {
            v[i] += v[i + n];
        }
    }
    v[0]
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    //! AVX2 helpers shared by the K-quant kernels.
    use super::QK_K;
    use std::arch::x86_64::*;

    /// Sum of the eight lanes of `v` (tree order: halves, then pairs, then neighbours).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn hsum_ps(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s4 = _mm_add_ps(lo, hi);
        let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
        let s1 = _mm_add_ss(s2, _mm_movehdup_ps(s2));
        _mm_cvtss_f32(s1)
    }

    /// Eight bytes at `p`, zero-extended to eight i32 lanes.
    ///
    /// # Safety
    /// `p..p+8` must be readable; the CPU must support AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn load_u8x8_epi32(p: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 8 readable bytes; loadl_epi64 has no alignment need.
        unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)) }
    }

    /// Eight f32 at `p` (unaligned).
    ///
    /// # Safety
    /// `p..p+8` must be readable; the CPU must support AVX.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn load_ps(p: *const f32) -> __m256 {
        // SAFETY: the caller guarantees 8 readable floats; loadu has no alignment need.
        unsafe { _mm256_loadu_ps(p) }
    }

    /// [`super::dot_decoded`] with the f32 dot in AVX2: four 8-lane accumulators, so each lane
    /// chain grows by 8 per 256-element block.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) fn dot_decoded_avx2(
        row: &[u8],
        x: &[f32],
        block_bytes: usize,
        decode_block: fn(&[u8], &mut [f32]),
    ) -> f32 {
        let mut decoded = [0f32; QK_K];
        let mut acc = [_mm256_setzero_ps(); 4];
        for (block, xb) in row.chunks_exact(block_bytes).zip(x.chunks_exact(QK_K)) {
            decode_block(block, &mut decoded);
            for (yc, xc) in decoded.chunks_exact(32).zip(xb.chunks_exact(32)) {
                for k in 0..4 {
                    // SAFETY: yc and xc hold 32 floats, so offsets 8k..8k+8 (k < 4) are in bounds.
                    let (y, xv) = unsafe {
                        (
                            load_ps(yc.as_ptr().add(8 * k)),
                            load_ps(xc.as_ptr().add(8 * k)),
                        )
                    };
                    acc[k] = _mm256_fmadd_ps(y, xv, acc[k]);
                }
            }
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum_ps(s)
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    //! NEON helpers shared by the K-quant kernels (NEON is part of the aarch64 baseline).
    use std::arch::aarch64::*;

    /// Sixteen unsigned bytes as four f32x4 vectors, in element order (exact conversion).
    #[inline(always)]
    pub(crate) fn widen_u8x16(q: uint8x16_t) -> [float32x4_t; 4] {
        // SAFETY: register-only NEON operations; NEON is always present on aarch64.
        unsafe {
            let lo = vmovl_u8(vget_low_u8(q));
            let hi = vmovl_u8(vget_high_u8(q));
            [
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))),
                vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo))),
                vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))),
                vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi))),
            ]
        }
    }

    /// Sixteen signed bytes as four f32x4 vectors, in element order (exact conversion).
    #[inline(always)]
    pub(crate) fn widen_s8x16(q: int8x16_t) -> [float32x4_t; 4] {
        // SAFETY: register-only NEON operations; NEON is always present on aarch64.
        unsafe {
            let lo = vmovl_s8(vget_low_s8(q));
            let hi = vmovl_s8(vget_high_s8(q));
            [
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
                vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo))),
                vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
                vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi))),
            ]
        }
    }

    /// Adds q[i]·x[i] for 16 quants `q` (already widened) and the 16 floats of `x` into the
    /// four accumulators `acc`, and x[i] into `xsum` when given.
    #[inline(always)]
    pub(crate) fn fma16(
        q: [float32x4_t; 4],
        x: &[f32],
        acc: &mut [float32x4_t; 4],
        mut xsum: Option<&mut [float32x4_t; 4]>,
    ) {
        debug_assert!(x.len() >= 16);
        for k in 0..4 {
            // SAFETY: x holds at least 16 floats (callers pass 16-element chunks), so 4k..4k+4
            // is in bounds; vld1q_f32 has no alignment requirement beyond f32's.
            let xv = unsafe { vld1q_f32(x.as_ptr().add(4 * k)) };
            // SAFETY: register-only NEON arithmetic.
            unsafe {
                acc[k] = vfmaq_f32(acc[k], q[k], xv);
                if let Some(s) = xsum.as_deref_mut() {
                    s[k] = vaddq_f32(s[k], xv);
                }
            }
        }
    }

    /// The four accumulators summed into one vector (pairwise).
    #[inline(always)]
    pub(crate) fn sum4(a: &[float32x4_t; 4]) -> float32x4_t {
        // SAFETY: register-only NEON arithmetic.
        unsafe { vaddq_f32(vaddq_f32(a[0], a[1]), vaddq_f32(a[2], a[3])) }
    }

    /// Four zero accumulators.
    #[inline(always)]
    pub(crate) fn zero4() -> [float32x4_t; 4] {
        // SAFETY: register-only NEON operation.
        unsafe { [vdupq_n_f32(0.0); 4] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_min_packing_round_trips_all_pairs() {
        // Every (scale, min) value pair in every one of the 8 slots, the other slots holding
        // different values so cross-talk between slots would show.
        for s in 0u8..64 {
            for m in 0u8..64 {
                for j in 0..8 {
                    let mut sc = [0u8; 8];
                    let mut mn = [0u8; 8];
                    for k in 0..8 {
                        sc[k] = (s + 7 * k as u8 + 1) % 64;
                        mn[k] = (m + 13 * k as u8 + 5) % 64;
                    }
                    sc[j] = s;
                    mn[j] = m;
                    let packed = pack_scales_mins_k4(&sc, &mn);
                    assert_eq!(
                        unpack_scales_mins_k4(&packed),
                        (sc, mn),
                        "s={s} m={m} j={j}"
                    );
                }
            }
        }
    }

    #[test]
    fn scale_min_unpacking_matches_hand_layout() {
        // Hand-built bytes: scale 4 = 0b10_0101 (37): low nibble 0101 in byte 8, top bits 10 in
        // bits 6-7 of byte 0. Min 4 = 0b01_1010 (26): low nibble 1010 in the high nibble of
        // byte 8, top bits 01 in bits 6-7 of byte 4. Scale 0 = 0b11_1111 & 63 from byte 0.
        let mut q = [0u8; 12];
        q[0] = 0b1011_1111;
        q[4] = 0b0100_0011;
        q[8] = 0b1010_0101;
        assert_eq!(get_scale_min_k4(0, &q), (63, 3));
        assert_eq!(get_scale_min_k4(4, &q), (37, 26));
    }

    #[test]
    fn nearest_int_rounds_half_to_even_like_ggml() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-2.4999), -2);
        assert_eq!(nearest_int(63.49), 63);
        assert_eq!(nearest_int(-4194303.0), -4194303);
        assert_eq!(nearest_int(4194303.0), 4194303);
    }
}
