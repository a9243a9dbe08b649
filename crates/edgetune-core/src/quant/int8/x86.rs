//! x86-64 building blocks of the matrix-vector kernels: the 256-bit "u8 × i8, four products
//! per i32 lane" step in its three encodings, and the per-level entry points.
//!
//! Each type's kernel body is written once, generic over [`Dp`], and compiled three times with
//! [`gemv_levels!`](crate::quant::int8::x86::gemv_levels): AVX2 (`vpmaddubsw` + `vpmaddwd`),
//! AVX-VNNI and AVX-512 VNNI (`vpdpbusd`).

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

/// `acc + Σ_{k<4} u[4l+k]·s[4l+k]` per i32 lane `l`, with `u` unsigned and `s` signed bytes.
///
/// The AVX2 encoding goes through i16 pair sums that saturate at ±32767, so callers keep
/// `u ≤ 128` (|s| ≤ 127 gives pair sums ≤ 32512); the VNNI encodings are exact for any bytes.
pub(crate) trait Dp {
    /// # Safety
    /// The CPU must have the implementation's instructions (see each impl).
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: `vpmaddubsw` then `vpmaddwd` with ones.
pub(crate) struct Avx2;
/// AVX-VNNI: VEX `vpdpbusd`.
pub(crate) struct AvxVnni;
/// AVX-512 VNNI + VL: EVEX `vpdpbusd` on 256 bits.
pub(crate) struct Avx512Vnni;

impl Dp for Avx2 {
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        let pairs = _mm256_maddubs_epi16(u, s);
        _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }
}

impl Dp for AvxVnni {
    #[inline]
    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
}

impl Dp for Avx512Vnni {
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
    unsafe fn dp(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
}

/// Sum of the eight f32 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// An f16 field (two LE bytes) as f32 in all eight lanes. The broadcast load has no input
/// register: converting through a scalar insert would tie each block to an unrelated register
/// (often a loop accumulator) and serialise the loop.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn f16x8(bytes: [u8; 2]) -> __m256 {
    _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes(bytes)))
}

/// `f16(bytes)·s` in all eight lanes (a block's combined weight and activation scale).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(crate) fn scale8(bytes: [u8; 2], s: f32) -> __m256 {
    _mm256_mul_ps(f16x8(bytes), _mm256_set1_ps(s))
}

/// 16 packed bytes → 32 levels: low nibbles in the low 128 bits (elements 0..16 of a ggml
/// block), high nibbles in the high 128 bits (elements 16..32).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn nibbles32(packed: &[u8; 16]) -> __m256i {
    // SAFETY: `packed` is 16 readable bytes; loadu has no alignment requirement.
    let p = unsafe { _mm_loadu_si128(packed.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16::<4>(p), p);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// 32 bytes of a slice as a vector.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn load32<T: bytemuck::Pod>(v: &[T; 32]) -> __m256i {
    // SAFETY: `v` is 32 one-byte values (T is u8 or i8 at every call site); loadu has no
    // alignment requirement.
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    unsafe { _mm256_loadu_si256(v.as_ptr().cast()) }
}

/// Bytes ahead of the current block that the matrix-vector kernels prefetch: rows are read
/// once, front to back, and the hardware prefetcher alone leaves the loops waiting on DRAM.
const PREFETCH: usize = 1024;

/// Prefetches the cache lines `PREFETCH` bytes past block `b` (one per 64 bytes of a block;
/// past the end of the matrix the hint is dropped, a prefetch never faults).
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) fn prefetch_ahead<B>(b: &B) {
    let p = (b as *const B).cast::<i8>().wrapping_add(PREFETCH);
    for k in 0..std::mem::size_of::<B>().div_ceil(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * k));
    }
}

/// The 32 activation quants of 32-element block `b`.
#[inline(always)]
pub(crate) fn act32(qs: &[i8], b: usize) -> &[i8; 32] {
    qs[32 * b..32 * b + 32].try_into().expect("32 quants")
}

/// Generates module `$m` with `gemv_x86(level)`, returning `$body` compiled for that level as
/// a safe rows kernel (see [`GemvFn`](super::GemvFn)).
///
/// `$body` is an `#[inline(always)] unsafe fn<D: Dp>(&[u8], &ActRow) -> f32` whose only
/// requirement is the CPU features of `D` plus AVX2, FMA and F16C; it is inlined into the loop
/// over rows, so the per-row call costs nothing and the loop-invariant work is hoisted.
macro_rules! gemv_levels {
    ($m:ident, $body:ident) => {
        mod $m {
            use super::*;
            use $crate::quant::int8::x86::{Avx2, Avx512Vnni, AvxVnni};
            use $crate::quant::int8::{ActRow, GemvFn, Level};

            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                for (y, row) in y.iter_mut().zip(rows.chunks_exact(rb.max(1))) {
                    // SAFETY: this function's features are AVX2's.
                    *y = unsafe { $body::<Avx2>(row, a) };
                }
            }
            #[target_feature(enable = "avx2,fma,f16c,avxvnni")]
            unsafe fn avx_vnni(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                for (y, row) in y.iter_mut().zip(rows.chunks_exact(rb.max(1))) {
                    // SAFETY: this function's features include AVX-VNNI's.
                    *y = unsafe { $body::<AvxVnni>(row, a) };
                }
            }
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
            unsafe fn avx512_vnni(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                for (y, row) in y.iter_mut().zip(rows.chunks_exact(rb.max(1))) {
                    // SAFETY: this function's features include AVX-512 VNNI's.
                    *y = unsafe { $body::<Avx512Vnni>(row, a) };
                }
            }
            // The safe wrappers are handed out by `gemv_x86` only after checking that the
            // CPU has the level's features.
            fn avx2_safe(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                // SAFETY: only reachable through `gemv_x86(Level::Avx2)` on a CPU that has it.
                unsafe { avx2(rows, rb, a, y) }
            }
            fn avx_vnni_safe(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                // SAFETY: only reachable through `gemv_x86(Level::AvxVnni)` on a CPU that has it.
                unsafe { avx_vnni(rows, rb, a, y) }
            }
            fn avx512_vnni_safe(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                // SAFETY: only reachable through `gemv_x86(Level::Avx512Vnni)` on a CPU that
                // has it.
                unsafe { avx512_vnni(rows, rb, a, y) }
            }

            pub(crate) fn gemv_x86(level: Level) -> Option<GemvFn> {
                if !level.supported() {
                    return None;
                }
                match level {
                    Level::Avx2 => Some(avx2_safe),
                    Level::AvxVnni => Some(avx_vnni_safe),
                    Level::Avx512Vnni => Some(avx512_vnni_safe),
                    _ => None,
                }
            }
        }
    };
}
pub(crate) use gemv_levels;
