//! Integer kernels of Q4_K and Q5_K (Q8_K activations, as llama.cpp pairs them): 256-element
//! super-blocks of 8 sub-blocks of 32, each with a 6-bit scale `sc_j` and min `m_j`.
//!
//! Levels: `u` the 4-bit (5-bit) quant, `Z = 0`, `a_j = d·sc_j`, `m_j = −dmin·m_j`. The
//! matrix-vector kernels sum `sc_j · Σ_{i∈j} u_i·q_i` in i32 over the whole super-block (one
//! `Dp` step per 32 values, one i32 multiply by the sub-block scale), then apply `d·d_x` once;
//! the mins take `Σ_j m_j·Σ_{i∈j} q_i` from the activation sums, times `−dmin·d_x`.

use super::{ActRow, ActType, IntType, unpackers};
use crate::quant::GgmlType;
use crate::quant::k_quants::q4_k::BlockQ4K;
use crate::quant::k_quants::q5_k::BlockQ5K;
use crate::quant::k_quants::{f16_le, unpack_scales_mins_k4};

pub(crate) static Q4_K: IntType = IntType {
    ty: GgmlType::Q4_K,
    sub: 32,
    zero: 0,
    act: ActType::Q8K,
    has_min: true,
    unpack: q4_k::unpack,
    gemv: q4_k::gemv,
};

pub(crate) static Q5_K: IntType = IntType {
    ty: GgmlType::Q5_K,
    sub: 32,
    zero: 0,
    act: ActType::Q8K,
    has_min: true,
    unpack: q5_k::unpack,
    gemv: q5_k::gemv,
};

/// Whole super-blocks both the row and the activations hold.
#[inline(always)]
fn blocks_in<B: bytemuck::Pod>(row: &[u8], a: &ActRow<'_>) -> usize {
    crate::quant::simd::as_blocks::<B>(row)
        .len()
        .min(a.qs.len() / 256)
        .min(a.d.len() / 8)
        .min(a.isum.len() / 8)
}

/// Writes levels and per-sub-block (a, m) of one super-block whose 5-bit (or 4-bit, `qh`
/// `None`) levels are `level(c, l)` → (element 64c+l, element 64c+32+l).
#[inline(always)]
fn unpack_block(
    d: [u8; 2],
    dmin: [u8; 2],
    scales: &[u8; 12],
    level: impl Fn(usize, usize) -> (u8, u8),
    u: &mut [u8],
    a: &mut [f32],
    m: &mut [f32],
) {
    let (sc, mn) = unpack_scales_mins_k4(scales);
    let (d, dmin) = (f16_le(d), f16_le(dmin));
    for j in 0..8 {
        a[j] = d * f32::from(sc[j]);
        m[j] = -(dmin * f32::from(mn[j]));
    }
    for c in 0..4 {
        for l in 0..32 {
            let (lo, hi) = level(c, l);
            u[64 * c + l] = lo;
            u[64 * c + 32 + l] = hi;
        }
    }
}

/// The shared kernels: `$levels(block, c)` gives chunk c's two 32-level vectors (elements
/// 64c..64c+32 and 64c+32..64c+64) for x86 and NEON (as two 16-byte halves each).
macro_rules! k4_kernels {
    ($block:ty, $levels_x86:expr, $levels_neon:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
            use super::super::x86::{hsum_ps, load32, scale8};
            use std::arch::x86_64::*;
            let n = blocks_in::<$block>(row, a);
            let blocks = &crate::quant::simd::as_blocks::<$block>(row)[..n];
            // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C; every
            // slice read is bounds-checked by the indexing (n blocks of both row and acts).
            unsafe {
                let (mut acc, mut accm) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for (i, b) in blocks.iter().enumerate() {
                    super::super::x86::prefetch_ahead(b);
                    let (sc, mn) = unpack_scales_mins_k4(&b.scales);
                    let x = &a.qs[256 * i..256 * i + 256];
                    let mut isum = _mm256_setzero_si256();
                    for c in 0..4 {
                        let (lo, hi): (__m256i, __m256i) = $levels_x86(b, c);
                        let xl = load32(x[64 * c..64 * c + 32].try_into().expect("32"));
                        let xh = load32(x[64 * c + 32..64 * c + 64].try_into().expect("32"));
                        let pl = D::dp(_mm256_setzero_si256(), lo, xl);
                        let ph = D::dp(_mm256_setzero_si256(), hi, xh);
                        let pl = _mm256_mullo_epi32(pl, _mm256_set1_epi32(sc[2 * c] as i32));
                        let ph = _mm256_mullo_epi32(ph, _mm256_set1_epi32(sc[2 * c + 1] as i32));
                        isum = _mm256_add_epi32(isum, _mm256_add_epi32(pl, ph));
                    }
                    let dx = a.d[8 * i];
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), scale8(b.d, dx), acc);
                    // Σ_j m_j·(Σq)_j in 8 lanes, one per sub-block.
                    let mv = _mm256_cvtepu8_epi32(_mm_loadl_epi64(mn.as_ptr().cast()));
                    let sv = _mm256_loadu_si256(a.isum[8 * i..8 * i + 8].as_ptr().cast());
                    let ms = _mm256_cvtepi32_ps(_mm256_mullo_epi32(mv, sv));
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
            let n = blocks_in::<$block>(row, a);
            let blocks = &crate::quant::simd::as_blocks::<$block>(row)[..n];
            let mut total = 0.0f32;
            // SAFETY (whole body): the caller guarantees NEON and dotprod.
            unsafe {
                let mut acc = vdupq_n_f32(0.0);
                for (i, b) in blocks.iter().enumerate() {
                    let (sc, mn) = unpack_scales_mins_k4(&b.scales);
                    let x = &a.qs[256 * i..256 * i + 256];
                    let mut isum = vdupq_n_s32(0);
                    for c in 0..4 {
                        let [l0, l1, h0, h1]: [int8x16_t; 4] = $levels_neon(b, c);
                        let pl = sdot(
                            sdot(vdupq_n_s32(0), l0, load16(act16(x, 64 * c))),
                            l1,
                            load16(act16(x, 64 * c + 16)),
                        );
                        let ph = sdot(
                            sdot(vdupq_n_s32(0), h0, load16(act16(x, 64 * c + 32))),
                            h1,
                            load16(act16(x, 64 * c + 48)),
                        );
                        isum = vmlaq_n_s32(isum, pl, sc[2 * c] as i32);
                        isum = vmlaq_n_s32(isum, ph, sc[2 * c + 1] as i32);
                    }
                    let dx = a.d[8 * i];
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(isum), f16_le(b.d) * dx);
                    let mins: i32 = (0..8).map(|j| mn[j] as i32 * a.isum[8 * i + j]).sum();
                    total = (mins as f32).mul_add(-(f16_le(b.dmin) * dx), total);
                }
                total + vaddvq_f32(acc)
            }
        }
        #[cfg(target_arch = "aarch64")]
        super::super::neon::gemv_neon!(neon_entry, dot_neon);

        gemv_select!();
    };
}

pub(crate) mod q4_k {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in crate::quant::simd::as_blocks::<BlockQ4K>(row).iter().zip(
            u.chunks_exact_mut(256)
                .zip(a.chunks_exact_mut(8).zip(m.chunks_exact_mut(8))),
        ) {
            let level = |c: usize, l: usize| {
                let q = b.qs[32 * c + l];
                (q & 0x0F, q >> 4)
            };
            unpack_block(b.d, b.dmin, &b.scales, level, u, a, m);
        }
    }
    unpackers!(body);

    k4_kernels!(
        BlockQ4K,
        |b: &BlockQ4K, c: usize| {
            use std::arch::x86_64::*;
            let q = super::super::x86::load32(b.qs[32 * c..32 * c + 32].try_into().expect("32"));
            let mask = _mm256_set1_epi8(0x0F);
            (
                _mm256_and_si256(q, mask),
                _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask),
            )
        },
        |b: &BlockQ4K, c: usize| {
            use super::super::neon::nibbles;
            let (l0, h0) = nibbles(b.qs[32 * c..32 * c + 16].try_into().expect("16"));
            let (l1, h1) = nibbles(b.qs[32 * c + 16..32 * c + 32].try_into().expect("16"));
            [l0, l1, h0, h1]
        }
    );
}

pub(crate) mod q5_k {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in crate::quant::simd::as_blocks::<BlockQ5K>(row).iter().zip(
            u.chunks_exact_mut(256)
                .zip(a.chunks_exact_mut(8).zip(m.chunks_exact_mut(8))),
        ) {
            let level = |c: usize, l: usize| {
                let (q, h) = (b.qs[32 * c + l], b.qh[l] >> (2 * c));
                ((q & 0x0F) | ((h & 1) << 4), (q >> 4) | ((h & 2) << 3))
            };
            unpack_block(b.d, b.dmin, &b.scales, level, u, a, m);
        }
    }
    unpackers!(body);

    k4_kernels!(
        BlockQ5K,
        |b: &BlockQ5K, c: usize| {
            use super::super::x86::load32;
            use std::arch::x86_64::*;
            let q = load32(b.qs[32 * c..32 * c + 32].try_into().expect("32"));
            let h = load32(&b.qh);
            let mask = _mm256_set1_epi8(0x0F);
            let one = _mm256_set1_epi8(1);
            // Bit 2c of qh[l] is bit 4 of the low-nibble element, bit 2c+1 that of the high.
            let shift = _mm_cvtsi32_si128(2 * c as i32);
            let h = _mm256_srl_epi16(h, shift);
            let hl = _mm256_slli_epi16::<4>(_mm256_and_si256(h, one));
            let hh = _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(h), one));
            (
                _mm256_or_si256(_mm256_and_si256(q, mask), hl),
                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(q), mask), hh),
            )
        },
        |b: &BlockQ5K, c: usize| {
            use super::super::neon::nibbles;
            use std::arch::aarch64::*;
            let (l0, h0) = nibbles(b.qs[32 * c..32 * c + 16].try_into().expect("16"));
            let (l1, h1) = nibbles(b.qs[32 * c + 16..32 * c + 32].try_into().expect("16"));
            // qh is 32 readable bytes (inside the kernel's unsafe block).
            let (q0, q1) = (vld1q_u8(b.qh.as_ptr()), vld1q_u8(b.qh.as_ptr().add(16)));
            let sh = vdupq_n_s8(-(2 * c as i8));
            let (q0, q1) = (vshlq_u8(q0, sh), vshlq_u8(q1, sh));
            let one = vdupq_n_u8(1);
            let lo_bit = |q: uint8x16_t| vreinterpretq_s8_u8(vshlq_n_u8::<4>(vandq_u8(q, one)));
            let hi_bit = |q: uint8x16_t| {
                vreinterpretq_s8_u8(vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<1>(q), one)))
            };
            [
                vorrq_s8(l0, lo_bit(q0)),
                vorrq_s8(l1, lo_bit(q1)),
                vorrq_s8(h0, hi_bit(q0)),
                vorrq_s8(h1, hi_bit(q1)),
            ]
        }
    );
}

#[cfg(test)]
mod tests {
    use super::super::test_util::check_type;
    use crate::quant::GgmlType;

    #[test]
    fn q4_k_kernels_match_the_reference() {
        check_type(GgmlType::Q4_K, super::q4_k::unpack_ref, 11);
    }

    #[test]
    fn q5_k_kernels_match_the_reference() {
        check_type(GgmlType::Q5_K, super::q5_k::unpack_ref, 12);
    }
}
