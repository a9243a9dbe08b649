//! The AVX-512 VNNI tile: `M ≤ 8` activation rows × 16 weight rows of a panel.
//!
//! Per sub-block and per group of four levels, one 64-byte load gives four levels of each of
//! the 16 rows (unsigned bytes), and each activation row's four quants are broadcast as the
//! signed operand of `vpdpbusd` (the instruction's broadcast memory form), so one instruction
//! does 64 multiply-adds for one activation row. At the end of the sub-block the 16 i32 sums
//! of every activation row are converted once and scaled: `acc += cvt(Σ)·(a·d) + m'·(d·Σq)`.
//! Registers: M i32 sums + M f32 accumulators + the levels, `a`, `m'` and a temporary — 20 of
//! the 32 zmm registers for M = 8.

#![cfg(target_arch = "x86_64")]

use super::panel::{MR, PR, TileIn, stride};
use std::arch::x86_64::*;

/// Tile kernel (see [`super::panel::TileFn`]); a CPU without AVX-512 VNNI never gets it
/// (`panel::tile_kernel` checks), and wrong sizes give zeros instead of reading out of bounds.
pub(crate) fn tile_avx512(t: &TileIn<'_>, m: usize, out: &mut [[f32; PR]]) {
    let m = m.min(MR).min(out.len());
    if !t.holds(m) {
        out.iter_mut().take(m).for_each(|o| *o = [0.0; PR]);
        return;
    }
    // SAFETY: `tile_kernel` hands this function out only where the CPU has AVX-512
    // F/BW/VL/VNNI (checked at run time), and `holds(m)` guarantees every read below.
    unsafe {
        match m {
            8 => out[..8].copy_from_slice(&tile::<8>(t)),
            7 => out[..7].copy_from_slice(&tile::<7>(t)),
            6 => out[..6].copy_from_slice(&tile::<6>(t)),
            5 => out[..5].copy_from_slice(&tile::<5>(t)),
            4 => out[..4].copy_from_slice(&tile::<4>(t)),
            3 => out[..3].copy_from_slice(&tile::<3>(t)),
            2 => out[..2].copy_from_slice(&tile::<2>(t)),
            1 => out[..1].copy_from_slice(&tile::<1>(t)),
            _ => {}
        }
    }
}

/// # Safety
/// The CPU must have AVX-512 F/BW/VL/VNNI; `t.holds(M)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
unsafe fn tile<const M: usize>(t: &TileIn<'_>) -> [[f32; PR]; M] {
    let (sub, nsb) = (t.sub, t.nsb);
    let cols = sub * nsb;
    let st = stride(sub);
    let mut acc = [_mm512_setzero_ps(); M];
    let panel = t.panel.as_ptr();
    let qs = t.qs.as_ptr();
    for j in 0..nsb {
        // SAFETY (whole loop body): `holds(M)` gives panel.len() ≥ nsb·st, qs.len() ≥ M·cols,
        // d/dsum.len() ≥ M·nsb; every offset below is inside those bounds.
        unsafe {
            let blk = panel.add(j * st);
            let mut isum = [_mm512_setzero_si512(); M];
            for g in 0..sub / 4 {
                let w = _mm512_loadu_si512(blk.add(64 * g).cast());
                for (k, s) in isum.iter_mut().enumerate() {
                    let q = qs
                        .add(k * cols + j * sub + 4 * g)
                        .cast::<i32>()
                        .read_unaligned();
                    *s = _mm512_dpbusd_epi32(*s, w, _mm512_set1_epi32(q));
                }
            }
            let a = _mm512_loadu_ps(blk.add(sub * PR).cast());
            let mm = _mm512_loadu_ps(blk.add(sub * PR + 4 * PR).cast());
            for (k, (acc, s)) in acc.iter_mut().zip(isum).enumerate() {
                let scale = _mm512_mul_ps(a, _mm512_set1_ps(*t.d.get_unchecked(k * nsb + j)));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, *acc);
                let ds = _mm512_set1_ps(*t.dsum.get_unchecked(k * nsb + j));
                *acc = _mm512_fmadd_ps(mm, ds, *acc);
            }
        }
    }
    let mut out = [[0.0f32; PR]; M];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` is 16 writable f32.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}
