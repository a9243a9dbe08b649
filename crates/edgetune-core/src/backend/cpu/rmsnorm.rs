//! RMSNorm: `y[i, :] = x[i, :] · rstd[i] · w`, `rstd[i] = 1 / sqrt(mean(x[i, :]²) + eps)`.
//!
//! `x`, `y`: `[n, dim]` with `dim = w.len()`; `rstd` (optional, saved for the backward): `[n]`.
//! The fast version sums squares in f32 with 8 independent accumulators (vectorises) and runs
//! rows in parallel; the reference sums in f64.
//!
//! Backward (norm weights are frozen, so only the input gradient): with `r = rstd[i]`,
//! `dx[i, k] = r · (w[k]·dy[i, k] − x[i, k] · r² / dim · Σ_j dy[i, j]·w[j]·x[i, j])`.

use rayon::prelude::*;

use super::Real;
use crate::backend::check_len;
use crate::{Error, Result};

/// Rows per rayon task: enough work per task for short rows (dim 256) to amortise the split.
const ROWS_PER_TASK: usize = 4;

fn check(x: &[f32], w: &[f32], y: &[f32], rstd: Option<&[f32]>) -> Result<usize> {
    let dim = w.len();
    if dim == 0 {
        return Err(Error::Invalid("rmsnorm: empty weight".into()));
    }
    let n = x.len() / dim;
    check_len("rmsnorm", "x", x.len(), n, dim)?;
    check_len("rmsnorm", "y", y.len(), n, dim)?;
    if let Some(r) = rstd {
        check_len("rmsnorm", "rstd", r.len(), n, 1)?;
    }
    Ok(n)
}

/// Fast version.
pub fn rmsnorm(
    x: &[f32],
    w: &[f32],
    eps: f32,
    y: &mut [f32],
    rstd: Option<&mut [f32]>,
) -> Result<()> {
    let n = check(x, w, y, rstd.as_deref())?;
    let dim = w.len();
    let row = |x_row: &[f32], y_row: &mut [f32]| -> f32 {
        let ss = super::dot_f32(x_row, x_row);
        let r = 1.0 / (ss / dim as f32 + eps).sqrt();
        for ((o, &v), &g) in y_row.iter_mut().zip(x_row).zip(w) {
            *o = v * r * g;
        }
        r
    };
    let chunk = ROWS_PER_TASK * dim;
    match rstd {
        Some(rs) => y
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .zip(rs.par_chunks_mut(ROWS_PER_TASK))
            .for_each(|((yc, xc), rc)| {
                for ((yr, xr), r) in yc.chunks_mut(dim).zip(xc.chunks(dim)).zip(rc) {
                    *r = row(xr, yr);
                }
            }),
        None => y
            .par_chunks_mut(chunk)
            .zip(x.par_chunks(chunk))
            .for_each(|(yc, xc)| {
                for (yr, xr) in yc.chunks_mut(dim).zip(xc.chunks(dim)) {
                    row(xr, yr);
                }
            }),
    }
    debug_assert_eq!(y.len(), n * dim);
    Ok(())
}

/// Scalar specification (f64 sum of squares and scaling).
pub fn rmsnorm_ref(
    x: &[f32],
    w: &[f32],
    eps: f32,
    y: &mut [f32],
    mut rstd: Option<&mut [f32]>,
) -> Result<()> {
    let n = check(x, w, y, rstd.as_deref())?;
    let dim = w.len();
    for i in 0..n {
        let mut ss = 0.0f64;
        for j in 0..dim {
            ss += x[i * dim + j] as f64 * x[i * dim + j] as f64;
        }
        let r = 1.0 / (ss / dim as f64 + eps as f64).sqrt();
        for j in 0..dim {
            y[i * dim + j] = (x[i * dim + j] as f64 * r * w[j] as f64) as f32;
        }
        if let Some(rs) = rstd.as_deref_mut() {
            rs[i] = r as f32;
        }
    }
    Ok(())
}

/// Lengths of a backward call (any element type): returns the row count.
fn check_backward<T>(x: &[T], w: &[T], rstd: &[T], dy: &[T], dx: &[T]) -> Result<usize> {
    let dim = w.len();
    if dim == 0 {
        return Err(Error::Invalid("rmsnorm_backward: empty weight".into()));
    }
    let n = x.len() / dim;
    check_len("rmsnorm_backward", "x", x.len(), n, dim)?;
    check_len("rmsnorm_backward", "dy", dy.len(), n, dim)?;
    check_len("rmsnorm_backward", "dx", dx.len(), n, dim)?;
    check_len("rmsnorm_backward", "rstd", rstd.len(), n, 1)?;
    Ok(n)
}

/// Input gradient of [`rmsnorm`] (overwrites `dx`): `x`, `dy`, `dx` `[n, dim]`, `rstd` `[n]` as
/// saved by the forward. Rows in parallel, f32 with 8-lane partial sums.
pub fn rmsnorm_backward(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[f32],
    dx: &mut [f32],
) -> Result<()> {
    check_backward(x, w, rstd, dy, dx)?;
    let dim = w.len();
    let row = |x_row: &[f32], dy_row: &[f32], r: f32, dx_row: &mut [f32]| {
        // Σ_j dy_j·w_j·x_j with independent lanes so the loop vectorises.
        let mut acc = [0.0f32; 8];
        let mut j = 0;
        while j + 8 <= dim {
            for l in 0..8 {
                acc[l] += dy_row[j + l] * w[j + l] * x_row[j + l];
            }
            j += 8;
        }
        let mut c = acc.iter().sum::<f32>();
        for t in j..dim {
            c += dy_row[t] * w[t] * x_row[t];
        }
        let k = r * r * c / dim as f32;
        for (((o, &xv), &g), &wv) in dx_row.iter_mut().zip(x_row).zip(dy_row).zip(w) {
            *o = r * (wv * g - xv * k);
        }
    };
    let chunk = ROWS_PER_TASK * dim;
    dx.par_chunks_mut(chunk)
        .zip(x.par_chunks(chunk))
        .zip(dy.par_chunks(chunk))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dxc, xc), dyc), rc)| {
            for (((dxr, xr), dyr), &r) in dxc
                .chunks_mut(dim)
                .zip(xc.chunks(dim))
                .zip(dyc.chunks(dim))
                .zip(rc)
            {
                row(xr, dyr, r, dxr);
            }
        });
    Ok(())
}

/// Scalar specification of [`rmsnorm_backward`], generic over the element type (f64 inside).
pub fn rmsnorm_backward_ref<T: Real>(
    x: &[T],
    w: &[T],
    rstd: &[T],
    dy: &[T],
    dx: &mut [T],
) -> Result<()> {
    let n = check_backward(x, w, rstd, dy, dx)?;
    let dim = w.len();
    for i in 0..n {
        let r = rstd[i].to_f64();
        let (xr, dyr) = (&x[i * dim..(i + 1) * dim], &dy[i * dim..(i + 1) * dim]);
        let c: f64 = (0..dim)
            .map(|j| dyr[j].to_f64() * w[j].to_f64() * xr[j].to_f64())
            .sum();
        for j in 0..dim {
            let v = r * (w[j].to_f64() * dyr[j].to_f64() - xr[j].to_f64() * r * r * c / dim as f64);
            dx[i * dim + j] = T::from_f64(v);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, random};

    #[test]
    fn matches_ref() {
        // f32 sum of `dim` squares (8 lanes): relative error ≲ dim/8 · 2^-24 ≈ 2e-6 for dim 300;
        // then sqrt, divide and two multiplies. 1e-5 relative holds with a margin.
        for (n, dim) in [(1, 1), (3, 7), (5, 256), (9, 300), (13, 1024)] {
            let x = random(n * dim, 3.0, n as u64);
            let w = random(dim, 1.5, 7);
            let (mut a, mut b) = (vec![0.0; n * dim], vec![0.0; n * dim]);
            let (mut ra, mut rb) = (vec![0.0; n], vec![0.0; n]);
            rmsnorm(&x, &w, 1e-5, &mut a, Some(&mut ra)).unwrap();
            rmsnorm_ref(&x, &w, 1e-5, &mut b, Some(&mut rb)).unwrap();
            assert_close(&a, &b, 1e-5, "rmsnorm y");
            assert_close(&ra, &rb, 1e-5, "rmsnorm rstd");
            let mut c = vec![0.0; n * dim];
            rmsnorm(&x, &w, 1e-5, &mut c, None).unwrap();
            assert_eq!(a, c, "rstd output does not change y");
        }
    }

    #[test]
    fn backward_matches_ref() {
        // Each dx is r·(w·dy − x·k) with k an f32 sum of `dim` products (relative error
        // ≲ dim/8·2^-24 of Σ|dy·w·x|): the two terms are O(1) each, 1e-5 relative to
        // max(1, |dx|) holds with margin, also where they nearly cancel.
        for (n, dim) in [(1, 1), (3, 7), (5, 256), (9, 300), (13, 1024)] {
            let x = random(n * dim, 3.0, n as u64);
            let w = random(dim, 1.5, 7);
            let dy = random(n * dim, 1.0, 11 + n as u64);
            let (mut y, mut rstd) = (vec![0.0; n * dim], vec![0.0; n]);
            rmsnorm(&x, &w, 1e-5, &mut y, Some(&mut rstd)).unwrap();
            let (mut a, mut b) = (vec![0.0; n * dim], vec![0.0; n * dim]);
            rmsnorm_backward(&x, &w, &rstd, &dy, &mut a).unwrap();
            rmsnorm_backward_ref(&x, &w, &rstd, &dy, &mut b).unwrap();
            assert_close(&a, &b, 1e-5, "rmsnorm dx");
        }
        let one = [1.0f32; 4];
        assert!(rmsnorm_backward(&one, &one[..2], &one[..1], &one, &mut [0.0; 4]).is_err());
        assert!(rmsnorm_backward(&one, &one[..2], &one[..2], &one, &mut [0.0; 3]).is_err());
        assert!(
            rmsnorm_backward_ref(&one, &one[..2], &one[..2], &one[..2], &mut [0.0; 4]).is_err()
        );
    }

    #[test]
    fn hand_computed() {
        // x = [3, 4]: mean(x²) = 12.5; eps 0.5 → rstd = 1/sqrt(13) ; w = [1, 2].
        let mut y = [0.0f32; 2];
        let mut r = [0.0f32; 1];
        rmsnorm(&[3.0, 4.0], &[1.0, 2.0], 0.5, &mut y, Some(&mut r)).unwrap();
        let rs = 1.0 / 13f32.sqrt();
        assert!((r[0] - rs).abs() < 1e-7);
        assert!((y[0] - 3.0 * rs).abs() < 1e-6 && (y[1] - 8.0 * rs).abs() < 1e-6);
        assert!(rmsnorm(&[1.0; 5], &[1.0; 2], 1e-5, &mut [0.0; 5], None).is_err());
        assert!(
            rmsnorm(
                &[1.0; 4],
                &[1.0; 2],
                1e-5,
                &mut [0.0; 4],
                Some(&mut [0.0; 3])
            )
            .is_err()
        );
    }
}
