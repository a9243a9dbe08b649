//! Integer kernels of Q5_0 (Q8_0 activations) and Q5_1 (Q8_1 activations), as llama.cpp
//! pairs them: 32-element blocks of 5-bit levels, the fifth bits in a 32-bit word.
//!
//! Levels: `u` = nibble + 16·(bit j of `qh`). Q5_0: `Z = 16`, `a = d`; Q5_1: `Z = 0`, `a = d`,
//! `m = m`. The matrix-vector kernels are Q4_0's and Q4_1's with the fifth bit OR-ed in; for
//! Q5_0 the accumulator starts at −2·Σq in each of its 8 lanes (−16·Σq in all).

use super::{ActRow, ActType, IntType, unpackers};
use crate::quant::GgmlType;
use crate::quant::q5::q5_0::BlockQ5_0;
use crate::quant::q5::q5_1::BlockQ5_1;
use crate::quant::simd::{as_blocks, f16_le};

pub(crate) static Q5_0: IntType = IntType {
    ty: GgmlType::Q5_0,
    sub: 32,
    zero: 16,
    act: ActType::Q8_0,
    has_min: false,
    unpack: q5_0::unpack,
    gemv: q5_0::gemv,
};

pub(crate) static Q5_1: IntType = IntType {
    ty: GgmlType::Q5_1,
    sub: 32,
    zero: 0,
    act: ActType::Q8_1,
    has_min: true,
    unpack: q5_1::unpack,
    gemv: q5_1::gemv,
};

/// The 32 five-bit levels of a block, in element order.
#[inline(always)]
fn levels(qs: &[u8; 16], qh: [u8; 4], u: &mut [u8]) {
    let qh = u32::from_le_bytes(qh);
    for j in 0..16 {
        u[j] = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        u[j + 16] = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
}

/// Number of whole blocks both the row and the activations hold.
#[inline(always)]
fn blocks_in<B: bytemuck::Pod>(row: &[u8], a: &ActRow<'_>) -> usize {
    as_blocks::<B>(row)
        .len()
        .min(a.qs.len() / 32)
        .min(a.d.len())
        .min(a.isum.len())
        .min(a.dsum.len())
}

#[cfg(target_arch = "x86_64")]
mod x86_util {
    use std::arch::x86_64::*;

    /// The 32 five-bit levels of a block: nibbles, plus 16 where bit j of `qh` is set.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn levels32(qs: &[u8; 16], qh: [u8; 4]) -> __m256i {
        let v = _mm256_set1_epi32(u32::from_le_bytes(qh) as i32);
        // Byte k takes byte k/8 of qh, then keeps bit k%8: 0xFF where it is set.
        let spread = _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3,
            3, 3, 3,
        );
        let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_shuffle_epi8(v, spread), bit), bit);
        let fifth = _mm256_and_si256(set, _mm256_set1_epi8(0x10));
        _mm256_or_si256(super::super::x86::nibbles32(qs), fifth)
    }
}

#[cfg(target_arch = "aarch64")]
mod neon_util {
    use std::arch::aarch64::*;

    /// The 32 five-bit levels of a block as two halves (elements 0..16, 16..32).
    #[inline]
    #[target_feature(enable = "neon")]
    pub(super) fn levels32(qs: &[u8; 16], qh: [u8; 4]) -> (uint8x16_t, uint8x16_t) {
        let (lo, hi) = super::super::neon::nibbles(qs);
        const BITS: [u8; 16] = [1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128];
        // SAFETY: BITS is 16 readable bytes.
        let bits = unsafe { vld1q_u8(BITS.as_ptr()) };
        let spread = |a: u8, b: u8| {
            let v = vcombine_u8(vdup_n_u8(a), vdup_n_u8(b));
            vandq_u8(vtstq_u8(v, bits), vdupq_n_u8(0x10))
        };
        (
            vorrq_u8(vreinterpretq_u8_s8(lo), spread(qh[0], qh[1])),
            vorrq_u8(vreinterpretq_u8_s8(hi), spread(qh[2], qh[3])),
        )
    }
}

pub(crate) mod q5_0 {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in as_blocks::<BlockQ5_0>(row)
            .iter()
            .zip(u.chunks_exact_mut(32).zip(a.iter_mut().zip(m.iter_mut())))
        {
            levels(&b.qs, b.qh, u);
            (*a, *m) = (f16_le(b.d), 0.0);
        }
    }
    unpackers!(body);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::x86::{act32, hsum_ps, load32, scale8};
        use std::arch::x86_64::*;
        let n = blocks_in::<BlockQ5_0>(row, a);
        let blocks = &as_blocks::<BlockQ5_0>(row)[..n];
        // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C.
        unsafe {
            let (mut acc, mut acc2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for (i, b) in blocks.iter().enumerate() {
                super::super::x86::prefetch_ahead(b);
                let u = x86_util::levels32(&b.qs, b.qh);
                let p = D::dp(_mm256_set1_epi32(-2 * a.isum[i]), u, load32(act32(a.qs, i)));
                let s = scale8(b.d, a.d[i]);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc);
                std::mem::swap(&mut acc, &mut acc2);
            }
            hsum_ps(_mm256_add_ps(acc, acc2))
        }
    }
    #[cfg(target_arch = "x86_64")]
    super::super::x86::gemv_levels!(x86_entry, dot_x86);

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn dot_neon(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::neon::{act16, load16, sdot};
        use std::arch::aarch64::*;
        let n = blocks_in::<BlockQ5_0>(row, a);
        let blocks = &as_blocks::<BlockQ5_0>(row)[..n];
        // SAFETY (whole body): the caller guarantees NEON and dotprod.
        unsafe {
            let z = vdupq_n_s8(16);
            let (mut acc, mut acc2) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for (i, b) in blocks.iter().enumerate() {
                let (lo, hi) = neon_util::levels32(&b.qs, b.qh);
                let lo = vsubq_s8(vreinterpretq_s8_u8(lo), z);
                let hi = vsubq_s8(vreinterpretq_s8_u8(hi), z);
                let p = sdot(vdupq_n_s32(0), lo, load16(act16(a.qs, 32 * i)));
                let p = sdot(p, hi, load16(act16(a.qs, 32 * i + 16)));
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), f16_le(b.d) * a.d[i]);
                std::mem::swap(&mut acc, &mut acc2);
            }
            vaddvq_f32(vaddq_f32(acc, acc2))
        }
    }
    #[cfg(target_arch = "aarch64")]
    super::super::neon::gemv_neon!(neon_entry, dot_neon);

    gemv_select!();
}

pub(crate) mod q5_1 {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in as_blocks::<BlockQ5_1>(row)
            .iter()
            .zip(u.chunks_exact_mut(32).zip(a.iter_mut().zip(m.iter_mut())))
        {
            levels(&b.qs, b.qh, u);
            (*a, *m) = (f16_le(b.d), f16_le(b.m));
        }
    }
    unpackers!(body);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::x86::{act32, f16x8, hsum_ps, load32, scale8};
        use std::arch::x86_64::*;
        let n = blocks_in::<BlockQ5_1>(row, a);
        let blocks = &as_blocks::<BlockQ5_1>(row)[..n];
        // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C.
        unsafe {
            let (mut acc, mut acc2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut mins = _mm256_setzero_ps();
            for (i, b) in blocks.iter().enumerate() {
                super::super::x86::prefetch_ahead(b);
                let u = x86_util::levels32(&b.qs, b.qh);
                let p = D::dp(_mm256_setzero_si256(), u, load32(act32(a.qs, i)));
                let s = scale8(b.d, a.d[i]);
                acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc);
                std::mem::swap(&mut acc, &mut acc2);
                // m·(d·Σq) in all eight lanes; the sum is divided by 8 at the end (exact).
                mins = _mm256_fmadd_ps(f16x8(b.m), _mm256_set1_ps(a.dsum[i]), mins);
            }
            hsum_ps(_mm256_add_ps(acc, acc2)) + 0.125 * hsum_ps(mins)
        }
    }
    #[cfg(target_arch = "x86_64")]
    super::super::x86::gemv_levels!(x86_entry, dot_x86);

    #[cfg(target_arch = "aarch64")]
    #[inline(always)]
    unsafe fn dot_neon(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::neon::{act16, load16, sdot};
        use std::arch::aarch64::*;
        let n = blocks_in::<BlockQ5_1>(row, a);
        let blocks = &as_blocks::<BlockQ5_1>(row)[..n];
        // SAFETY (whole body): the caller guarantees NEON and dotprod.
        unsafe {
            let (mut acc, mut acc2) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut mins = 0.0f32;
            for (i, b) in blocks.iter().enumerate() {
                let (lo, hi) = neon_util::levels32(&b.qs, b.qh);
                let p = sdot(
                    vdupq_n_s32(0),
                    vreinterpretq_s8_u8(lo),
                    load16(act16(a.qs, 32 * i)),
                );
                let p = sdot(p, vreinterpretq_s8_u8(hi), load16(act16(a.qs, 32 * i + 16)));
                acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), f16_le(b.d) * a.d[i]);
                std::mem::swap(&mut acc, &mut acc2);
                mins = f16_le(b.m).mul_add(a.dsum[i], mins);
            }
            vaddvq_f32(vaddq_f32(acc, acc2)) + mins
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
    fn q5_0_kernels_match_the_reference() {
        check_type(GgmlType::Q5_0, super::q5_0::unpack_ref, 41);
    }

    #[test]
    fn q5_1_kernels_match_the_reference() {
        check_type(GgmlType::Q5_1, super::q5_1::unpack_ref, 42);
    }
}
