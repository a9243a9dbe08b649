//! Finite-difference checks in f64 of the CPU backward ops RMSNorm, RoPE, SwiGLU and the
//! quantized input gradient `dx = dy·Ŵ`: each forward is rewritten here in plain f64 loops
//! (independent of `src/`), `L = Σ r·y` with random `r` is differentiated by central differences,
//! and compared with the op's generic scalar reference instantiated at f64 applied to `dy = r`
//! (tight: 1e-6), and with the fast f32 kernel (tolerance justified by f32 rounding).

use crate::backend_grad_fd::{assert_grad, fd_grad, functional, random64, to32, to64};
use edgetune::backend::cpu::{matmul, rmsnorm, rope, swiglu};
use edgetune::backend::{Backend, CpuBackend, RopeDims};
use edgetune::quant::matmul::QuantMatrix;
use edgetune::quant::{self, GgmlType};

/// Tolerance of the f64 references against central differences (h = 1e-6: truncation ~1e-12,
/// cancellation ~1e-16·|L|/h ≈ 1e-9 relative at worst for these sizes).
const TOL_F64: f64 = 1e-6;
/// Tolerance of the f32 kernels (inputs rounded to f32, f32 sums of ≤ 64 terms: ~1e-6 relative;
/// 2e-5 leaves margin).
const TOL_F32: f64 = 2e-5;

fn rmsnorm_f64(x: &[f64], w: &[f64], eps: f64) -> (Vec<f64>, Vec<f64>) {
    let dim = w.len();
    let n = x.len() / dim;
    let (mut y, mut rstd) = (vec![0.0; n * dim], vec![0.0; n]);
    for i in 0..n {
        let ms: f64 = x[i * dim..(i + 1) * dim].iter().map(|v| v * v).sum::<f64>() / dim as f64;
        rstd[i] = 1.0 / (ms + eps).sqrt();
        for j in 0..dim {
            y[i * dim + j] = x[i * dim + j] * rstd[i] * w[j];
        }
    }
    (y, rstd)
}

#[test]
fn rmsnorm_backward_matches_finite_differences() {
    let (n, dim, eps) = (5, 12, 1e-5);
    let x = random64(n * dim, 2.0, 1);
    let w = random64(dim, 1.5, 2);
    let r = random64(n * dim, 1.0, 3);
    let numeric = fd_grad(&x, |x| functional(&r, &rmsnorm_f64(x, &w, eps).0));
    let (_, rstd) = rmsnorm_f64(&x, &w, eps);
    let mut dx = vec![0.0f64; n * dim];
    rmsnorm::rmsnorm_backward_ref(&x, &w, &rstd, &r, &mut dx).unwrap();
    assert_grad(&dx, &numeric, TOL_F64, "rmsnorm dx (f64 ref)");
    // The fast kernel through the trait, with the f32 forward's rstd.
    let (x32, w32) = (to32(&x), to32(&w));
    let (mut y32, mut rstd32, mut dx32) = (vec![0.0; n * dim], vec![0.0; n], vec![0.0; n * dim]);
    let be = CpuBackend;
    be.rmsnorm(&x32, &w32, eps as f32, &mut y32, Some(&mut rstd32))
        .unwrap();
    be.rmsnorm_backward(&x32, &w32, &rstd32, &to32(&r), &mut dx32)
        .unwrap();
    assert_grad(&to64(&dx32), &numeric, TOL_F32, "rmsnorm dx (f32 fast)");
}

fn rope_f64(x: &[f64], inv_freq: &[f32], d: RopeDims) -> Vec<f64> {
    let mut y = x.to_vec();
    for i in 0..d.n_tokens {
        for h in 0..d.n_head {
            let base = (i * d.n_head + h) * d.head_dim;
            for j in 0..d.rope_dim / 2 {
                // The forward's angle: f32 position × f32 frequency, rounded to f32.
                let theta = ((d.pos0 + i) as f32 * inv_freq[j]) as f64;
                let (a, b) = (x[base + 2 * j], x[base + 2 * j + 1]);
                y[base + 2 * j] = a * theta.cos() - b * theta.sin();
                y[base + 2 * j + 1] = a * theta.sin() + b * theta.cos();
            }
        }
    }
    y
}

#[test]
fn rope_backward_matches_finite_differences() {
    for (pos0, rope_dim) in [(0, 8), (37, 6)] {
        let d = RopeDims {
            n_tokens: 4,
            pos0,
            n_head: 3,
            head_dim: 8,
            rope_dim,
        };
        let inv = rope::inv_freq(rope_dim, 10_000.0, None);
        let len = d.n_tokens * d.n_head * d.head_dim;
        let x = random64(len, 2.0, 4);
        let r = random64(len, 1.0, 5);
        let numeric = fd_grad(&x, |x| functional(&r, &rope_f64(x, &inv, d)));
        let mut dx = r.clone();
        rope::rope_backward_ref(&mut dx, &inv, d).unwrap();
        assert_grad(
            &dx,
            &numeric,
            TOL_F64,
            &format!("rope dx pos0={pos0} (f64 ref)"),
        );
        let mut dx32 = to32(&r);
        CpuBackend.rope_backward(&mut dx32, &inv, d).unwrap();
        assert_grad(&to64(&dx32), &numeric, TOL_F32, "rope dx (f32 fast)");
    }
}

fn swiglu_f64(g: &[f64], u: &[f64]) -> Vec<f64> {
    g.iter()
        .zip(u)
        .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
        .collect()
}

#[test]
fn swiglu_backward_matches_finite_differences() {
    let n = 40;
    let g = random64(n, 6.0, 6);
    let u = random64(n, 2.0, 7);
    let r = random64(n, 1.0, 8);
    let num_g = fd_grad(&g, |g| functional(&r, &swiglu_f64(g, &u)));
    let num_u = fd_grad(&u, |u| functional(&r, &swiglu_f64(&g, u)));
    let (mut dg, mut du) = (vec![0.0f64; n], vec![0.0f64; n]);
    swiglu::swiglu_backward_ref(&g, &u, &r, &mut dg, &mut du).unwrap();
    assert_grad(&dg, &num_g, TOL_F64, "swiglu dgate (f64 ref)");
    assert_grad(&du, &num_u, TOL_F64, "swiglu dup (f64 ref)");
    let (mut dg32, mut du32) = (vec![0.0f32; n], vec![0.0f32; n]);
    CpuBackend
        .swiglu_backward(&to32(&g), &to32(&u), &to32(&r), &mut dg32, &mut du32)
        .unwrap();
    assert_grad(&to64(&dg32), &num_g, TOL_F32, "swiglu dgate (f32 fast)");
    assert_grad(&to64(&du32), &num_u, TOL_F32, "swiglu dup (f32 fast)");
}

#[test]
fn matmul_dyw_matches_finite_differences() {
    // The dequantized W is the linear map the forward applies; L = Σ r·(x·Ŵᵀ).
    let (n, rows) = (3, 5);
    for (ty, cols) in [
        (GgmlType::F32, 7),
        (GgmlType::Q4_0, 64),
        (GgmlType::Q4_K, 256),
    ] {
        let values: Vec<f32> = to32(&random64(rows * cols, 0.5, 9));
        let mut bytes = vec![0u8; ty.bytes_for((rows * cols) as u64).unwrap() as usize];
        quant::quantize(ty, &values, &mut bytes).unwrap();
        let w = QuantMatrix::new(ty, rows, cols, &bytes).unwrap();
        let mut wd = vec![0.0f32; rows * cols];
        quant::dequantize(ty, &bytes, &mut wd).unwrap();
        let forward = |x: &[f64]| -> Vec<f64> {
            let mut y = vec![0.0; n * rows];
            for i in 0..n {
                for o in 0..rows {
                    y[i * rows + o] = (0..cols)
                        .map(|c| x[i * cols + c] * wd[o * cols + c] as f64)
                        .sum();
                }
            }
            y
        };
        let x = random64(n * cols, 1.0, 10);
        let r = random64(n * rows, 1.0, 11);
        let numeric = fd_grad(&x, |x| functional(&r, &forward(x)));
        let mut dx = vec![0.0f64; n * cols];
        matmul::matmul_dyw_ref(&r, n, &w, &mut dx).unwrap();
        assert_grad(&dx, &numeric, TOL_F64, &format!("matmul dx {ty} (f64 ref)"));
        let mut dx32 = vec![0.0f32; n * cols];
        CpuBackend.matmul_dyw(&to32(&r), n, &w, &mut dx32).unwrap();
        assert_grad(
            &to64(&dx32),
            &numeric,
            TOL_F32,
            &format!("matmul dx {ty} (f32 fast)"),
        );
    }
}
