//! Helpers shared by the `adapters_*` tests of the LoRA derivatives: running an adapter's f32
//! forward and backward once, comparing against an f64 reference, dense f64 products for
//! targets, and a plain SGD loop on the adapter alone (the "loss falls" checks).
#![allow(dead_code)]

use edgetune::adapters::lora::BranchDims;
use edgetune::adapters::{Adapter, Pass};

/// The shapes of the f64 finite-difference checks: small enough to perturb every value of
/// every input and parameter, with `r < in_f < out_f` so that transposes cannot hide.
pub const FD_DIMS: BranchDims = BranchDims {
    n: 5,
    in_f: 8,
    out_f: 12,
    r: 4,
};

/// The shapes of the f32-adapter-against-reference parity checks: odd sizes, past every SIMD
/// width and tail.
pub const PARITY_DIMS: BranchDims = BranchDims {
    n: 37,
    in_f: 50,
    out_f: 70,
    r: 6,
};

/// `y = y0 + branch(x)`, then `dx = dx0 + ∂branch/∂xᵀ·g` and the parameter gradients.
pub struct Run {
    pub y: Vec<f32>,
    pub dx: Vec<f32>,
    pub grads: Vec<f32>,
}

pub fn run(ad: &dyn Adapter, pass: Pass, x: &[f32], y0: &[f32], g: &[f32], dx0: &[f32]) -> Run {
    let mut saved = vec![f32::NAN; ad.saved_len(pass.n)];
    let mut scratch = vec![f32::NAN; ad.scratch_len(pass.n)];
    let mut y = y0.to_vec();
    ad.forward(pass, x, &mut y, &mut saved, &mut scratch)
        .unwrap();
    let mut dx = dx0.to_vec();
    let mut grads = vec![f32::NAN; ad.n_params()];
    scratch.fill(f32::NAN);
    ad.backward(pass, x, g, &saved, &mut scratch, &mut dx, &mut grads)
        .unwrap();
    Run { y, dx, grads }
}

/// `|got − base − want| ≤ tol·max(1, |want|)` element-wise, naming the first failure.
pub fn close(got: &[f32], base: Option<&[f32]>, want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, &w) in want.iter().enumerate() {
        let g = got[i] as f64 - base.map_or(0.0, |b| b[i] as f64);
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}[{i}]: {g} vs reference {w}"
        );
    }
}

/// `x·wᵀ` in f64: `x` `[n, in]`, `w` `[out, in]` → `[n, out]`.
pub fn xwt(x: &[f64], w: &[f64], n: usize, in_f: usize, out_f: usize) -> Vec<f64> {
    let mut y = vec![0.0; n * out_f];
    for t in 0..n {
        for o in 0..out_f {
            y[t * out_f + o] = (0..in_f).map(|i| x[t * in_f + i] * w[o * in_f + i]).sum();
        }
    }
    y
}

/// `b·a` in f64: `b` `[out, r]`, `a` `[r, in]` → `[out, in]`.
pub fn matmul(b: &[f64], a: &[f64], out_f: usize, r: usize, in_f: usize) -> Vec<f64> {
    let mut m = vec![0.0; out_f * in_f];
    for o in 0..out_f {
        for i in 0..in_f {
            m[o * in_f + i] = (0..r).map(|j| b[o * r + j] * a[j * in_f + i]).sum();
        }
    }
    m
}

/// Orthonormal columns `[m, k]` by modified Gram–Schmidt (independent of the crate's QR).
pub fn gram_schmidt(a: &[f64], m: usize, k: usize) -> Vec<f64> {
    let mut q = a.to_vec();
    for j in 0..k {
        for p in 0..j {
            let dot: f64 = (0..m).map(|i| q[i * k + j] * q[i * k + p]).sum();
            for i in 0..m {
                q[i * k + j] -= dot * q[i * k + p];
            }
        }
        let nrm: f64 = (0..m).map(|i| q[i * k + j].powi(2)).sum::<f64>().sqrt();
        for i in 0..m {
            q[i * k + j] /= nrm;
        }
    }
    q
}

/// `U·diag(σ)·Vᵀ` `[m, n]` with orthonormal `U` `[m, k]`, `V` `[n, k]` (Gram–Schmidt of random).
pub fn with_spectrum(
    m: usize,
    n: usize,
    sigma: &[f64],
    seed: u64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let k = sigma.len();
    let u = gram_schmidt(&crate::backend_grad_fd::random64(m * k, 1.0, seed), m, k);
    let v = gram_schmidt(
        &crate::backend_grad_fd::random64(n * k, 1.0, seed + 1),
        n,
        k,
    );
    let mut w = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            w[i * n + j] = (0..k).map(|p| u[i * k + p] * sigma[p] * v[j * k + p]).sum();
        }
    }
    (w, u, v)
}

/// Hooks of [`sgd`]: after the backward (may add to the gradient, e.g. a regularizer) and
/// after the update (e.g. a rank allocator).
pub type GradHook<'a> = &'a mut dyn FnMut(&mut dyn Adapter, u64, &mut [f32]);
pub type PostHook<'a> = &'a mut dyn FnMut(&mut dyn Adapter, u64, &[f32]);

/// Plain SGD on the adapter alone, fitting `target` from `base + branch(x)` with
/// `L = ½/N·Σ(Y − T)²`; `on_step(t)` runs before each step's passes. Returns the losses.
#[allow(clippy::too_many_arguments)]
pub fn sgd(
    ad: &mut dyn Adapter,
    x: &[f32],
    base: &[f32],
    target: &[f32],
    n: usize,
    steps: u64,
    lr: f32,
    pre: GradHook,
    post: PostHook,
) -> Vec<f64> {
    let in_f = ad.in_features();
    let pass = Pass {
        n,
        training: true,
        seed: 0,
    };
    let mut losses = Vec::new();
    let mut g = vec![0.0f32; target.len()];
    let dx0 = vec![0.0f32; n * in_f];
    for step in 0..steps {
        ad.on_step(step);
        let mut saved = vec![0.0; ad.saved_len(n)];
        let mut scratch = vec![0.0; ad.scratch_len(n)];
        let mut y = base.to_vec();
        ad.forward(pass, x, &mut y, &mut saved, &mut scratch)
            .unwrap();
        let mut l = 0.0f64;
        for k in 0..y.len() {
            let e = y[k] - target[k];
            l += 0.5 * (e as f64).powi(2) / n as f64;
            g[k] = e / n as f32;
        }
        losses.push(l);
        let mut dx = dx0.clone();
        let mut grads = vec![0.0; ad.n_params()];
        ad.backward(pass, x, &g, &saved, &mut scratch, &mut dx, &mut grads)
            .unwrap();
        pre(ad, step, &mut grads);
        let mut off = 0;
        for i in 0..ad.params().len() {
            let p = ad.param_mut(i).unwrap();
            for (v, gr) in p.iter_mut().zip(&grads[off..]) {
                *v -= lr * gr;
            }
            off += p.len();
        }
        post(ad, step, &grads);
    }
    losses
}

/// No-op hooks.
pub fn no_pre(_: &mut dyn Adapter, _: u64, _: &mut [f32]) {}
pub fn no_post(_: &mut dyn Adapter, _: u64, _: &[f32]) {}
