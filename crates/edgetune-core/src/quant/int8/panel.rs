//! Panels: 16 weight rows unpacked into byte levels and f32 scales, laid out so that one
//! 64-byte load gives four consecutive levels of each of the 16 rows, and the register-tile
//! kernels that multiply a panel with several quantized activation rows at once.
//!
//! Layout, per sub-block `j` of `sub` elements (`stride(sub)` bytes):
//!
//! ```text
//! levels [sub/4][16 rows][4]  bytes: group g holds elements 4g..4g+4 of the sub-block
//! a      [16 rows]            f32 (LE): the rows' scales
//! m      [16 rows]            f32 (LE): the rows' offsets (see Encoding)
//! ```
//!
//! With activations `x̂ = d·q` the tile computes, per row `r` and token `t`,
//! `y[t][r] = Σ_j a_jr·d_tj·Σ_{i∈j} s_ri·q_ti + m_jr·(d·Σq)_tj`, `s` the stored byte.

use super::{IntType, Level, QuantActs};

/// Rows per panel (the tile width).
pub const PR: usize = 16;

/// Bytes of one sub-block of `sub` elements in a panel.
pub const fn stride(sub: usize) -> usize {
    sub * PR + 8 * PR
}

/// How levels are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `s = u` read as unsigned and `m' = m − Z·a` (x86 `vpdpbusd`: unsigned × signed).
    Unsigned,
    /// `s = u − Z` read as signed and `m' = m` (Arm `sdot`: signed × signed).
    Centered,
}

/// Scratch for unpacking one row (reused across panels).
#[derive(Default, Debug)]
pub struct RowScratch {
    u: Vec<u8>,
    a: Vec<f32>,
    m: Vec<f32>,
}

/// Builds in `out` (`cols/sub · stride(sub)` bytes) the panel of `rows` (at most 16 rows of
/// `cols` elements of `it`'s type; missing rows are zero) with `unpack`.
pub fn build(
    it: &IntType,
    unpack: super::UnpackFn,
    rows: &[&[u8]],
    cols: usize,
    enc: Encoding,
    scratch: &mut RowScratch,
    out: &mut [u8],
) {
    let (sub, ns) = (it.sub, cols / it.sub);
    let st = stride(sub);
    let out = &mut out[..ns * st];
    if rows.len() < PR {
        out.fill(0);
    }
    scratch.u.resize(cols, 0);
    scratch.a.resize(ns, 0.0);
    scratch.m.resize(ns, 0.0);
    let z = it.zero;
    for (r, row) in rows.iter().take(PR).enumerate() {
        unpack(row, &mut scratch.u, &mut scratch.a, &mut scratch.m);
        for (j, blk) in out.chunks_exact_mut(st).enumerate() {
            let u = &scratch.u[j * sub..(j + 1) * sub];
            let (levels, scales) = blk.split_at_mut(sub * PR);
            for (g, quad) in u.chunks_exact(4).enumerate() {
                let dst = &mut levels[g * 4 * PR + 4 * r..g * 4 * PR + 4 * r + 4];
                for (d, &v) in dst.iter_mut().zip(quad) {
                    *d = match enc {
                        Encoding::Unsigned => v,
                        Encoding::Centered => v.wrapping_sub(z),
                    };
                }
            }
            let (a, m) = (scratch.a[j], scratch.m[j]);
            let m = match enc {
                Encoding::Unsigned => m - z as f32 * a,
                Encoding::Centered => m,
            };
            scales[4 * r..4 * r + 4].copy_from_slice(&a.to_le_bytes());
            scales[4 * PR + 4 * r..4 * PR + 4 * r + 4].copy_from_slice(&m.to_le_bytes());
        }
    }
}

/// The activation rows a tile reads: `m` rows starting at `t0` of `acts`.
#[derive(Clone, Copy)]
pub struct TileIn<'a> {
    /// The panel (`nsb · stride(sub)` bytes).
    pub panel: &'a [u8],
    pub sub: usize,
    /// Sub-blocks per row.
    pub nsb: usize,
    /// Quants of the tile's rows, `[m, nsb·sub]` (row `t` at `t·nsb·sub`).
    pub qs: &'a [i8],
    /// Scales and d·Σq of the tile's rows, `[m, nsb]`.
    pub d: &'a [f32],
    pub dsum: &'a [f32],
}

impl<'a> TileIn<'a> {
    /// Rows `t0..t0 + m` of `acts` against `panel`.
    pub fn new(
        panel: &'a [u8],
        sub: usize,
        acts: &'a QuantActs,
        cols: usize,
        t0: usize,
        m: usize,
    ) -> Self {
        let nsb = cols / sub;
        TileIn {
            panel,
            sub,
            nsb,
            qs: &acts.qs()[t0 * cols..(t0 + m) * cols],
            d: &acts.d()[t0 * nsb..(t0 + m) * nsb],
            dsum: &acts.dsum()[t0 * nsb..(t0 + m) * nsb],
        }
    }

    /// Whether the slices hold `m` rows (what the SIMD kernels read).
    pub(crate) fn holds(&self, m: usize) -> bool {
        let cols = self.nsb * self.sub;
        self.sub.is_multiple_of(16)
            && self.panel.len() >= self.nsb * stride(self.sub)
            && self.qs.len() >= m * cols
            && self.d.len() >= m * self.nsb
            && self.dsum.len() >= m * self.nsb
    }
}

/// Scalar specification of the tile kernels: `out[t][r]` for `m` rows, exact integer sums and
/// f64 scale arithmetic.
pub fn tile_ref(t: &TileIn<'_>, enc: Encoding, m: usize) -> Vec<[f64; PR]> {
    let st = stride(t.sub);
    let f =
        |b: &[u8], i: usize| f32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes")) as f64;
    (0..m)
        .map(|tk| {
            std::array::from_fn(|r| {
                let mut y = 0.0f64;
                for j in 0..t.nsb {
                    let blk = &t.panel[j * st..(j + 1) * st];
                    let mut s = 0i64;
                    for i in 0..t.sub {
                        let b = blk[(i / 4) * 4 * PR + 4 * r + i % 4];
                        let w = match enc {
                            Encoding::Unsigned => b as i64,
                            Encoding::Centered => b as i8 as i64,
                        };
                        s += w * t.qs[tk * t.nsb * t.sub + j * t.sub + i] as i64;
                    }
                    let (a, mm) = (
                        f(blk, t.sub * PR + 4 * r),
                        f(blk, t.sub * PR + 4 * PR + 4 * r),
                    );
                    y += a * t.d[tk * t.nsb + j] as f64 * s as f64
                        + mm * t.dsum[tk * t.nsb + j] as f64;
                }
                y
            })
        })
        .collect()
}

/// Most activation rows one tile call handles.
pub const MR: usize = 8;

/// A tile kernel: `out[t][r]` for the first `m ≤ MR` rows of `TileIn` (`out.len() ≥ m`).
pub type TileFn = fn(t: &TileIn<'_>, m: usize, out: &mut [[f32; PR]]);

/// The tile kernel of `level` and the encoding its panels need, if that level has one.
pub fn tile_kernel(level: Level) -> Option<(TileFn, Encoding)> {
    if !level.supported() {
        return None;
    }
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512Vnni => Some((super::panel_x86::tile_avx512 as TileFn, Encoding::Unsigned)),
        #[cfg(target_arch = "aarch64")]
        Level::NeonDot => Some((super::panel_neon::tile_neon as TileFn, Encoding::Centered)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::random_rows;
    use super::super::{ActType, dot_ref, int_type};
    use super::*;
    use crate::quant::GgmlType;
    use crate::quant::simd::test_util::{rng, values};

    /// Every type's panels, through every tile kernel of this CPU and the reference, against
    /// the per-row specification `dot_ref`, for 1..=MR (+ a remainder) activation rows and a
    /// partial last panel.
    #[test]
    fn tiles_match_the_reference_for_every_type() {
        let kernels: Vec<_> = Level::available()
            .into_iter()
            .filter_map(tile_kernel)
            .collect();
        for ty in GgmlType::ALL {
            let Some(it) = int_type(ty) else { continue };
            let (nrows, cols) = (13, 512);
            let data = random_rows(ty, nrows, cols, 77);
            let rb = data.len() / nrows;
            let rows: Vec<&[u8]> = data.chunks_exact(rb).collect();
            let mut r = rng(78);
            let n = MR + 3;
            let x = values(&mut r, n * cols, 1.0);
            let mut acts = QuantActs::new();
            acts.quantize(Level::Scalar, &x, n, cols, it.act, it.sub);
            assert!(
                it.act.block() <= cols
                    && matches!(it.act, ActType::Q8_0 | ActType::Q8_1 | ActType::Q8K)
            );
            let want: Vec<Vec<f64>> = (0..n)
                .map(|t| {
                    rows.iter()
                        .map(|row| dot_ref(ty, row, &acts.row(t), it.sub) as f64)
                        .collect()
                })
                .collect();
            let mut scratch = RowScratch::default();
            let nsb = cols / it.sub;
            let mut panel = vec![0u8; nsb * stride(it.sub)];
            for enc in [Encoding::Unsigned, Encoding::Centered] {
                build(it, it.unpack, &rows, cols, enc, &mut scratch, &mut panel);
                for m in 1..=MR {
                    let t = TileIn::new(&panel, it.sub, &acts, cols, n - m, m);
                    let got = tile_ref(&t, enc, m);
                    for (tk, got) in got.iter().enumerate() {
                        for (rr, g) in got.iter().enumerate() {
                            let w = want[n - m + tk].get(rr).copied().unwrap_or(0.0);
                            let tol = 1e-5 * (1.0 + w.abs());
                            assert!((g - w).abs() <= tol, "{ty} {enc:?} ref m={m} ({tk},{rr})");
                        }
                    }
                }
            }
            for &(kernel, enc) in &kernels {
                build(it, it.unpack, &rows, cols, enc, &mut scratch, &mut panel);
                for m in 1..=MR {
                    let t = TileIn::new(&panel, it.sub, &acts, cols, n - m, m);
                    let exact = tile_ref(&t, enc, m);
                    let mut out = [[0.0f32; PR]; MR];
                    kernel(&t, m, &mut out);
                    for tk in 0..m {
                        for rr in 0..PR {
                            let e = exact[tk][rr];
                            // f32 sums over nsb sub-blocks of terms ≲ |y|: relative 1e-5 of
                            // the row's scale is far above the rounding (and far below a bug).
                            let tol = 1e-5 * (1.0 + e.abs());
                            assert!(
                                (out[tk][rr] as f64 - e).abs() <= tol,
                                "{ty} {enc:?} m={m} ({tk},{rr}): {} vs {e}",
                                out[tk][rr]
                            );
                        }
                    }
                }
            }
        }
    }
}
