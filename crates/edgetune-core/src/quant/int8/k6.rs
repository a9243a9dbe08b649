//! Integer kernels of Q6_K (Q8_K activations, as llama.cpp pairs them), and the pieces the
//! 16-element sub-block K-quants share.
//!
//! Q6_K: 256-element super-blocks of 16 sub-blocks of 16, each with a signed 8-bit scale
//! `sc_j`, under one f16 `d`. Levels: the 6-bit quant `u`, `Z = 32`, `a_j = d·sc_j`, `m = 0`.
//! The matrix-vector kernel sums `sc_j · Σ_{i∈j} u_i·q_i` in i32 over the super-block (one `Dp`
//! step per 32 values gives two sub-blocks in its lower and upper four lanes), subtracts
//! `32·Σ_j sc_j·(Σq)_j` from the activation sums, and applies `d·d_x` once.

use super::{ActRow, ActType, IntType, unpackers};
use crate::quant::GgmlType;
use crate::quant::k_quants::f16_le;
use crate::quant::k_quants::q6_k::BlockQ6K;

pub(crate) static Q6_K: IntType = IntType {
    ty: GgmlType::Q6_K,
    sub: 16,
    zero: 32,
    act: ActType::Q8K,
    has_min: false,
    unpack: q6_k::unpack,
    gemv: q6_k::gemv,
};

/// Whole super-blocks both the row and the activations (sums per 16) hold.
#[inline(always)]
pub(crate) fn blocks_in<B: bytemuck::Pod>(row: &[u8], a: &ActRow<'_>) -> usize {
    crate::quant::simd::as_blocks::<B>(row)
        .len()
        .min(a.qs.len() / 256)
        .min(a.d.len() / 16)
        .min(a.isum.len() / 16)
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_util {
    use std::arch::x86_64::*;

    /// 16 signed byte scales (one per sub-block) as two vectors of eight i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn widen16(v: __m128i) -> [__m256i; 2] {
        [
            _mm256_cvtepi8_epi32(v),
            _mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)),
        ]
    }

    /// The 16 sub-block scales of a super-block as two vectors of eight i32.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn scales16(sc: &[i8; 16]) -> [__m256i; 2] {
        // SAFETY: `sc` is 16 readable bytes.
        widen16(unsafe { _mm_loadu_si128(sc.as_ptr().cast()) })
    }

    /// Lanes 0..4 = scale 2k, lanes 4..8 = scale 2k+1 (k < 8): the scales of the two
    /// sub-blocks one 32-value `Dp` step covers.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn pair(sc: &[__m256i; 2], k: usize) -> __m256i {
        let j = (2 * (k % 4)) as i32;
        let idx = _mm256_setr_epi32(j, j, j, j, j + 1, j + 1, j + 1, j + 1);
        _mm256_permutevar8x32_epi32(sc[k / 4], idx)
    }

    /// Σ_j sc_j·(Σq)_j over the 16 sub-blocks, as eight i32 lanes.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(crate) fn scaled_sums(sc: &[__m256i; 2], isum: &[i32]) -> __m256i {
        let s: &[i32; 16] = isum[..16].try_into().expect("16 sums");
        // SAFETY: `s` is 16 readable i32.
        let (s0, s1) = unsafe {
            (
                _mm256_loadu_si256(s.as_ptr().cast()),
                _mm256_loadu_si256(s.as_ptr().add(8).cast()),
            )
        };
        _mm256_add_epi32(_mm256_mullo_epi32(sc[0], s0), _mm256_mullo_epi32(sc[1], s1))
    }
}

pub(crate) mod q6_k {
    use super::*;

    /// The level of element 128n + 32k + l (k < 4, l < 32).
    #[inline(always)]
    fn level(b: &BlockQ6K, n: usize, k: usize, l: usize) -> u8 {
        let (ql, qh) = (b.ql[64 * n + 32 * (k % 2) + l], b.qh[32 * n + l]);
        ((ql >> (4 * (k / 2))) & 0x0F) | (((qh >> (2 * k)) & 3) << 4)
    }

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in crate::quant::simd::as_blocks::<BlockQ6K>(row).iter().zip(
            u.chunks_exact_mut(256)
                .zip(a.chunks_exact_mut(16).zip(m.chunks_exact_mut(16))),
        ) {
            let d = f16_le(b.d);
            for j in 0..16 {
                a[j] = d * f32::from(b.scales[j]);
                m[j] = 0.0;
            }
            for n in 0..2 {
                for k in 0..4 {
                    for l in 0..32 {
                        u[128 * n + 32 * k + l] = level(b, n, k, l);
                    }
                }
            }
        }
    }
    unpackers!(body);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::x86::{hsum_ps, load32, scale8};
        use super::x86_util::{pair, scaled_sums, scales16};
        use std::arch::x86_64::*;
        let n = blocks_in::<BlockQ6K>(row, a);
        let blocks = &crate::quant::simd::as_blocks::<BlockQ6K>(row)[..n];
        // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C; slices
        // are bounds-checked by the indexing.
        unsafe {
            let mut acc = _mm256_setzero_ps();
            let mask = _mm256_set1_epi8(0x0F);
            let three = _mm256_set1_epi8(3);
            for (i, b) in blocks.iter().enumerate() {
                super::super::x86::prefetch_ahead(b);
                let sc = scales16(&b.scales);
                let x = &a.qs[256 * i..256 * i + 256];
                let mut isum = _mm256_setzero_si256();
                for h in 0..2 {
                    let q0 = load32(b.ql[64 * h..64 * h + 32].try_into().expect("32"));
                    let q1 = load32(b.ql[64 * h + 32..64 * h + 64].try_into().expect("32"));
                    let qh = load32(b.qh[32 * h..32 * h + 32].try_into().expect("32"));
                    let hi = |s: i32| {
                        let v = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(s)), three);
                        _mm256_slli_epi16::<4>(v)
                    };
                    let us = [
                        _mm256_or_si256(_mm256_and_si256(q0, mask), hi(0)),
                        _mm256_or_si256(_mm256_and_si256(q1, mask), hi(2)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q0), mask), hi(4)),
                        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q1), mask), hi(6)),
                    ];
                    for (k, u) in us.into_iter().enumerate() {
                        let o = 128 * h + 32 * k;
                        let p = D::dp(
                            _mm256_setzero_si256(),
                            u,
                            load32(x[o..o + 32].try_into().expect("32")),
                        );
                        isum = _mm256_add_epi32(isum, _mm256_mullo_epi32(p, pair(&sc, 4 * h + k)));
                    }
                }
                // Z = 32: subtract 32·Σ_j sc_j·(Σq)_j.
                let corr = _mm256_slli_epi32::<5>(scaled_sums(&sc, &a.isum[16 * i..16 * i + 16]));
                let total = _mm256_sub_epi32(isum, corr);
                let s = scale8(b.d, a.d[16 * i]);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(total), s, acc);
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
        let n = blocks_in::<BlockQ6K>(row, a);
        let blocks = &crate::quant::simd::as_blocks::<BlockQ6K>(row)[..n];
        // SAFETY (whole body): the caller guarantees NEON and dotprod.
        unsafe {
            let mut acc = vdupq_n_f32(0.0);
            let (mask, three, z) = (vdupq_n_u8(0x0F), vdupq_n_u8(3), vdupq_n_s8(32));
            for (i, b) in blocks.iter().enumerate() {
                let x = &a.qs[256 * i..256 * i + 256];
                let mut isum = vdupq_n_s32(0);
                for h in 0..2 {
                    for half in 0..2 {
                        // Bytes l = 16·half .. 16·half + 16 of this half's quants.
                        let o = 16 * half;
                        let q0 = vld1q_u8(b.ql.as_ptr().add(64 * h + o));
                        let q1 = vld1q_u8(b.ql.as_ptr().add(64 * h + 32 + o));
                        let qh = vld1q_u8(b.qh.as_ptr().add(32 * h + o));
                        let hi = |v: uint8x16_t| vshlq_n_u8::<4>(vandq_u8(v, three));
                        let us = [
                            vorrq_u8(vandq_u8(q0, mask), hi(qh)),
                            vorrq_u8(vandq_u8(q1, mask), hi(vshrq_n_u8::<2>(qh))),
                            vorrq_u8(vshrq_n_u8::<4>(q0), hi(vshrq_n_u8::<4>(qh))),
                            vorrq_u8(vshrq_n_u8::<4>(q1), hi(vshrq_n_u8::<6>(qh))),
                        ];
                        for (k, u) in us.into_iter().enumerate() {
                            let v = vsubq_s8(vreinterpretq_s8_u8(u), z);
                            let e = 128 * h + 32 * k + o;
                            let p = sdot(vdupq_n_s32(0), v, load16(act16(x, e)));
                            isum = vmlaq_n_s32(isum, p, b.scales[e / 16] as i32);
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
    fn q6_k_kernels_match_the_reference() {
        check_type(GgmlType::Q6_K, super::q6_k::unpack_ref, 21);
    }
}
