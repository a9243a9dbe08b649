//! Integer kernels of the 32-element block types with 4- and 8-bit levels: Q4_0, Q4_1 (with
//! Q8_0 / Q8_1 activations, as llama.cpp pairs them), Q8_0 and IQ4_NL (Q8_0 activations).
//!
//! Levels `u` and zero level `Z` per type (`w = a·(u − Z) + m`, one `a`, `m` per block):
//! Q4_0 nibble, Z = 8, a = d; Q4_1 nibble, Z = 0, a = d, m = m; Q8_0 q + 128, Z = 128;
//! IQ4_NL K[nibble] + 128, Z = 128 (K the non-linear table).
//!
//! Matrix-vector kernels, per block: the nibble types form Σu·q with one 32-byte `Dp` step
//! (u ≤ 15, safe for AVX2's saturating pairs) whose accumulator starts at −Σq in each of its 8
//! lanes when Z = 8 (8 lanes × −Σq = −Z·Σq); the signed types (Q8_0, IQ4_NL) use |w| and
//! q·sign(w) so every encoding sees unsigned bytes ≤ 128.

use super::{ActRow, ActType, IntType, unpackers};
use crate::quant::GgmlType;
use crate::quant::iq4_nl::{BlockIq4Nl, KVALUES};
use crate::quant::q4_0::BlockQ4_0;
use crate::quant::q4_1::BlockQ4_1;
use crate::quant::q8::q8_0::BlockQ8_0;
use crate::quant::simd::{as_blocks, f16_le};

/// Number of whole blocks both the row and the activations hold (kernels never read past
/// either).
#[inline(always)]
fn blocks_in<B: bytemuck::Pod>(row: &[u8], a: &ActRow<'_>) -> usize {
    as_blocks::<B>(row)
        .len()
        .min(a.qs.len() / 32)
        .min(a.d.len())
        .min(a.isum.len())
        .min(a.dsum.len())
}

/// Generates the table entry and the level dispatch of one type.
macro_rules! int_type {
    ($name:ident, $ty:ident, $zero:expr, $act:ident, $min:expr, $m:ident) => {
        pub(crate) static $name: IntType = IntType {
            ty: GgmlType::$ty,
            sub: 32,
            zero: $zero,
            act: ActType::$act,
            has_min: $min,
            unpack: $m::unpack,
            gemv: $m::gemv,
        };
    };
}

int_type!(Q4_0, Q4_0, 8, Q8_0, false, q4_0);
int_type!(Q4_1, Q4_1, 0, Q8_1, true, q4_1);
int_type!(Q8_0, Q8_0, 128, Q8_0, false, q8_0);
int_type!(IQ4_NL, IQ4_NL, 128, Q8_0, false, iq4_nl);

pub(crate) mod q4_0 {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in as_blocks::<BlockQ4_0>(row)
            .iter()
            .zip(u.chunks_exact_mut(32).zip(a.iter_mut().zip(m.iter_mut())))
        {
            for j in 0..16 {
                u[j] = b.qs[j] & 0x0F;
                u[j + 16] = b.qs[j] >> 4;
            }
            (*a, *m) = (f16_le(b.d), 0.0);
        }
    }
    unpackers!(body);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::x86::{act32, hsum_ps, load32, nibbles32, scale8};
        use std::arch::x86_64::*;
        let n = blocks_in::<BlockQ4_0>(row, a);
        let blocks = &as_blocks::<BlockQ4_0>(row)[..n];
        // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C.
        unsafe {
            let (mut acc, mut acc2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for (i, b) in blocks.iter().enumerate() {
                super::super::x86::prefetch_ahead(b);
                let p = D::dp(
                    _mm256_set1_epi32(-a.isum[i]),
                    nibbles32(&b.qs),
                    load32(act32(a.qs, i)),
                );
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
        use super::super::neon::{act16, load16, nibbles, sdot};
        use std::arch::aarch64::*;
        let n = blocks_in::<BlockQ4_0>(row, a);
        let blocks = &as_blocks::<BlockQ4_0>(row)[..n];
        // SAFETY (whole body): the caller guarantees NEON and dotprod.
        unsafe {
            let eight = vdupq_n_s8(8);
            let (mut acc, mut acc2) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            for (i, b) in blocks.iter().enumerate() {
                let (lo, hi) = nibbles(&b.qs);
                let x0 = load16(act16(a.qs, 32 * i));
                let p = sdot(vdupq_n_s32(0), vsubq_s8(lo, eight), x0);
                let p = sdot(p, vsubq_s8(hi, eight), load16(act16(a.qs, 32 * i + 16)));
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

pub(crate) mod q4_1 {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in as_blocks::<BlockQ4_1>(row)
            .iter()
            .zip(u.chunks_exact_mut(32).zip(a.iter_mut().zip(m.iter_mut())))
        {
            for j in 0..16 {
                u[j] = b.qs[j] & 0x0F;
                u[j + 16] = b.qs[j] >> 4;
            }
            (*a, *m) = (f16_le(b.d), f16_le(b.m));
        }
    }
    unpackers!(body);

    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
        use super::super::x86::{act32, f16x8, hsum_ps, load32, nibbles32, scale8};
        use std::arch::x86_64::*;
        let n = blocks_in::<BlockQ4_1>(row, a);
        let blocks = &as_blocks::<BlockQ4_1>(row)[..n];
        // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C.
        unsafe {
            let (mut acc, mut acc2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut mins = _mm256_setzero_ps();
            for (i, b) in blocks.iter().enumerate() {
                super::super::x86::prefetch_ahead(b);
                let p = D::dp(
                    _mm256_setzero_si256(),
                    nibbles32(&b.qs),
                    load32(act32(a.qs, i)),
                );
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
        use super::super::neon::{act16, load16, nibbles, sdot};
        use std::arch::aarch64::*;
        let n = blocks_in::<BlockQ4_1>(row, a);
        let blocks = &as_blocks::<BlockQ4_1>(row)[..n];
        // SAFETY (whole body): the caller guarantees NEON and dotprod.
        unsafe {
            let (mut acc, mut acc2) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
            let mut mins = 0.0f32;
            for (i, b) in blocks.iter().enumerate() {
                let (lo, hi) = nibbles(&b.qs);
                let p = sdot(vdupq_n_s32(0), lo, load16(act16(a.qs, 32 * i)));
                let p = sdot(p, hi, load16(act16(a.qs, 32 * i + 16)));
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

/// Shared kernels of the two signed-level types: `vals(block)` gives the block's 32 signed
/// levels (elements in order) and its f16 scale.
macro_rules! signed_kernels {
    ($block:ty, $vals_x86:expr, $vals_neon:expr) => {
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        unsafe fn dot_x86<D: super::super::x86::Dp>(row: &[u8], a: &ActRow<'_>) -> f32 {
            use super::super::x86::{act32, hsum_ps, load32, scale8};
            use std::arch::x86_64::*;
            let n = blocks_in::<$block>(row, a);
            let blocks = &as_blocks::<$block>(row)[..n];
            // SAFETY (whole body): the caller guarantees D's features plus AVX2/FMA/F16C.
            unsafe {
                let (mut acc, mut acc2) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for (i, b) in blocks.iter().enumerate() {
                    super::super::x86::prefetch_ahead(b);
                    let w: __m256i = $vals_x86(b);
                    let x = load32(act32(a.qs, i));
                    // |w| ≤ 128 as unsigned bytes, and q·sign(w): the products keep their sign.
                    let p = D::dp(
                        _mm256_setzero_si256(),
                        _mm256_sign_epi8(w, w),
                        _mm256_sign_epi8(x, w),
                    );
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
            let n = blocks_in::<$block>(row, a);
            let blocks = &as_blocks::<$block>(row)[..n];
            // SAFETY (whole body): the caller guarantees NEON and dotprod.
            unsafe {
                let (mut acc, mut acc2) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
                for (i, b) in blocks.iter().enumerate() {
                    let (w0, w1): (int8x16_t, int8x16_t) = $vals_neon(b);
                    let p = sdot(vdupq_n_s32(0), w0, load16(act16(a.qs, 32 * i)));
                    let p = sdot(p, w1, load16(act16(a.qs, 32 * i + 16)));
                    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(p), f16_le(b.d) * a.d[i]);
                    std::mem::swap(&mut acc, &mut acc2);
                }
                vaddvq_f32(vaddq_f32(acc, acc2))
            }
        }
        #[cfg(target_arch = "aarch64")]
        super::super::neon::gemv_neon!(neon_entry, dot_neon);

        gemv_select!();
    };
}

pub(crate) mod q8_0 {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in as_blocks::<BlockQ8_0>(row)
            .iter()
            .zip(u.chunks_exact_mut(32).zip(a.iter_mut().zip(m.iter_mut())))
        {
            for (u, &q) in u.iter_mut().zip(&b.qs) {
                *u = (q as u8) ^ 0x80;
            }
            (*a, *m) = (f16_le(b.d), 0.0);
        }
    }
    unpackers!(body);

    signed_kernels!(
        BlockQ8_0,
        |b: &BlockQ8_0| super::super::x86::load32(&b.qs),
        |b: &BlockQ8_0| {
            use super::super::neon::{act16, load16};
            (load16(act16(&b.qs, 0)), load16(act16(&b.qs, 16)))
        }
    );
}

pub(crate) mod iq4_nl {
    use super::*;

    #[inline(always)]
    fn body(row: &[u8], u: &mut [u8], a: &mut [f32], m: &mut [f32]) {
        for (b, (u, (a, m))) in as_blocks::<BlockIq4Nl>(row)
            .iter()
            .zip(u.chunks_exact_mut(32).zip(a.iter_mut().zip(m.iter_mut())))
        {
            for j in 0..16 {
                u[j] = (KVALUES[(b.qs[j] & 0x0F) as usize] as u8) ^ 0x80;
                u[j + 16] = (KVALUES[(b.qs[j] >> 4) as usize] as u8) ^ 0x80;
            }
            (*a, *m) = (f16_le(b.d), 0.0);
        }
    }
    unpackers!(body);

    signed_kernels!(
        BlockIq4Nl,
        |b: &BlockIq4Nl| {
            use std::arch::x86_64::*;
            // KVALUES is 16 readable bytes (inside the kernel's unsafe block).
            let t = _mm_loadu_si128(KVALUES.as_ptr().cast());
            _mm256_shuffle_epi8(_mm256_set_m128i(t, t), super::super::x86::nibbles32(&b.qs))
        },
        |b: &BlockIq4Nl| {
            use super::super::neon::{load16, nibbles};
            use std::arch::aarch64::*;
            let t = load16(&KVALUES);
            let (lo, hi) = nibbles(&b.qs);
            (
                vqtbl1q_s8(t, vreinterpretq_u8_s8(lo)),
                vqtbl1q_s8(t, vreinterpretq_u8_s8(hi)),
            )
        }
    );
}

#[cfg(test)]
mod tests {
    use super::super::test_util::check_type;
    use crate::quant::GgmlType;

    #[test]
    fn q4_0_kernels_match_the_reference() {
        check_type(GgmlType::Q4_0, super::q4_0::unpack_ref, 1);
    }

    #[test]
    fn q4_1_kernels_match_the_reference() {
        check_type(GgmlType::Q4_1, super::q4_1::unpack_ref, 2);
    }

    #[test]
    fn q8_0_kernels_match_the_reference() {
        check_type(GgmlType::Q8_0, super::q8_0::unpack_ref, 3);
    }

    #[test]
    fn iq4_nl_kernels_match_the_reference() {
        check_type(GgmlType::IQ4_NL, super::iq4_nl::unpack_ref, 4);
    }
}
