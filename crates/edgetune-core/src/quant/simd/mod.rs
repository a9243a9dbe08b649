//! Shared pieces of the simple quant kernels: f16 helpers, block views, feature detection,
//! horizontal sums and the 32-element "signed bytes · f32" block dot for AVX2 and NEON.
//!
//! The activations `x` stay f32 (training needs them exact), so every block kernel has the
//! same shape: turn the block's 32 quants into f32 lanes, multiply-add them with 32 values of
//! `x` into a per-block partial sum, and apply the block scale once with one FMA.

/// Elements per block of every "simple" format (Q4_0 … Q8_1, IQ4_NL).
pub(crate) const QK: usize = 32;

/// Reads a little-endian IEEE half (a block scale) as f32; exact.
#[inline(always)]
pub(crate) fn f16_le(bytes: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(bytes).to_f32()
}

/// Rounds `v` to the nearest half, ties to even (ggml's `GGML_FP32_TO_FP16`), as LE bytes.
#[inline(always)]
pub(crate) fn f16_bytes(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_le_bytes()
}

/// Views whole blocks of `bytes` as `B` (a `#[repr(C)]` byte-array struct, align 1). Trailing
/// bytes that do not make a whole block are ignored (callers validate lengths beforehand).
#[inline(always)]
pub(crate) fn as_blocks<B: bytemuck::Pod>(bytes: &[u8]) -> &[B] {
    let size = std::mem::size_of::<B>();
    debug_assert_eq!(bytes.len() % size, 0, "not a whole number of blocks");
    bytemuck::cast_slice(&bytes[..bytes.len() / size * size])
}

/// Mutable version of [`as_blocks`].
#[inline(always)]
pub(crate) fn as_blocks_mut<B: bytemuck::Pod>(bytes: &mut [u8]) -> &mut [B] {
    let size = std::mem::size_of::<B>();
    debug_assert_eq!(bytes.len() % size, 0, "not a whole number of blocks");
    let whole = bytes.len() / size * size;
    bytemuck::cast_slice_mut(&mut bytes[..whole])
}

/// Σ w[i]·x[i] with products and sum in f64, rounded once: the specification of every `dot`.
pub(crate) fn dot_f64(w: &[f32], x: &[f32]) -> f32 {
    w.iter()
        .zip(x)
        .map(|(&a, &b)| a as f64 * b as f64)
        .sum::<f64>() as f32
}

/// Portable dot of a row of blocks: each block is decoded by `decode` into 32 f32 values and
/// multiplied with its 32 activations; used where no SIMD path exists.
#[inline(always)]
pub(crate) fn dot_decoded_scalar<B: bytemuck::Pod>(
    row: &[u8],
    x: &[f32],
    decode: impl Fn(&B, &mut [f32]),
) -> f32 {
    let mut buf = [0.0f32; QK];
    // Eight independent partial sums so the loop is not one long dependency chain.
    let mut acc = [0.0f32; 8];
    for (b, xb) in as_blocks::<B>(row).iter().zip(x.chunks_exact(QK)) {
        decode(b, &mut buf);
        for (w8, x8) in buf.chunks_exact(8).zip(xb.chunks_exact(8)) {
            for k in 0..8 {
                acc[k] = w8[k].mul_add(x8[k], acc[k]);
            }
        }
    }
    acc.iter().sum()
}

/// f32 · f32 dot of equal-length slices (the F32 type's `dot`), SIMD where available.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { x86::dot_f32_avx2(a, b) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline.
    return unsafe { neon::dot_f32(a, b) };
    #[allow(unreachable_code)]
    dot_f32_scalar(a, b)
}

/// Portable f32 dot with eight partial sums.
pub(crate) fn dot_f32_scalar(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (a8, a_tail) = a.split_at(a.len() / 8 * 8);
    for (ac, bc) in a8.chunks_exact(8).zip(b.chunks_exact(8)) {
        for k in 0..8 {
            acc[k] = ac[k].mul_add(bc[k], acc[k]);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (&p, &q) in a_tail.iter().zip(&b[a8.len().min(b.len())..]) {
        sum = p.mul_add(q, sum);
    }
    sum
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86 {
    use std::arch::x86_64::*;

    /// AVX2 + FMA: the baseline of every x86-64 kernel here.
    #[inline]
    pub(crate) fn has_avx2_fma() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// AVX2 + FMA + F16C: kernels that convert f16 scales or f16 vectors.
    #[inline]
    pub(crate) fn has_avx2_fma_f16c() -> bool {
        has_avx2_fma() && is_x86_feature_detected!("f16c")
    }

    /// Sum of the eight lanes of `v`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Σ over a row's blocks of `step(block, its 32 activations, accumulator)`, alternating two
    /// named accumulators so consecutive blocks' scale FMAs do not wait on each other (an
    /// indexed accumulator array would live in memory).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn sum_blocks<B: bytemuck::Pod>(
        row: &[u8],
        x: &[f32],
        step: impl Fn(&B, &[f32], __m256) -> __m256,
    ) -> f32 {
        let blocks = super::as_blocks::<B>(row);
        let n = blocks.len().min(x.len() / 32);
        let (blocks, x) = (&blocks[..n], &x[..n * 32]);
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        for (bp, xp) in blocks.chunks_exact(2).zip(x.chunks_exact(64)) {
            acc0 = step(&bp[0], &xp[..32], acc0);
            acc1 = step(&bp[1], &xp[32..], acc1);
        }
        if n % 2 == 1 {
            acc0 = step(&blocks[n - 1], &x[(n - 1) * 32..], acc0);
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    /// A block's f16 scale (two LE bytes) as f32 via F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(crate) fn f16_scale(bytes: [u8; 2]) -> f32 {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            u16::from_le_bytes(bytes) as i32
        )))
    }

    /// Loads 16 bytes (a block's packed nibbles or half of its i8 quants).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn load16(bytes: &[u8; 16]) -> __m128i {
        // SAFETY: `bytes` is exactly 16 readable bytes; loadu has no alignment requirement.
        unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
    }

    /// Splits 16 packed bytes into (low nibbles, high nibbles) as bytes 0..=15: ggml's layout
    /// puts element j in the low nibble of byte j and element j+16 in its high nibble.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn nibbles(packed: __m128i) -> (__m128i, __m128i) {
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16::<4>(packed), mask);
        (lo, hi)
    }

    /// Σ q[i]·x[i] over one block of 32 signed bytes (`lo` = elements 0..16, `hi` = 16..32)
    /// and 32 activations, as eight lane partial sums (the caller applies the block scale).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn block_dot_i8(lo: __m128i, hi: __m128i, x: &[f32]) -> __m256 {
        debug_assert!(x.len() >= 32);
        let q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo));
        let q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(lo, lo)));
        let q2 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi));
        let q3 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(hi, hi)));
        let p = x.as_ptr();
        // SAFETY: x holds at least 32 f32 (every caller passes a 32-element chunk); loadu has
        // no alignment requirement.
        let (x0, x1, x2, x3) = unsafe {
            (
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            )
        };
        // Two short chains instead of one of four.
        let a = _mm256_fmadd_ps(q2, x2, _mm256_mul_ps(q0, x0));
        let b = _mm256_fmadd_ps(q3, x3, _mm256_mul_ps(q1, x1));
        _mm256_add_ps(a, b)
    }

    /// Σ x[i] over 32 activations as eight lane partial sums (for the `d·q + m` formats).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(crate) fn block_sum(x: &[f32]) -> __m256 {
        debug_assert!(x.len() >= 32);
        let p = x.as_ptr();
        // SAFETY: x holds at least 32 f32.
        unsafe {
            let a = _mm256_add_ps(_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
            let b = _mm256_add_ps(_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24)));
            _mm256_add_ps(a, b)
        }
    }

    /// f32 dot with four 8-lane accumulators.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (k, acc_k) in acc.iter_mut().enumerate() {
                // SAFETY: i + 8k + 8 <= n <= len of both slices.
                let (va, vb) = unsafe {
                    (
                        _mm256_loadu_ps(a.as_ptr().add(i + 8 * k)),
                        _mm256_loadu_ps(b.as_ptr().add(i + 8 * k)),
                    )
                };
                *acc_k = _mm256_fmadd_ps(va, vb, *acc_k);
            }
            i += 32;
        }
        while i + 8 <= n {
            // SAFETY: i + 8 <= n.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                )
            };
            acc[0] = _mm256_fmadd_ps(va, vb, acc[0]);
            i += 8;
        }
        let v = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut sum = hsum(v);
        for j in i..n {
            sum = a[j].mul_add(b[j], sum);
        }
        sum
    }

    /// AVX2 dot of a row of blocks decoded one at a time by `decode` (formats without a
    /// dedicated kernel).
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn dot_decoded<B: bytemuck::Pod>(
        row: &[u8],
        x: &[f32],
        decode: impl Fn(&B, &mut [f32]),
    ) -> f32 {
        let mut buf = [0.0f32; 32];
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        for (b, xb) in super::as_blocks::<B>(row).iter().zip(x.chunks_exact(32)) {
            decode(b, &mut buf);
            let (w, xp) = (buf.as_ptr(), xb.as_ptr());
            // SAFETY: buf and xb both hold exactly 32 f32.
            unsafe {
                acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(w), _mm256_loadu_ps(xp), acc0);
                acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(8)), _mm256_loadu_ps(xp.add(8)), acc1);
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w.add(16)),
                    _mm256_loadu_ps(xp.add(16)),
                    acc0,
                );
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(w.add(24)),
                    _mm256_loadu_ps(xp.add(24)),
                    acc1,
                );
            }
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use std::arch::aarch64::*;

    /// Σ q[i]·x[i] over one block of 32 signed bytes (`lo` = elements 0..16, `hi` = 16..32)
    /// and 32 activations, as four lane partial sums (the caller applies the block scale).
    #[target_feature(enable = "neon")]
    #[inline]
    pub(crate) fn block_dot_i8(lo: int8x16_t, hi: int8x16_t, x: &[f32]) -> float32x4_t {
        debug_assert!(x.len() >= 32);
        let l0 = vmovl_s8(vget_low_s8(lo));
        let l1 = vmovl_high_s8(lo);
        let h0 = vmovl_s8(vget_low_s8(hi));
        let h1 = vmovl_high_s8(hi);
        let lo4 = |v: int16x8_t| vcvtq_f32_s32(vmovl_s16(vget_low_s16(v)));
        let hi4 = |v: int16x8_t| vcvtq_f32_s32(vmovl_high_s16(v));
        let p = x.as_ptr();
        // SAFETY: x holds at least 32 f32 (every caller passes a 32-element chunk).
        let xs: [float32x4_t; 8] = unsafe {
            [
                vld1q_f32(p),
                vld1q_f32(p.add(4)),
                vld1q_f32(p.add(8)),
                vld1q_f32(p.add(12)),
                vld1q_f32(p.add(16)),
                vld1q_f32(p.add(20)),
                vld1q_f32(p.add(24)),
                vld1q_f32(p.add(28)),
            ]
        };
        let mut a = vmulq_f32(lo4(l0), xs[0]);
        let mut b = vmulq_f32(hi4(l0), xs[1]);
        a = vfmaq_f32(a, lo4(l1), xs[2]);
        b = vfmaq_f32(b, hi4(l1), xs[3]);
        a = vfmaq_f32(a, lo4(h0), xs[4]);
        b = vfmaq_f32(b, hi4(h0), xs[5]);
        a = vfmaq_f32(a, lo4(h1), xs[6]);
        b = vfmaq_f32(b, hi4(h1), xs[7]);
        vaddq_f32(a, b)
    }

    /// Σ over a row's blocks of `step(block, its 32 activations, accumulator)`, alternating two
    /// named accumulators (see the x86 version).
    #[target_feature(enable = "neon")]
    #[inline]
    pub(crate) fn sum_blocks<B: bytemuck::Pod>(
        row: &[u8],
        x: &[f32],
        step: impl Fn(&B, &[f32], float32x4_t) -> float32x4_t,
    ) -> f32 {
        let blocks = super::as_blocks::<B>(row);
        let n = blocks.len().min(x.len() / 32);
        let (blocks, x) = (&blocks[..n], &x[..n * 32]);
        let mut acc0 = vdupq_n_f32(0.0);
        let mut acc1 = vdupq_n_f32(0.0);
        for (bp, xp) in blocks.chunks_exact(2).zip(x.chunks_exact(64)) {
            acc0 = step(&bp[0], &xp[..32], acc0);
            acc1 = step(&bp[1], &xp[32..], acc1);
        }
        if n % 2 == 1 {
            acc0 = step(&blocks[n - 1], &x[(n - 1) * 32..], acc0);
        }
        vaddvq_f32(vaddq_f32(acc0, acc1))
    }

    /// Σ x[i] over 32 activations as four lane partial sums.
    #[target_feature(enable = "neon")]
    #[inline]
    pub(crate) fn block_sum(x: &[f32]) -> float32x4_t {
        debug_assert!(x.len() >= 32);
        let p = x.as_ptr();
        // SAFETY: x holds at least 32 f32.
        unsafe {
            let a = vaddq_f32(vld1q_f32(p), vld1q_f32(p.add(4)));
            let b = vaddq_f32(vld1q_f32(p.add(8)), vld1q_f32(p.add(12)));
            let c = vaddq_f32(vld1q_f32(p.add(16)), vld1q_f32(p.add(20)));
            let d = vaddq_f32(vld1q_f32(p.add(24)), vld1q_f32(p.add(28)));
            vaddq_f32(vaddq_f32(a, b), vaddq_f32(c, d))
        }
    }

    /// Loads 16 bytes.
    #[target_feature(enable = "neon")]
    #[inline]
    pub(crate) fn load16(bytes: &[u8; 16]) -> uint8x16_t {
        // SAFETY: `bytes` is exactly 16 readable bytes.
        unsafe { vld1q_u8(bytes.as_ptr()) }
    }

    /// Splits 16 packed bytes into (low nibbles, high nibbles), as bytes 0..=15.
    #[target_feature(enable = "neon")]
    #[inline]
    pub(crate) fn nibbles(packed: uint8x16_t) -> (uint8x16_t, uint8x16_t) {
        (vandq_u8(packed, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(packed))
    }

    /// f32 dot with four 4-lane accumulators.
    #[target_feature(enable = "neon")]
    pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let mut acc = [vdupq_n_f32(0.0); 4];
        let mut i = 0;
        while i + 16 <= n {
            for (k, acc_k) in acc.iter_mut().enumerate() {
                // SAFETY: i + 4k + 4 <= n <= len of both slices.
                let (va, vb) = unsafe {
                    (
                        vld1q_f32(a.as_ptr().add(i + 4 * k)),
                        vld1q_f32(b.as_ptr().add(i + 4 * k)),
                    )
                };
                *acc_k = vfmaq_f32(*acc_k, va, vb);
            }
            i += 16;
        }
        let mut sum = vaddvq_f32(vaddq_f32(
            vaddq_f32(acc[0], acc[1]),
            vaddq_f32(acc[2], acc[3]),
        ));
        for j in i..n {
            sum = a[j].mul_add(b[j], sum);
        }
        sum
    }

    /// NEON dot of a row of blocks decoded one at a time by `decode`.
    #[target_feature(enable = "neon")]
    #[inline]
    pub(crate) fn dot_decoded<B: bytemuck::Pod>(
        row: &[u8],
        x: &[f32],
        decode: impl Fn(&B, &mut [f32]),
    ) -> f32 {
        let mut buf = [0.0f32; 32];
        let mut acc = [vdupq_n_f32(0.0); 2];
        for (b, xb) in super::as_blocks::<B>(row).iter().zip(x.chunks_exact(32)) {
            decode(b, &mut buf);
            for k in 0..8 {
                // SAFETY: buf and xb both hold exactly 32 f32; 4k + 4 <= 32.
                let (w, v) = unsafe {
                    (
                        vld1q_f32(buf.as_ptr().add(4 * k)),
                        vld1q_f32(xb.as_ptr().add(4 * k)),
                    )
                };
                acc[k & 1] = vfmaq_f32(acc[k & 1], w, v);
            }
        }
        vaddvq_f32(vaddq_f32(acc[0], acc[1]))
    }
}

/// Dot of a row of blocks for formats without a dedicated SIMD kernel: decode each block to
/// f32 (with the bit-exact scalar decoder) and multiply it with SIMD.
#[inline]
pub(crate) fn dot_decoded<B: bytemuck::Pod>(
    row: &[u8],
    x: &[f32],
    decode: impl Fn(&B, &mut [f32]),
) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if x86::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        return unsafe { x86::dot_decoded(row, x, decode) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline.
    return unsafe { neon::dot_decoded(row, x, decode) };
    #[allow(unreachable_code)]
    dot_decoded_scalar(row, x, decode)
}

#[cfg(test)]
pub(crate) mod test_util;

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    #[test]
    fn dot_f32_matches_f64_reference() {
        let mut r = rng(1);
        for n in [0usize, 1, 7, 8, 9, 31, 32, 33, 100, 1000] {
            let a = values(&mut r, n, 3.0);
            let b = values(&mut r, n, 0.5);
            let mag: f64 = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (*p as f64 * *q as f64).abs())
                .sum();
            let steps = n / 8 + 16;
            assert_dot_close(dot_f32(&a, &b), dot_f64(&a, &b), mag, steps, "dot_f32");
            assert_dot_close(
                dot_f32_scalar(&a, &b),
                dot_f64(&a, &b),
                mag,
                steps,
                "scalar",
            );
        }
    }

    #[test]
    fn f16_helpers_round_trip() {
        assert_eq!(f16_bytes(1.0), [0x00, 0x3C]);
        assert_eq!(f16_le([0x00, 0x3C]), 1.0);
        assert_eq!(f16_le([0x01, 0x00]), 2f32.powi(-24));
    }
}
