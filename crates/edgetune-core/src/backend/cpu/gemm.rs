//! Dense f32 GEMM for the adapter products: `C = α·op(A)·op(B) + β·C`, row-major, with
//! transpose flags, rayon-parallel over output blocks, allocation-free.
//!
//! The LoRA branch (docs/METHODS.md#the-lora-branch) needs `X·Aᵀ`, `H·Bᵀ`, `Gᵀ·H`, `G·B`, `dHᵀ·X`
//! and `dH·A`: every transpose combination, with one dimension (the rank `r`) small. The work is
//! split into `MC × NC` blocks of `C` (both axes, so `dA = dHᵀX` with `m = r` still has many
//! tasks). A task walks `k` in slices of `KC`, packs its slice of `op(A)` (`[MC, KC]`) and one
//! 16-column panel of `op(B)` (`[KC, 16]`, zero-padded) into fixed-size stack tiles, and runs the
//! register-tile kernel of [`crate::quant::microkernel`] on them. The stack tiles make the op
//! independent of the layouts (transposed or not) and need no caller scratch and no heap.

use rayon::prelude::*;

use super::Real;
use crate::Result;
use crate::backend::check_len;
use crate::quant::microkernel::{MR, NR, with_tile};

/// Rows of `C` per task (a multiple of the tile height `MR`).
const MC: usize = 8 * MR;
/// Columns of `C` per task (a multiple of the panel width `NR`).
const NC: usize = 4 * NR;
/// Depth of one packed slice of `k` (A tile `MC·KC` = 48 KiB, B panel `KC·NR` = 16 KiB).
const KC: usize = 256;

/// Shapes of one GEMM: `op(A)` is `[m, k]`, `op(B)` is `[k, n]`, `C` is `[m, n]`, all dense
/// row-major. With `trans_a`, `A` is stored `[k, m]`; with `trans_b`, `B` is stored `[n, k]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
}

impl GemmDims {
    /// `op(A)[i, p]` as an index into `A`.
    #[inline]
    fn a_index(&self, i: usize, p: usize) -> usize {
        if self.trans_a {
            p * self.m + i
        } else {
            i * self.k + p
        }
    }

    /// `op(B)[p, j]` as an index into `B`.
    #[inline]
    fn b_index(&self, p: usize, j: usize) -> usize {
        if self.trans_b {
            j * self.k + p
        } else {
            p * self.n + j
        }
    }

    fn check(&self, a: usize, b: usize, c: usize) -> Result<()> {
        check_len("gemm", "A", a, self.m, self.k)?;
        check_len("gemm", "B", b, self.k, self.n)?;
        check_len("gemm", "C", c, self.m, self.n)
    }
}

/// `C`'s base pointer shared by the block tasks.
#[derive(Clone, Copy)]
struct SharedC(*mut f32);

impl SharedC {
    /// A method, so closures capture the `Sync` wrapper rather than the raw pointer.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: each task writes only the elements of its own `MC × NC` block of `C` (disjoint), and
// `C` is borrowed mutably for the whole parallel section.
unsafe impl Send for SharedC {}
unsafe impl Sync for SharedC {}

/// `c = alpha · op(a) · op(b) + beta · c` (see [`GemmDims`]). `beta == 0` overwrites `c` (NaNs
/// in it do not propagate, as in BLAS). Lengths are checked.
pub fn gemm(
    dims: GemmDims,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) -> Result<()> {
    dims.check(a.len(), b.len(), c.len())?;
    let (m, n) = (dims.m, dims.n);
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (row_blocks, col_blocks) = (m.div_ceil(MC), n.div_ceil(NC));
    let shared = SharedC(c.as_mut_ptr());
    (0..row_blocks * col_blocks)
        .into_par_iter()
        .for_each(|task| {
            let (i0, j0) = ((task / col_blocks) * MC, (task % col_blocks) * NC);
            let (mc, nc) = (MC.min(m - i0), NC.min(n - j0));
            // SAFETY: see `SharedC`; the block lies inside `c` (i0 + mc ≤ m, j0 + nc ≤ n).
            let c_at =
                |i: usize, j: usize| unsafe { &mut *shared.ptr().add((i0 + i) * n + j0 + j) };
            block(dims, alpha, a, b, beta, mc, nc, i0, j0, c_at);
        });
    Ok(())
}

/// One `mc × nc` block of `C` at `(i0, j0)`; `c_at(i, j)` is the block's element `(i, j)`.
#[allow(clippy::too_many_arguments)]
fn block<'c>(
    dims: GemmDims,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    mc: usize,
    nc: usize,
    i0: usize,
    j0: usize,
    c_at: impl Fn(usize, usize) -> &'c mut f32,
) {
    for i in 0..mc {
        for j in 0..nc {
            let c = c_at(i, j);
            *c = if beta == 0.0 { 0.0 } else { beta * *c };
        }
    }
    let mut a_pack = [0.0f32; MC * KC];
    let mut b_pack = [0.0f32; KC * NR];
    let mut p0 = 0;
    while p0 < dims.k {
        let kc = KC.min(dims.k - p0);
        // op(A)[i0.., p0..] → a_pack as [mc, kc] (rows kc apart).
        for i in 0..mc {
            for p in 0..kc {
                a_pack[i * kc + p] = a[dims.a_index(i0 + i, p0 + p)];
            }
        }
        for jp in (0..nc).step_by(NR) {
            let w = NR.min(nc - jp);
            // op(B)[p0.., j0+jp..] → b_pack as [kc, 16], columns ≥ w zeroed.
            for p in 0..kc {
                let row = &mut b_pack[p * NR..(p + 1) * NR];
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if j < w {
                        b[dims.b_index(p0 + p, j0 + jp + j)]
                    } else {
                        0.0
                    };
                }
            }
            for it in (0..mc).step_by(MR) {
                let h = MR.min(mc - it);
                with_tile(h, kc, &a_pack[it * kc..], kc, &b_pack, NR, |acc| {
                    for (di, row) in acc.iter().enumerate() {
                        for (dj, &v) in row[..w].iter().enumerate() {
                            *c_at(it + di, jp + dj) += alpha * v;
                        }
                    }
                });
            }
        }
        p0 += kc;
    }
}

/// Scalar specification of [`gemm`] with f64 sums, generic over the element type (f32 for
/// parity with [`gemm`], f64 for the adapters' finite-difference references). `beta == 0`
/// overwrites `c`. Assumes validated lengths.
pub fn gemm_ref<R: Real>(dims: GemmDims, alpha: f64, a: &[R], b: &[R], beta: f64, c: &mut [R]) {
    debug_assert!(dims.check(a.len(), b.len(), c.len()).is_ok());
    for i in 0..dims.m {
        for j in 0..dims.n {
            let s: f64 = (0..dims.k)
                .map(|p| a[dims.a_index(i, p)].to_f64() * b[dims.b_index(p, j)].to_f64())
                .sum();
            let old = if beta == 0.0 {
                0.0
            } else {
                beta * c[i * dims.n + j].to_f64()
            };
            c[i * dims.n + j] = R::from_f64(alpha * s + old);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::random;
    use super::*;

    /// Checks `gemm` against `gemm_ref` with the error bound of f32 accumulation over `k`
    /// terms: `|err| ≤ (k + 2)·ε·(|α|·Σ|a·b| + |β·c|)` per element.
    fn check(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool, alpha: f32, beta: f32) {
        let dims = GemmDims {
            m,
            n,
            k,
            trans_a,
            trans_b,
        };
        let seed = (m * 1000 + n * 10 + k) as u64;
        let a = random(m * k, 1.5, seed);
        let b = random(k * n, 1.5, seed + 1);
        let c0 = random(m * n, 1.0, seed + 2);
        let mut got = c0.clone();
        gemm(dims, alpha, &a, &b, beta, &mut got).unwrap();
        let mut want = c0.clone();
        gemm_ref::<f32>(dims, alpha as f64, &a, &b, beta as f64, &mut want);
        for i in 0..m {
            for j in 0..n {
                let abs: f64 = (0..k)
                    .map(|p| (a[dims.a_index(i, p)] as f64 * b[dims.b_index(p, j)] as f64).abs())
                    .sum();
                let bound = (k as f64 + 2.0)
                    * f32::EPSILON as f64
                    * (alpha.abs() as f64 * abs + (beta as f64 * c0[i * n + j] as f64).abs())
                    + 1e-30;
                let d = (got[i * n + j] as f64 - want[i * n + j] as f64).abs();
                assert!(
                    d <= bound,
                    "m={m} n={n} k={k} ta={trans_a} tb={trans_b} ({i},{j}): {d} > {bound}"
                );
            }
        }
    }

    #[test]
    fn all_transpose_combos_and_odd_shapes_match_reference() {
        let shapes = [
            (1, 1, 1),
            (5, 7, 3),
            (13, 17, 9),
            (49, 65, 257), // one past every block edge: MC, NC, KC
            (8, 300, 37),  // LoRA dA: few rows, many columns
            (70, 4, 600),  // LoRA dB: many rows, k = tokens over several KC slices
        ];
        for &(m, n, k) in &shapes {
            for ta in [false, true] {
                for tb in [false, true] {
                    check(m, n, k, ta, tb, 1.0, 0.0);
                    check(m, n, k, ta, tb, -0.75, 1.0);
                    check(m, n, k, ta, tb, 2.0, 0.5);
                }
            }
        }
    }

    #[test]
    fn beta_zero_ignores_nan_and_k_zero_scales_c() {
        let dims = GemmDims {
            m: 3,
            n: 4,
            k: 2,
            trans_a: false,
            trans_b: false,
        };
        let (a, b) = (vec![1.0f32; 6], vec![2.0f32; 8]);
        let mut c = vec![f32::NAN; 12];
        gemm(dims, 1.0, &a, &b, 0.0, &mut c).unwrap();
        assert!(c.iter().all(|&v| v == 4.0), "{c:?}");
        let empty = GemmDims { k: 0, ..dims };
        gemm(empty, 1.0, &[], &[], 0.5, &mut c).unwrap();
        assert!(c.iter().all(|&v| v == 2.0), "{c:?}");
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let dims = GemmDims {
            m: 2,
            n: 3,
            k: 4,
            trans_a: true,
            trans_b: false,
        };
        let mut c = vec![0.0; 6];
        assert!(gemm(dims, 1.0, &[0.0; 7], &[0.0; 12], 0.0, &mut c).is_err());
        assert!(gemm(dims, 1.0, &[0.0; 8], &[0.0; 11], 0.0, &mut c).is_err());
        assert!(gemm(dims, 1.0, &[0.0; 8], &[0.0; 12], 0.0, &mut c[..5]).is_err());
    }
}
