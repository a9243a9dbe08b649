//! Small dense linear algebra for adapter initialisation, in f64: OLoRA's thin QR
//! ([`qr_thin`], Householder) and PiSSA's truncated SVD ([`svd_top`], subspace iteration with a
//! one-sided Jacobi SVD ([`svd_jacobi`]) of the projected matrix).
//!
//! These run once per adapted linear before training, so they favour accuracy and simplicity
//! over speed; the only large products (`Ŵ·Z`, `Ŵᵀ·Q` with `Ŵ` `[out, in]` and `Z` a thin
//! `[in, k]` block) go through the crate's f32 GEMM. All matrices are row-major.
//!
//! Conventions (so results can be compared with PyTorch/LAPACK):
//! - QR: `R[j, j] = −sign(a_jj)·‖x‖` as in LAPACK `geqrf` (the sign of a column of `Q` and the
//!   matching row of `R` is otherwise arbitrary: any product `Q·R` is unchanged).
//! - SVD: singular values descending, `a = u·diag(s)·vᵀ`; the sign of each singular pair is
//!   arbitrary (the same in `u` and `v`).

use rand::{SeedableRng, rngs::StdRng};

use super::base::{dims, normal};
use crate::backend::cpu::gemm::gemm;
use crate::{Error, Result};

/// Thin Householder QR of `a` `[m, k]`, `m ≥ k`: returns `(q [m, k], r [k, k])` with
/// `qᵀq = I`, `r` upper triangular and `q·r = a`.
pub fn qr_thin(a: &[f64], m: usize, k: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    if a.len() != m * k || k > m {
        return Err(Error::Invalid(format!(
            "qr_thin: [{m}, {k}] needs m ≥ k and {} values, got {}",
            m * k,
            a.len()
        )));
    }
    let mut w = a.to_vec();
    // Reflector j: H_j = I − tau_j·v_j·v_jᵀ on rows j.., with v_j[0] = 1.
    let mut vs: Vec<Vec<f64>> = Vec::with_capacity(k);
    let mut taus = Vec::with_capacity(k);
    for j in 0..k {
        let norm = (j..m).map(|i| w[i * k + j].powi(2)).sum::<f64>().sqrt();
        let alpha = w[j * k + j];
        if norm == 0.0 {
            vs.push(vec![1.0; 1]);
            taus.push(0.0);
            continue;
        }
        let beta = if alpha >= 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = (j..m).map(|i| w[i * k + j] / (alpha - beta)).collect();
        v[0] = 1.0;
        let tau = (beta - alpha) / beta;
        apply_reflector(&v, tau, &mut w, j, k, j..k);
        vs.push(v);
        taus.push(tau);
    }
    let mut r = vec![0.0; k * k];
    for i in 0..k {
        r[i * k + i..(i + 1) * k].copy_from_slice(&w[i * k + i..(i + 1) * k]);
    }
    // Q = H_0·…·H_{k−1}·[I_k; 0], applied right to left.
    let mut q = vec![0.0; m * k];
    for j in 0..k {
        q[j * k + j] = 1.0;
    }
    for j in (0..k).rev() {
        apply_reflector(&vs[j], taus[j], &mut q, j, k, 0..k);
    }
    Ok((q, r))
}

/// `w[j.., cols] = (I − tau·v·vᵀ)·w[j.., cols]` for a row-major `w` of width `width`.
fn apply_reflector(
    v: &[f64],
    tau: f64,
    w: &mut [f64],
    j: usize,
    width: usize,
    cols: std::ops::Range<usize>,
) {
    if tau == 0.0 {
        return;
    }
    for c in cols {
        let dot: f64 = v
            .iter()
            .enumerate()
            .map(|(i, vi)| vi * w[(j + i) * width + c])
            .sum();
        let f = tau * dot;
        for (i, vi) in v.iter().enumerate() {
            w[(j + i) * width + c] -= f * vi;
        }
    }
}

/// One-sided Jacobi (Hestenes) SVD of `a` `[m, n]`, `m ≥ n`: returns `(u [m, n], s [n], v [n, n])`
/// with `s` descending and `a = u·diag(s)·vᵀ`. Columns of `u` for zero singular values are 0.
pub fn svd_jacobi(a: &[f64], m: usize, n: usize) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    if a.len() != m * n || n > m {
        return Err(Error::Invalid(format!(
            "svd_jacobi: [{m}, {n}] needs m ≥ n and {} values, got {}",
            m * n,
            a.len()
        )));
    }
    // Column-major working copies: cols[j] is column j of a (then of u·diag(s)).
    let mut cols: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..m).map(|i| a[i * n + j]).collect())
        .collect();
    let mut vcols: Vec<Vec<f64>> = (0..n)
        .map(|j| (0..n).map(|i| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    const MAX_SWEEPS: usize = 80;
    for _ in 0..MAX_SWEEPS {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (alpha, beta, gamma) = cols[p]
                    .iter()
                    .zip(&cols[q])
                    .fold((0.0, 0.0, 0.0), |(a, b, g), (x, y)| {
                        (a + x * x, b + y * y, g + x * y)
                    });
                if gamma == 0.0 || gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                rotate(&mut cols, p, q, c, s);
                rotate(&mut vcols, p, q, c, s);
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = cols
        .iter()
        .map(|c| c.iter().map(|x| x * x).sum::<f64>().sqrt())
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| norms[j].total_cmp(&norms[i]));
    let (mut u, mut s, mut v) = (vec![0.0; m * n], vec![0.0; n], vec![0.0; n * n]);
    for (k, &j) in order.iter().enumerate() {
        s[k] = norms[j];
        if norms[j] > 0.0 {
            for i in 0..m {
                u[i * n + k] = cols[j][i] / norms[j];
            }
        }
        for i in 0..n {
            v[i * n + k] = vcols[j][i];
        }
    }
    Ok((u, s, v))
}

/// Columns `(p, q)` ← `(c·p − s·q, s·p + c·q)`.
fn rotate(cols: &mut [Vec<f64>], p: usize, q: usize, c: f64, s: f64) {
    let (lo, hi) = cols.split_at_mut(q);
    for (x, y) in lo[p].iter_mut().zip(hi[0].iter_mut()) {
        let (a, b) = (*x, *y);
        *x = c * a - s * b;
        *y = s * a + c * b;
    }
}

/// A truncated SVD `w ≈ u·diag(s)·vt`.
#[derive(Clone, Debug, PartialEq)]
pub struct TopSvd {
    /// Left singular vectors `[m, k]`.
    pub u: Vec<f64>,
    /// Singular values, descending `[k]`.
    pub s: Vec<f64>,
    /// Right singular vectors as rows `[k, n]`.
    pub vt: Vec<f64>,
}

/// The top-`k` singular triplets of `w` `[m, n]` by subspace iteration (Halko et al.; PyTorch's
/// `svd_lowrank`, which PEFT's `pissa_niter_k` calls), with `k + max(k, 4)` columns of
/// oversampling (PEFT uses none) and `niter` power iterations from a seeded Gaussian start.
/// When the block covers `min(m, n)` the result is exact for any `niter`.
pub fn svd_top(w: &[f32], m: usize, n: usize, k: usize, niter: usize, seed: u64) -> Result<TopSvd> {
    let full = m.min(n);
    if w.len() != m * n || k == 0 || k > full {
        return Err(Error::Invalid(format!(
            "svd_top: rank {k} of a [{m}, {n}] matrix ({} values given) needs 1 ≤ k ≤ {full}",
            w.len()
        )));
    }
    let kb = (k + k.max(4)).min(full);
    let mut omega = vec![0.0f32; n * kb];
    normal(&mut StdRng::seed_from_u64(seed), 1.0, &mut omega);
    // Q = orth(W·Ω) [m, kb]; then niter × (Z = orth(Wᵀ·Q), Q = orth(W·Z)).
    let mut y = vec![0.0f32; m * kb];
    let mut z = vec![0.0f32; n * kb];
    gemm(dims(m, kb, n, false, false), 1.0, w, &omega, 0.0, &mut y)?;
    let mut q = orthonormal(&y, m, kb)?;
    for _ in 0..niter {
        gemm(
            dims(n, kb, m, true, false),
            1.0,
            w,
            &to_f32(&q),
            0.0,
            &mut z,
        )?;
        let zo = orthonormal(&z, n, kb)?;
        gemm(
            dims(m, kb, n, false, false),
            1.0,
            w,
            &to_f32(&zo),
            0.0,
            &mut y,
        )?;
        q = orthonormal(&y, m, kb)?;
    }
    // C = Qᵀ·W [kb, n] in f64, then Cᵀ = U_h·Σ·V_hᵀ, so W ≈ (Q·V_h)·Σ·U_hᵀ.
    let mut c = vec![0.0f64; kb * n];
    for o in 0..m {
        let row = &w[o * n..(o + 1) * n];
        for j in 0..kb {
            let f = q[o * kb + j];
            for (cv, &wv) in c[j * n..(j + 1) * n].iter_mut().zip(row) {
                *cv += f * wv as f64;
            }
        }
    }
    let ct: Vec<f64> = (0..n * kb).map(|t| c[(t % kb) * n + t / kb]).collect();
    let (uh, s, vh) = svd_jacobi(&ct, n, kb)?;
    let mut u = vec![0.0; m * k];
    for o in 0..m {
        for j in 0..k {
            u[o * k + j] = (0..kb).map(|l| q[o * kb + l] * vh[l * kb + j]).sum();
        }
    }
    let mut vt = vec![0.0; k * n];
    for j in 0..k {
        for i in 0..n {
            vt[j * n + i] = uh[i * kb + j];
        }
    }
    Ok(TopSvd {
        u,
        s: s[..k].to_vec(),
        vt,
    })
}

/// An orthonormal basis `[rows, k]` of the columns of `y` (f64 Householder).
fn orthonormal(y: &[f32], rows: usize, k: usize) -> Result<Vec<f64>> {
    let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
    Ok(qr_thin(&y64, rows, k)?.0)
}

fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}
