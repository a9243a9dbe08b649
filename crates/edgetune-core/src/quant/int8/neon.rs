//! aarch64 building blocks: the Armv8.2 `sdot` instruction (four i8 products summed into each
//! i32 lane), whole-vector and lane-indexed, and the per-level entry points.
//!
//! Rust's `vdotq_s32` intrinsics are not stable yet, so `sdot` is emitted with inline assembly
//! inside functions compiled with the `dotprod` target feature.

#![cfg(target_arch = "aarch64")]

use std::arch::aarch64::*;
use std::arch::asm;

/// `acc[l] + Σ_{k<4} a[4l+k]·b[4l+k]` per i32 lane `l` (signed bytes).
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: `sdot` reads and writes registers only; the function's features include dotprod.
    unsafe {
        asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc[l] + Σ_{k<4} a[4l+k]·b[4·LANE+k]`: every lane multiplies its four bytes of `a` with
/// the same four bytes (group `LANE`) of `b`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
pub(crate) fn sdot_lane<const LANE: i32>(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: as `sdot`; the lane index is one of the four literal forms.
    unsafe {
        match LANE {
            0 => {
                asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[0]", inout(vreg) acc, in(vreg) a, in(vreg) b, options(pure, nomem, nostack, preserves_flags))
            }
            1 => {
                asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[1]", inout(vreg) acc, in(vreg) a, in(vreg) b, options(pure, nomem, nostack, preserves_flags))
            }
            2 => {
                asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[2]", inout(vreg) acc, in(vreg) a, in(vreg) b, options(pure, nomem, nostack, preserves_flags))
            }
            _ => {
                asm!("sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[3]", inout(vreg) acc, in(vreg) a, in(vreg) b, options(pure, nomem, nostack, preserves_flags))
            }
        }
    }
    acc
}

/// 16 bytes as a vector.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn load16<T: bytemuck::Pod>(v: &[T; 16]) -> int8x16_t {
    debug_assert_eq!(std::mem::size_of::<T>(), 1);
    // SAFETY: `v` is 16 one-byte values (u8 or i8 at every call site).
    unsafe { vld1q_s8(v.as_ptr().cast()) }
}

/// 16 packed bytes → (low nibbles, high nibbles) as bytes 0..=15.
#[inline]
#[target_feature(enable = "neon")]
pub(crate) fn nibbles(packed: &[u8; 16]) -> (int8x16_t, int8x16_t) {
    // SAFETY: `packed` is 16 readable bytes.
    let p = unsafe { vld1q_u8(packed.as_ptr()) };
    (
        vreinterpretq_s8_u8(vandq_u8(p, vdupq_n_u8(0x0F))),
        vreinterpretq_s8_u8(vshrq_n_u8::<4>(p)),
    )
}

/// The 16 activation quants starting at element `i`.
#[inline(always)]
pub(crate) fn act16(qs: &[i8], i: usize) -> &[i8; 16] {
    qs[i..i + 16].try_into().expect("16 quants")
}

/// Generates module `$m` with `gemv_neon(level)`, returning `$body` (an `#[inline(always)]`
/// `unsafe fn(&[u8], &ActRow) -> f32` needing NEON and dotprod) as a safe rows kernel (see
/// [`GemvFn`](super::GemvFn)) for `Level::NeonDot` on a CPU that has it.
macro_rules! gemv_neon {
    ($m:ident, $body:ident) => {
        mod $m {
            use super::*;
            use $crate::quant::int8::{ActRow, GemvFn, Level};

            #[target_feature(enable = "neon,dotprod")]
            unsafe fn dot(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                for (y, row) in y.iter_mut().zip(rows.chunks_exact(rb.max(1))) {
                    // SAFETY: this function's features are the body's.
                    *y = unsafe { $body(row, a) };
                }
            }
            fn dot_safe(rows: &[u8], rb: usize, a: &ActRow<'_>, y: &mut [f32]) {
                // SAFETY: only reachable through `gemv_neon(Level::NeonDot)` on a CPU that
                // has the dot-product extension.
                unsafe { dot(rows, rb, a, y) }
            }

            pub(crate) fn gemv_neon(level: Level) -> Option<GemvFn> {
                (level == Level::NeonDot && level.supported()).then_some(dot_safe as GemvFn)
            }
        }
    };
}
pub(crate) use gemv_neon;
