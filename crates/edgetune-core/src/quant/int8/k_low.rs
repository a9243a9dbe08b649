//! Integer kernels of Q2_K and Q3_K (Q8_K activations, as llama.cpp pairs them): 256-element
//! super-blocks of 16 sub-blocks of 16.
//!
//! Q2_K: 2-bit levels `u`, `Z = 0`, `a_j = d·(sc_j & 15)`, `m_j = −dmin·(sc_j >> 4)`.
//! Q3_K: 3-bit levels `u` = low two bits + 4·(hmask bit), `Z = 4`, `a_j = d·sc_j` with signed
//! 6-bit scales, `m = 0`.
//! Element 128n + 32j + l (n < 2, j < 4, l < 32) takes bits 2j..2j+2 of `qs[32n + l]` (and
//! bit 4n+j of `hmask[l]`), in sub-block 8n + 2j + l/16.
//!
//! The matrix-vector kernels are Q6_K's: per-pair scale vectors, one i32 total per
//! super-block, mins (Q2_K) or the zero level (Q3_K) from the activation sums.

use super::k6::blocks_in;
use super::{ActRow, ActType, IntType, unpackers};
use crate::quant::GgmlType;
use crate::quant::k_quants::f16_le;
use crate::quant::k_quants::q2_k::BlockQ2K;
use crate::quant::k_quants::q3_k::{BlockQ3K, unpack_scales};

pub(crate) static Q2_K: IntType = IntType {
    ty: GgmlType::Q2_K,
    sub: 16,
    zero: 0,
    act: ActType::Q8K,
    has_min: true,
    unpack: q2_k::unpack,
    gemv: q2_k::gemv,
};

pub(crate) static Q3_K: IntType = IntType {
    ty: GgmlType::Q3_K,
    sub: 16,
    zero: 4,
    act: ActType::Q8K,
    has_min: false,
    unpack: q3_k::unpack,
    gemv: q3_k::gemv,
};

pub(crate) mod q2_k {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in crate::quant::simd::as_blocks::<BlockQ2K>(row).iter().zip(
            u.chunks_exact_mut(256)
                .zip(a.chunks_exact_mut(16).zip(m.chunks_exact_mut(16))),
        ) {
            let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
            for j in 0..16 {
                a[j] = d * f32::from(b.scales[j] & 0x0F);
                m[j] = -(dmin * f32::from(b.scales[j] >> 4));
            }
            for n in 0..2 {
                for j in 0..4 {
                    for l in 0..32 {
                        u[128 * n + 32 * j + l] = (b.qs[32 * n + l] >> (2 * j)) & 3;
                    }
                }
            }
        }
    }
    unpackers!(body);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::k6::x86_util::{pair, scaled_sums, widen16};
        use super::super::x86::{hsum_ps, load32, scale8};
        use std::arch::x86_64::*;
        let n = blocks_in::<BlockQ2K>(row, a);
        let blocks = &crate::quant::simd::as_blocks::<BlockQ2K>(row)[..n];
        // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C; slices
        // are bounds-checked by the indexing.
        unsafe {
            let (mut acc, mut accm) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let three = _mm256_set1_epi8(3);
            for (i, b) in blocks.iter().enumerate() {
                super::super::x86::prefetch_ahead(b);
                let raw = _mm_loadu_si128(b.scales.as_ptr().cast());
                let sc = widen16(_mm_and_si128(raw, _mm_set1_epi8(0x0F)));
                let mn = widen16(_mm_and_si128(_mm_srli_epi16::<4>(raw), _mm_set1_epi8(0x0F)));
                let x = &a.qs[256 * i..256 * i + 256];
                let mut isum = _mm256_setzero_si256();
                for h in 0..2 {
                    let q = load32(b.qs[32 * h..32 * h + 32].try_into().expect("32"));
                    for j in 0..4 {
                        let u = _mm256_and_si256(
                            _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)),
                            three,
                        );
                        let o = 128 * h + 32 * j;
                        let p = D::dp(
                            _mm256_setzero_si256(),
                            u,
                            load32(x[o..o + 32].try_into().expect("32")),
                        );
                        isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(p, pair(&sc, 4 * h + j)));
                    }
                }
                let dx = a.d[16 * i];
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale8(b.d, dx), acc);
                let ms = _mm256_cvtepi32_ps(scaled_sums(&mn, &a.isum[16 * i..16 * i + 16]));
                accm = _mm256_fmadd_ps(ms, scale8(b.dmin, -dx), accm);
            }
            hsum_ps(_mm256_add_ps(acc, accm))
        }
    }
    #[cfg(target_arch = "x86_64")]
    super::super::x86::gemv_levels!(x86_entry, dot_x86);

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn dot_neon(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::neon::{act16, load16, sdot};
        use std::arch::aarch64::*;
        let n = blocks_in::<BlockQ2K>(row, a);
        let blocks = &crate::quant::simd::as_blocks::<BlockQ2K>(row)[..n];
        let mut total = 0.0f32;
        // SAFETY (whole body): the caller guarantees NEON and dotprod.
        unsafe {
            let mut acc = vdupq_n_f32(0.0);
            let three = vdupq_n_u8(3);
            for (i, b) in blocks.iter().enumerate() {
                let x = &a.qs[256 * i..256 * i + 256];
                let mut isum = vdupq_n_s32(0);
                for h in 0..2 {
                    for half in 0..2 {
                        let q = vld1q_u8(b.qs.as_ptr().add(32 * h + 16 * half));
                        let us = [
                            vandq_u8(q, three),
                            vandq_u8(vshrq_n_u8::<2>(q), three),
                            vandq_u8(vshrq_n_u8::<4>(q), three),
                            vshrq_n_u8::<6>(q),
                        ];
                        for (j, u) in us.into_iter().enumerate() {
                            let e = 128 * h + 32 * j + 16 * half;
                            let p =
                                sdot(vdupq_n_s32(0), vreinterpretq_s8_u8(u), load16(act16(x, e)));
                            isum = vmlaq_n_s32(isum, p, (b.scales[e / 16] & 0x0F) as i32);
                        }
                    }
                }
                let dx = a.d[16 * i];
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(b.d) * dx);
                let mins: i32 = (0..16)
                    .map(|j| (b.scales[j] >> 4) as i32 * a.isum[16 * i + j])
                    .sum();
                total = (mins as f32).mul_add(-(f16_le(b.dmin) * dx), total);
            }
            total + vaddvq_f32(acc)
        }
    }
    #[cfg(target_arch = "aarch64")]
    super::super::neon::gemv_neon!(neon_entry, dot_neon);

    gemv_select!();
}

pub(crate) mod q3_k {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in crate::quant::simd::as_blocks::<BlockQ3K>(row).iter().zip(
            u.chunks_exact_mut(256)
                .zip(a.chunks_exact_mut(16).zip(m.chunks_exact_mut(16))),
        ) {
            let d = f16_le(b.d);
            let sc = unpack_scales(&b.scales);
            for j in 0..16 {
                a[j] = d * f32::from(sc[j]);
                m[j] = 0.0;
            }
            for n in 0..2 {
                for j in 0..4 {
                    for l in 0..32 {
                        let low = (b.qs[32 * n + l] >> (2 * j)) & 3;
                        let high = (b.hmask[l] >> (4 * n + j)) & 1;
                        u[128 * n + 32 * j + l] = low | (high << 2);
                    }
                }
            }
        }
    }
    unpackers!(body);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::k6::x86_util::{pair, scaled_sums, scales16};
        use super::super::x86::{hsum_ps, load32, scale8};
        use std::arch::x86_64::*;
        let n = blocks_in::<BlockQ3K>(row, a);
        let blocks = &crate::quant::simd::as_blocks::<BlockQ3K>(row)[..n];
        // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C; slices
        // are bounds-checked by the indexing.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let (three, one) = (_mm256_set1_epi8(3), _mm256_set1_epi8(1));
            for (i, b) in blocks.iter().enumerate() {
                super::super::x86::prefetch_ahead(b);
                let sc = scales16(&unpack_scales(&b.scales));
                let x = &a.qs[256 * i..256 * i + 256];
                let hm = load32(&b.hmask);
                let mut isum = _mm256_setzero_si256();
                for h in 0..2 {
                    let q = load32(b.qs[32 * h..32 * h + 32].try_into().expect("32"));
                    for j in 0..4 {
                        let low = _mm256_and_si256(
                            _mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * j as i32)),
                            three,
                        );
                        let hb = _mm256_and_si256(
                            _mm256_srl_epi16(hm, _mm_cvtsi32_si128((4 * h + j) as i32)),
                            one,
                        );
                        let u = _mm256_or_si256(low, _mm256_slli_epi16::<2>(hb));
                        let o = 128 * h + 32 * j;
                        let p = D::dp(
                            _mm256_setzero_si256(),
                            u,
                            load32(x[o..o + 32].try_into().expect("32")),
                        );
                        isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(p, pair(&sc, 4 * h + j)));
                    }
                }
                // Z = 4: subtract 4·Σ_j sc_j·(Σq)_j.
                let corr = _mm256_slli_epi32::<2>(scaled_sums(&sc, &a.isum[16 * i..16 * i + 16]));
                let s = scale8(b.d, a.d[16 * i]);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(isum, corr)), s, acc);
            }
            hsum_ps(acc)
        }
    }
    #[cfg(target_arch = "x86_64")]
    super::super::x86::gemv_levels!(x86_entry, dot_x86);

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn dot_neon(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::neon::{act16, load16, sdot};
        use std::arch::aarch64::*;
        let n = blocks_in::<BlockQ3K>(row, a);
        let blocks = &crate::quant::simd::as_blocks::<BlockQ3K>(row)[..n];
        // SAFETY (whole body): the caller guarantees NEON and dotprod.
        unsafe {
            let mut acc = vdupq_n_f32(0.0);
            let (three, one, four) = (vdupq_n_u8(3), vdupq_n_u8(1), vdupq_n_s8(4));
            for (i, b) in blocks.iter().enumerate() {
                let sc = unpack_scales(&b.scales);
                let x = &a.qs[256 * i..256 * i + 256];
                let mut isum = vdupq_n_s32(0);
                for h in 0..2 {
                    for half in 0..2 {
                        let q = vld1q_u8(b.qs.as_ptr().add(32 * h + 16 * half));
                        let hm = vld1q_u8(b.hmask.as_ptr().add(16 * half));
                        for j in 0..4 {
                            let low = vandq_u8(vshlq_u8(q, vdupq_n_s8(-(2 * j as i8))), three);
                            let hb = vandq_u8(vshlq_u8(hm, vdupq_n_s8(-((4 * h + j) as i8))), one);
                            let u = vorrq_u8(low, vshlq_n_u8::<2>(hb));
                            let v = vsubq_s8(vreinterpretq_s8_u8(u), four);
                            let e = 128 * h + 32 * j + 16 * half;
                            let p = sdot(vdupq_n_s32(0), v, load16(act16(x, e)));
                            isum = vmlaq_n_s32(isum, p, sc[e / 16] as i32);
                        }
                    }
                }
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(b.d) * a.d[16 * i]);
            }
            vaddvq_f32(acc)
        }
    }
    #[cfg(target_arch = "aarch64")]
    super::super::neon::gemv_neon!(neon_entry, dot_neon);

    gemv_select!();
}

#[cfg(test)]
mod tests {
    use super::super::test_util::check_type;
    use crate::quant::GgmlType;

    #[test]
    fn q2_k_kernels_match_the_reference() {
        check_type(GgmlType::Q2_K, super::q2_k::unpack_ref, 31);
    }

    #[test]
    fn q3_k_kernels_match_the_reference() {
        check_type(GgmlType::Q3_K, super::q3_k::unpack_ref, 32);
    }
}
