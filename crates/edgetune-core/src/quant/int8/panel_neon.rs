//! The Armv8.2 dot-product tile: up to 4 activation rows × 8 weight rows (half a panel) per
//! pass, two passes per panel, in chunks of 4 activation rows.
//!
//! Per sub-block, each activation row's 16 quants are loaded once and used by lane-indexed
//! `sdot`: `sdot acc.4s, w.16b, x.4b[g]` multiplies four levels of each of four weight rows
//! (16 bytes of the panel's group g) with quants 4g..4g+4. Levels are stored centered (signed).
//! Registers for 4 activation rows: 8 i32 sums, 8 f32 accumulators, 4 quant vectors, 2 level
//! vectors and the scales — 26 of the 32 vector registers.

#![cfg(target_arch = "aarch64")]

use super::neon::sdot_lane;
use super::panel::{MR, PR, TileIn, stride};
use std::arch::aarch64::*;

/// Tile kernel (see [`super::panel::TileFn`]); a CPU without the dot-product extension never
/// gets it (`panel::tile_kernel` checks), and wrong sizes give zeros instead of reading out of
/// bounds.
pub(crate) fn tile_neon(t: &TileIn<'_>, m: usize, out: &mut [[f32; PR]]) {
    let m = m.min(MR).min(out.len());
    if !t.holds(m) {
        out.iter_mut().take(m).for_each(|o| *o = [0.0; PR]);
        return;
    }
    let mut t0 = 0;
    while t0 < m {
        let k = (m - t0).min(4);
        // SAFETY: `tile_kernel` hands this function out only where the CPU has the dot-product
        // extension (checked at run time), and `holds(m)` covers rows t0..t0 + k.
        unsafe {
            match k {
                4 => out[t0..t0 + 4].copy_from_slice(&tile::<4>(t, t0)),
                3 => out[t0..t0 + 3].copy_from_slice(&tile::<3>(t, t0)),
                2 => out[t0..t0 + 2].copy_from_slice(&tile::<2>(t, t0)),
                _ => out[t0..t0 + 1].copy_from_slice(&tile::<1>(t, t0)),
            }
        }
        t0 += k;
    }
}

/// # Safety
/// The CPU must have NEON and dotprod; `t.holds(t0 + M)`.
#[target_feature(enable = "neon,dotprod")]
unsafe fn tile<const M: usize>(t: &TileIn<'_>, t0: usize) -> [[f32; PR]; M] {
    let (sub, nsb) = (t.sub, t.nsb);
    let cols = sub * nsb;
    let st = stride(sub);
    let mut out = [[0.0f32; PR]; M];
    for h in 0..2 {
        let mut acc = [[vdupq_n_f32(0.0); 2]; M];
        for j in 0..nsb {
            // SAFETY (whole loop body): `holds` gives panel.len() ≥ nsb·st, qs.len() ≥
            // (t0+M)·cols and d/dsum.len() ≥ (t0+M)·nsb; every offset is inside them.
            unsafe {
                let blk = t.panel.as_ptr().add(j * st);
                let mut isum = [[vdupq_n_s32(0); 2]; M];
                for g4 in 0..sub / 16 {
                    let xs: [int8x16_t; M] = std::array::from_fn(|k| {
                        vld1q_s8(t.qs.as_ptr().add((t0 + k) * cols + j * sub + 16 * g4))
                    });
                    macro_rules! group {
                        ($lane:literal) => {{
                            let w = blk.add(64 * (4 * g4 + $lane) + 32 * h);
                            let (w0, w1) = (vld1q_s8(w.cast()), vld1q_s8(w.add(16).cast()));
                            for (s, x) in isum.iter_mut().zip(&xs) {
                                s[0] = sdot_lane::<$lane>(s[0], w0, *x);
                                s[1] = sdot_lane::<$lane>(s[1], w1, *x);
                            }
                        }};
                    }
                    group!(0);
                    group!(1);
                    group!(2);
                    group!(3);
                }
                let sc = blk.add(sub * PR + 32 * h).cast::<f32>();
                let a = [vld1q_f32(sc), vld1q_f32(sc.add(4))];
                let mm = [vld1q_f32(sc.add(PR)), vld1q_f32(sc.add(PR + 4))];
                for (k, (acc, s)) in acc.iter_mut().zip(&isum).enumerate() {
                    let d = *t.d.get_unchecked((t0 + k) * nsb + j);
                    let ds = *t.dsum.get_unchecked((t0 + k) * nsb + j);
                    for q in 0..2 {
                        acc[q] = vfmaq_f32(acc[q], vcvtq_f32_s32(s[q]), vmulq_n_f32(a[q], d));
                        acc[q] = vfmaq_n_f32(acc[q], mm[q], ds);
                    }
                }
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            // SAFETY: `o` is 16 writable f32 and 8h + 8 ≤ 16.
            unsafe {
                vst1q_f32(o.as_mut_ptr().add(8 * h), a[0]);
                vst1q_f32(o.as_mut_ptr().add(8 * h + 4), a[1]);
            }
        }
    }
    out
}
