//! Parity of the CUDA backend with the CPU backend: every `Backend` op (and the optimizer's
//! inherent device methods) runs the same test body on both, generic over [`Backend`], and the
//! device's outputs are compared with the CPU's.
//!
//! # No device
//! Each test that needs the GPU is `#[ignore = "needs a CUDA device"]` and opens it with
//! `cuda_support::device`, which fails the test where no device can be opened: a plain `cargo
//! test` lists these as ignored, `cargo test --features cuda -- --include-ignored` runs them
//! (scripts/cuda-device-check.sh). This file builds only with `--features cuda`
//! (`required-features` in Cargo.toml).
//!
//! # Tolerances (relative; why)
//! - f32 element-wise and row ops (rmsnorm, rope, swiglu, add_assign, embedding): 1e-5 of
//!   `max(1, |cpu|)` — same formulas in f32, differing only in `expf`/`sincosf` ulps and the
//!   order of a row's sum;
//! - attention (f32 SIMT, online softmax in another tile order): 1e-4;
//! - quantized matmul, f32 `_simple` kernels (n < 16, or the sm72 build): 2e-4 of the row's
//!   `Σ|x|·|ŵ|`; bf16 tensor-core `_mma` kernels (n ≥ 16 on sm ≥ 8.7): 1e-2 of `Σ|x|·|ŵ|`
//!   (both operands rounded to bf16, 2⁻⁸ each, kernels/README.md);
//! - cuBLAS SGEMM (FP32 math mode): 1e-5 of `Σ|a|·|b|`;
//! - cross-entropy: loss 1e-3 relative, `dh` 1e-2 relative RMS (the products may be bf16);
//! - AdamW f32: bit-identical (the kernel avoids FMA contraction, kernels/README.md); 8-bit
//!   AdamW: codes and absmax identical, params bit-identical;
//! - global grad norm (f64 partial sums in another order): 1e-9 relative;
//! - one Llama layer forward + backward + cross-entropy head on the tiny model: loss 1e-3
//!   relative, every gradient 1e-2 relative RMS (the bound for bf16 tensor cores).
//!
//! This file holds the `Backend` ops; `optim.rs` the optimizer methods,
//! `model.rs` the Llama layer and the whole forward. A whole `TrainStep` on CUDA is
//! out of scope in this version: `crates/edgetune-train/src/train` runs on the CPU backend only; the layer test
//! composes the same ops the step uses.

use edgetune::backend::cpu::cross_entropy::count_targets;
use edgetune::backend::{AttentionDims, Backend, CpuBackend, GemmDims, RopeDims};
use edgetune::quant::GgmlType;
use edgetune::quant::matmul::QuantMatrix;

use crate::common::{gaussian, random_tensor, rng};
use crate::cuda_support::{assert_close, device, download, rel_rms, upload};

// ---- op bodies, generic over the backend ----------------------------------------------------

fn rmsnorm_body<B: Backend>(b: &B, x: &[f32], w: &[f32], dy: &[f32]) -> Vec<Vec<f32>> {
    let n = x.len() / w.len();
    let (xb, wb, dyb) = (upload(b, x), upload(b, w), upload(b, dy));
    let (mut y, mut rstd, mut dx) = (
        b.alloc(x.len()).unwrap(),
        b.alloc(n).unwrap(),
        b.alloc(x.len()).unwrap(),
    );
    b.rmsnorm(
        B::view(&xb),
        B::view(&wb),
        1e-5,
        B::view_mut(&mut y),
        Some(B::view_mut(&mut rstd)),
    )
    .unwrap();
    b.rmsnorm_backward(
        B::view(&xb),
        B::view(&wb),
        B::view(&rstd),
        B::view(&dyb),
        B::view_mut(&mut dx),
    )
    .unwrap();
    vec![download(b, &y), download(b, &rstd), download(b, &dx)]
}

#[test]
#[ignore = "needs a CUDA device"]
fn rmsnorm_forward_and_backward() {
    let cuda = device("rmsnorm");
    let mut r = rng(1);
    for (n, dim) in [(1, 256), (7, 2048), (3, 48)] {
        let (x, w, dy) = (
            gaussian(&mut r, n * dim, 1.0),
            gaussian(&mut r, dim, 1.0),
            gaussian(&mut r, n * dim, 1.0),
        );
        let (c, g) = (
            rmsnorm_body(&CpuBackend, &x, &w, &dy),
            rmsnorm_body(&cuda, &x, &w, &dy),
        );
        for (i, what) in ["y", "rstd", "dx"].iter().enumerate() {
            assert_close(
                &format!("rmsnorm {what} n={n} dim={dim}"),
                &g[i],
                &c[i],
                1e-5,
                None,
            );
        }
    }
}

fn rope_body<B: Backend>(b: &B, x: &[f32], inv: &[f32], d: RopeDims) -> Vec<Vec<f32>> {
    let (mut xb, mut yb, ib) = (upload(b, x), upload(b, x), upload(b, inv));
    b.rope(B::view_mut(&mut xb), B::view(&ib), d).unwrap();
    b.rope_backward(B::view_mut(&mut yb), B::view(&ib), d)
        .unwrap();
    vec![download(b, &xb), download(b, &yb)]
}

#[test]
#[ignore = "needs a CUDA device"]
fn rope_forward_and_backward() {
    let cuda = device("rope");
    let mut r = rng(2);
    for (rope_dim, pos0) in [(64, 0), (32, 37), (64, 1000)] {
        let d = RopeDims {
            n_tokens: 5,
            pos0,
            n_head: 4,
            head_dim: 64,
            rope_dim,
        };
        let inv = edgetune::backend::cpu::rope::inv_freq(rope_dim, 500000.0, None);
        let x = gaussian(&mut r, 5 * 4 * 64, 1.0);
        let (c, g) = (
            rope_body(&CpuBackend, &x, &inv, d),
            rope_body(&cuda, &x, &inv, d),
        );
        assert_close(&format!("rope {d:?}"), &g[0], &c[0], 1e-5, None);
        assert_close(&format!("rope_backward {d:?}"), &g[1], &c[1], 1e-5, None);
    }
}

fn swiglu_body<B: Backend>(b: &B, gate: &[f32], up: &[f32], dh: &[f32]) -> Vec<Vec<f32>> {
    let n = gate.len();
    let (gb, ub, db) = (upload(b, gate), upload(b, up), upload(b, dh));
    let (mut out, mut dg, mut du) = (
        b.alloc(n).unwrap(),
        b.alloc(n).unwrap(),
        b.alloc(n).unwrap(),
    );
    b.swiglu(B::view(&gb), B::view(&ub), B::view_mut(&mut out))
        .unwrap();
    b.swiglu_backward(
        B::view(&gb),
        B::view(&ub),
        B::view(&db),
        B::view_mut(&mut dg),
        B::view_mut(&mut du),
    )
    .unwrap();
    // The residual add on the same data.
    b.add_assign(B::view_mut(&mut out), B::view(&ub)).unwrap();
    vec![download(b, &out), download(b, &dg), download(b, &du)]
}

#[test]
#[ignore = "needs a CUDA device"]
fn swiglu_and_add_assign() {
    let cuda = device("swiglu");
    let mut r = rng(3);
    for n in [1, 255, 70_001] {
        let (g, u, d) = (
            gaussian(&mut r, n, 4.0),
            gaussian(&mut r, n, 1.0),
            gaussian(&mut r, n, 1.0),
        );
        let (c, k) = (
            swiglu_body(&CpuBackend, &g, &u, &d),
            swiglu_body(&cuda, &g, &u, &d),
        );
        for (i, what) in ["swiglu+add", "dgate", "dup"].iter().enumerate() {
            assert_close(&format!("{what} n={n}"), &k[i], &c[i], 1e-5, None);
        }
    }
}

const TYPES: [GgmlType; 9] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
];

fn embedding_body<B: Backend>(b: &B, m: QuantMatrix<'_>, tokens: &[u32]) -> Vec<f32> {
    let w = b.weight(m).unwrap();
    let mut out = b.alloc(tokens.len() * m.cols).unwrap();
    b.embedding(&w, tokens, B::view_mut(&mut out)).unwrap();
    assert!(
        b.embedding(&w, &[m.rows as u32], B::view_mut(&mut out))
            .is_err()
    );
    download(b, &out)
}

#[test]
#[ignore = "needs a CUDA device"]
fn embedding_every_type() {
    let cuda = device("embedding");
    let mut r = rng(4);
    let (rows, cols) = (50, 256);
    for ty in TYPES {
        let bytes = random_tensor(ty, rows * cols, &mut r);
        let m = QuantMatrix::new(ty, rows, cols, &bytes).unwrap();
        let tokens = [0u32, 49, 7, 7, 23];
        let (c, g) = (
            embedding_body(&CpuBackend, m, &tokens),
            embedding_body(&cuda, m, &tokens),
        );
        assert_close(&format!("embedding {ty}"), &g, &c, 1e-6, None);
    }
}

/// `Σ_k |x[i, k]|·|ŵ[r, k]|` per output: the scale of a product's rounding error.
fn abs_products(x: &[f32], n: usize, m: &QuantMatrix<'_>, forward: bool) -> Vec<f32> {
    let deq = m.ty.traits().dequantize_ref;
    let mut w = vec![0.0f32; m.rows * m.cols];
    for r in 0..m.rows {
        deq(m.row(r), &mut w[r * m.cols..(r + 1) * m.cols]);
    }
    let (inner, outer) = if forward {
        (m.cols, m.rows)
    } else {
        (m.rows, m.cols)
    };
    let mut s = vec![0.0f32; n * outer];
    for i in 0..n {
        for o in 0..outer {
            s[i * outer + o] = (0..inner)
                .map(|k| {
                    let wv = if forward {
                        w[o * m.cols + k]
                    } else {
                        w[k * m.cols + o]
                    };
                    (x[i * inner + k] * wv).abs()
                })
                .sum();
        }
    }
    s
}

fn matmul_body<B: Backend>(
    b: &B,
    m: QuantMatrix<'_>,
    x: &[f32],
    dy: &[f32],
    n: usize,
) -> Vec<Vec<f32>> {
    let w = b.weight(m).unwrap();
    let (xb, dyb) = (upload(b, x), upload(b, dy));
    let (mut y, mut dx) = (b.alloc(n * m.rows).unwrap(), b.alloc(n * m.cols).unwrap());
    b.matmul_xwt(B::view(&xb), n, &w, B::view_mut(&mut y))
        .unwrap();
    b.matmul_dyw(B::view(&dyb), n, &w, B::view_mut(&mut dx))
        .unwrap();
    vec![download(b, &y), download(b, &dx)]
}

#[test]
#[ignore = "needs a CUDA device"]
fn quantized_matmul_every_type_both_kernels() {
    let cuda = device("matmul");
    let mut r = rng(5);
    let (rows, cols) = (80, 512);
    for ty in TYPES {
        let bytes = random_tensor(ty, rows * cols, &mut r);
        let m = QuantMatrix::new(ty, rows, cols, &bytes).unwrap();
        // n < 16: f32 kernels; n ≥ 16: tensor cores where the build has them.
        for n in [1, 5, 16, 70] {
            let x = gaussian(&mut r, n * cols, 1.0);
            let dy = gaussian(&mut r, n * rows, 1.0);
            let (c, g) = (
                matmul_body(&CpuBackend, m, &x, &dy, n),
                matmul_body(&cuda, m, &x, &dy, n),
            );
            let tol = if n >= 16 && cuda.target().has_mma() {
                1e-2
            } else {
                2e-4
            };
            let sy = abs_products(&x, n, &m, true);
            let sx = abs_products(&dy, n, &m, false);
            assert_close(&format!("x·Wᵀ {ty} n={n}"), &g[0], &c[0], tol, Some(&sy));
            assert_close(&format!("dy·W {ty} n={n}"), &g[1], &c[1], tol, Some(&sx));
        }
    }
}

fn attention_body<B: Backend>(
    b: &B,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    d: AttentionDims,
) -> Vec<Vec<f32>> {
    let (qb, kb, vb, db) = (upload(b, q), upload(b, k), upload(b, v), upload(b, dout));
    let mut out = b.alloc(q.len()).unwrap();
    let mut lse = b.alloc(d.n_tokens * d.n_head).unwrap();
    b.attention(
        B::view(&qb),
        B::view(&kb),
        B::view(&vb),
        B::view_mut(&mut out),
        Some(B::view_mut(&mut lse)),
        d,
    )
    .unwrap();
    let (mut dq, mut dk, mut dv) = (
        b.alloc(q.len()).unwrap(),
        b.alloc(k.len()).unwrap(),
        b.alloc(v.len()).unwrap(),
    );
    b.attention_backward(
        B::view(&qb),
        B::view(&kb),
        B::view(&vb),
        B::view(&out),
        B::view(&lse),
        B::view(&db),
        B::view_mut(&mut dq),
        B::view_mut(&mut dk),
        B::view_mut(&mut dv),
        d,
    )
    .unwrap();
    vec![
        download(b, &out),
        download(b, &lse),
        download(b, &dq),
        download(b, &dk),
        download(b, &dv),
    ]
}

#[test]
#[ignore = "needs a CUDA device"]
fn attention_forward_and_backward() {
    let cuda = device("attention");
    let mut r = rng(6);
    for (n_tokens, pos0, n_head, n_head_kv, head_dim) in [
        (1, 0, 4, 2, 64),
        (9, 3, 4, 2, 64),
        (40, 0, 8, 2, 32),
        (5, 70, 2, 1, 128),
        (3, 1, 2, 2, 200),
    ] {
        let d = AttentionDims {
            n_tokens,
            pos0,
            n_head,
            n_head_kv,
            head_dim,
        };
        let kv = pos0 + n_tokens;
        let q = gaussian(&mut r, n_tokens * n_head * head_dim, 1.0);
        let k = gaussian(&mut r, kv * n_head_kv * head_dim, 1.0);
        let v = gaussian(&mut r, kv * n_head_kv * head_dim, 1.0);
        let dout = gaussian(&mut r, q.len(), 1.0);
        let (c, g) = (
            attention_body(&CpuBackend, &q, &k, &v, &dout, d),
            attention_body(&cuda, &q, &k, &v, &dout, d),
        );
        for (i, what) in ["out", "lse", "dq", "dk", "dv"].iter().enumerate() {
            assert_close(&format!("attention {what} {d:?}"), &g[i], &c[i], 1e-4, None);
        }
    }
}

fn gemm_body<B: Backend>(
    b: &B,
    d: GemmDims,
    a: &[f32],
    bm: &[f32],
    c0: &[f32],
    beta: f32,
) -> Vec<f32> {
    let (ab, bb) = (upload(b, a), upload(b, bm));
    let mut cb = upload(b, c0);
    b.gemm(
        d,
        0.75,
        B::view(&ab),
        B::view(&bb),
        beta,
        B::view_mut(&mut cb),
    )
    .unwrap();
    download(b, &cb)
}

#[test]
#[ignore = "needs a CUDA device"]
fn gemm_every_transpose() {
    let cuda = device("gemm");
    let mut r = rng(7);
    for (m, n, k) in [(8, 512, 256), (512, 8, 256), (3, 5, 1), (16, 16, 700)] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let d = GemmDims {
                m,
                n,
                k,
                trans_a,
                trans_b,
            };
            let (a, bm, c0) = (
                gaussian(&mut r, m * k, 1.0),
                gaussian(&mut r, k * n, 1.0),
                gaussian(&mut r, m * n, 1.0),
            );
            for beta in [0.0, 1.0] {
                let (c, g) = (
                    gemm_body(&CpuBackend, d, &a, &bm, &c0, beta),
                    gemm_body(&cuda, d, &a, &bm, &c0, beta),
                );
                // Scale: Σ|a||b| ≤ k · max|a| · max|b| per output, plus |β·c|.
                let s = vec![k as f32 * 4.0 + 4.0; m * n];
                assert_close(&format!("gemm {d:?} beta={beta}"), &g, &c, 1e-5, Some(&s));
            }
        }
    }
}

fn ce_body<B: Backend>(
    b: &B,
    m: QuantMatrix<'_>,
    h: &[f32],
    targets: &[i32],
    chunk: usize,
) -> (f64, Vec<f32>) {
    let w = b.weight(m).unwrap();
    let hb = upload(b, h);
    let (mut logits, mut dh) = (b.alloc(chunk * m.rows).unwrap(), b.alloc(h.len()).unwrap());
    let scale = 1.0 / count_targets(targets).max(1) as f32;
    let loss = b
        .cross_entropy(
            B::view(&hb),
            &w,
            targets,
            scale,
            chunk,
            B::view_mut(&mut logits),
            B::view_mut(&mut dh),
        )
        .unwrap();
    (loss, download(b, &dh))
}

#[test]
#[ignore = "needs a CUDA device"]
fn cross_entropy_chunks_and_ignored_targets() {
    let cuda = device("cross_entropy");
    let mut r = rng(8);
    let (vocab, dim, n) = (300, 256, 40);
    for ty in [GgmlType::F32, GgmlType::Q8_0, GgmlType::Q6_K] {
        let bytes = random_tensor(ty, vocab * dim, &mut r);
        let m = QuantMatrix::new(ty, vocab, dim, &bytes).unwrap();
        let h = gaussian(&mut r, n * dim, 1.0);
        // Tokens 8..16 ignored (a whole chunk of 8 when chunk = 8).
        let targets: Vec<i32> = (0..n as i32)
            .map(|i| {
                if (8..16).contains(&i) {
                    -100
                } else {
                    (i * 37) % vocab as i32
                }
            })
            .collect();
        for chunk in [8, 32] {
            let (lc, dc) = ce_body(&CpuBackend, m, &h, &targets, chunk);
            let (lg, dg) = ce_body(&cuda, m, &h, &targets, chunk);
            assert!(
                ((lg - lc) / lc).abs() < 1e-3,
                "{ty} chunk {chunk}: loss {lg} vs {lc}"
            );
            assert!(
                rel_rms(&dg, &dc) < 1e-2,
                "{ty} chunk {chunk}: dh rel rms {}",
                rel_rms(&dg, &dc)
            );
            assert!(
                dg[8 * dim..16 * dim].iter().all(|&v| v == 0.0),
                "ignored rows get no gradient"
            );
        }
    }
}
