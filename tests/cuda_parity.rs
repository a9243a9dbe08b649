//! Parity of the CUDA backend with the CPU backend: every `Backend` op (and the optimizer's
//! inherent device methods) runs the same test body on both, generic over [`Backend`], and the
//! device's outputs are compared with the CPU's.
//!
//! # No device
//! Each test starts with [`device`]: where no CUDA device can be opened (no driver, no GPU) it
//! writes `skipped: no CUDA device (<reason>)` straight to the process's stderr (not through
//! `eprintln!`, which libtest captures: the line shows in plain `cargo test` output) and
//! returns. libtest has no "skipped" status, so such a test is listed as `ok` — the printed
//! line is the record that it checked nothing. This file builds only with `--features cuda`
//! (`required-features` in Cargo.toml); `scripts/test.sh` runs it.
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
//! A whole `TrainStep` on CUDA is out of scope in this version: `src/train` runs on the CPU
//! backend only; the layer test composes the same ops the step uses.

use std::io::Write;

use edgetune::backend::cpu::cross_entropy::count_targets;
use edgetune::backend::cuda::{CudaBackend, WeightsMode};
use edgetune::backend::{AttentionDims, Backend, CpuBackend, GemmDims, RopeDims};
use edgetune::gguf::GgufFile;
use edgetune::model::{LlamaConfig, LlamaWeights};
use edgetune::optim::adamw::{AdamWConfig, AdamWStep, adamw_update_f32};
use edgetune::optim::clip::global_norm;
use edgetune::optim::state8bit::{DynamicMaps, adamw_update_8bit, n_blocks};
use edgetune::quant::GgmlType;
use edgetune::quant::matmul::QuantMatrix;
use edgetune::testmodel::{self, WeightTypes};

mod common;
use common::{gaussian, random_tensor, rng};

/// The device, or `None` after printing the skip line (see the module docs).
fn device(test: &str) -> Option<CudaBackend> {
    match CudaBackend::with_weights(0, WeightsMode::Upload) {
        Ok(b) => Some(b),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "skipped: no CUDA device ({test}: {e})");
            None
        }
    }
}

fn upload<B: Backend>(b: &B, v: &[f32]) -> B::Buffer {
    b.buffer_from(v).unwrap()
}

fn download<B: Backend>(b: &B, buf: &B::Buffer) -> Vec<f32> {
    let mut out = vec![0.0; B::buffer_len(buf)];
    b.download(B::view(buf), &mut out).unwrap();
    out
}

/// Asserts `|a − b| ≤ tol · scale_i` element-wise (`scale_i` = `max(1, |b_i|)` by default).
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32, scale: Option<&[f32]>) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let mut worst = (0, 0.0f32);
    for i in 0..got.len() {
        let s = scale.map_or(want[i].abs().max(1.0), |s| s[i].max(1e-12));
        let e = (got[i] - want[i]).abs() / s;
        assert!(
            e.is_finite(),
            "{what}: non-finite at {i}: {} vs {}",
            got[i],
            want[i]
        );
        if e > worst.1 {
            worst = (i, e);
        }
    }
    assert!(
        worst.1 <= tol,
        "{what}: error {} (scaled) at {} ({} vs {}), tolerance {tol}",
        worst.1,
        worst.0,
        got[worst.0],
        want[worst.0]
    );
}

/// ‖a − b‖ / ‖b‖.
fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

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
fn rmsnorm_forward_and_backward() {
    let Some(cuda) = device("rmsnorm") else {
        return;
    };
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
fn rope_forward_and_backward() {
    let Some(cuda) = device("rope") else { return };
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
fn swiglu_and_add_assign() {
    let Some(cuda) = device("swiglu") else { return };
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
fn embedding_every_type() {
    let Some(cuda) = device("embedding") else {
        return;
    };
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
fn quantized_matmul_every_type_both_kernels() {
    let Some(cuda) = device("matmul") else { return };
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
fn attention_forward_and_backward() {
    let Some(cuda) = device("attention") else {
        return;
    };
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
fn gemm_every_transpose() {
    let Some(cuda) = device("gemm") else { return };
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
fn cross_entropy_chunks_and_ignored_targets() {
    let Some(cuda) = device("cross_entropy") else {
        return;
    };
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

#[test]
fn adamw_f32_and_8bit_match_the_cpu() {
    let Some(cuda) = device("adamw") else { return };
    let mut r = rng(9);
    let k = AdamWStep::new(&AdamWConfig::default(), 1e-3, 0.01, 5);
    let n = 5000;
    let (p0, g) = (gaussian(&mut r, n, 1.0), gaussian(&mut r, n, 0.1));
    let m0 = gaussian(&mut r, n, 0.01);
    let v0: Vec<f32> = gaussian(&mut r, n, 0.01).iter().map(|x| x * x).collect();
    // f32 state.
    let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
    adamw_update_f32(&mut p, &g, &mut m, &mut v, &k);
    let (mut pb, gb, mut mb, mut vb) = (
        upload(&cuda, &p0),
        upload(&cuda, &g),
        upload(&cuda, &m0),
        upload(&cuda, &v0),
    );
    cuda.adamw_f32(pb.view_mut(), gb.view(), mb.view_mut(), vb.view_mut(), &k)
        .unwrap();
    assert_eq!(download(&cuda, &pb), p, "adamw f32 params");
    assert_eq!(download(&cuda, &mb), m, "adamw f32 m");
    assert_eq!(download(&cuda, &vb), v, "adamw f32 v");
    // 8-bit state: run two steps from a fresh state.
    let maps = DynamicMaps::new();
    let nb = n_blocks(n);
    let (mut absmax, mut qm, mut qv) = (
        vec![0.0f32; 2 * nb],
        vec![maps.signed_zero; n],
        vec![0u8; n],
    );
    let dmaps = cuda.dynamic_maps(&maps).unwrap();
    let mut state = cuda.upload_8bit_state(&absmax, &qm, &qv).unwrap();
    let mut p = p0.clone();
    let mut pb = upload(&cuda, &p0);
    for _ in 0..2 {
        adamw_update_8bit(&mut p, &g, &mut absmax, &mut qm, &mut qv, &k, &maps);
        cuda.adamw_8bit(pb.view_mut(), gb.view(), &mut state, &dmaps, &k)
            .unwrap();
    }
    let (mut a2, mut m2, mut v2) = (vec![0.0f32; 2 * nb], vec![0u8; n], vec![0u8; n]);
    cuda.download_8bit_state(&state, &mut a2, &mut m2, &mut v2)
        .unwrap();
    assert_eq!(a2, absmax, "8-bit absmax");
    assert_eq!(m2, qm, "8-bit m codes");
    assert_eq!(v2, qv, "8-bit v codes");
    assert_eq!(download(&cuda, &pb), p, "8-bit params");
}

#[test]
fn global_norm_and_paged_adamw() {
    let Some(cuda) = device("grad_norm") else {
        return;
    };
    let mut r = rng(10);
    let sizes = [1usize, 3000, 5_000_000, 0, 17];
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| gaussian(&mut r, n, 1.0)).collect();
    let want = global_norm(&grads.iter().map(|g| g.as_slice()).collect::<Vec<_>>());
    let bufs: Vec<_> = grads.iter().map(|g| upload(&cuda, g)).collect();
    let got = cuda
        .global_norm(&bufs.iter().map(|b| b.view()).collect::<Vec<_>>())
        .unwrap();
    assert!(((got - want) / want).abs() < 1e-9, "norm {got} vs {want}");
    assert_eq!(cuda.global_norm(&[]).unwrap(), 0.0);

    // Paged AdamW over tensors of several sizes, 2 slots: equal to the direct CPU updates.
    use edgetune::backend::cuda::pages::PagedAdamW;
    let sizes = [4096usize, 100, 7000, 1];
    let k = AdamWStep::new(&AdamWConfig::default(), 1e-3, 0.0, 2);
    let params: Vec<Vec<f32>> = sizes.iter().map(|&n| gaussian(&mut r, n, 1.0)).collect();
    let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| gaussian(&mut r, n, 0.1)).collect();
    let mut states: Vec<(Vec<f32>, Vec<f32>)> = sizes
        .iter()
        .map(|&n| {
            (
                gaussian(&mut r, n, 0.01),
                gaussian(&mut r, n, 0.01).iter().map(|x| x * x).collect(),
            )
        })
        .collect();
    let (mut p_want, mut s_want) = (params.clone(), states.clone());
    for i in 0..sizes.len() {
        let (m, v) = &mut s_want[i];
        adamw_update_f32(&mut p_want[i], &grads[i], m, v, &k);
    }
    let mut pbufs: Vec<_> = params.iter().map(|p| upload(&cuda, p)).collect();
    let gbufs: Vec<_> = grads.iter().map(|g| upload(&cuda, g)).collect();
    let mut pager = PagedAdamW::new(&cuda, 7000, 2).unwrap();
    {
        let mut pv: Vec<_> = pbufs.iter_mut().map(|b| b.view_mut()).collect();
        let gv: Vec<_> = gbufs.iter().map(|b| b.view()).collect();
        let mut sv: Vec<(&mut [f32], &mut [f32])> = states
            .iter_mut()
            .map(|(m, v)| (&mut m[..], &mut v[..]))
            .collect();
        pager
            .step(&cuda, &mut pv, &gv, &mut sv, &vec![k; sizes.len()])
            .unwrap();
    }
    for i in 0..sizes.len() {
        assert_eq!(download(&cuda, &pbufs[i]), p_want[i], "paged params {i}");
        assert_eq!(states[i], s_want[i], "paged state {i}");
    }
}

// ---- one Llama layer, forward + backward, composed from Backend ops ------------------------

/// Layer 0 of the tiny model and the cross-entropy head: forward, then the backward from the
/// head's gradient down to the layer input. Returns `[loss], y, dx, dxn_attn, dhn_ffn`.
fn layer_body<'w, B: Backend>(
    b: &B,
    c: &LlamaConfig,
    w: &LlamaWeights<'w>,
    x: &[f32],
    targets: &[i32],
) -> Vec<Vec<f32>> {
    let n = targets.len();
    let (dim, qd, kvd, ffn, vocab) = (c.dim, c.q_dim(), c.kv_dim(), c.ffn, c.n_vocab);
    let l = &w.layers[0];
    let wt = |m: QuantMatrix<'w>| -> B::Weight<'w> { b.weight(m).unwrap() };
    let (wq, wk, wv, wo) = (wt(l.attn_q), wt(l.attn_k), wt(l.attn_v), wt(l.attn_output));
    let (wg, wu, wd, wout) = (wt(l.ffn_gate), wt(l.ffn_up), wt(l.ffn_down), wt(w.output));
    let (an, fnw, on) = (
        upload(b, &l.attn_norm),
        upload(b, &l.ffn_norm),
        upload(b, &w.output_norm),
    );
    let inv = upload(
        b,
        &edgetune::backend::cpu::rope::inv_freq(c.rope_dim, c.rope_base, w.rope_freqs.as_deref()),
    );
    let a = |len: usize| b.alloc(len).unwrap();
    let v = B::view;
    let vm = B::view_mut;
    let xb = upload(b, x);
    let (mut xn, mut r1, mut q, mut k, mut vv) =
        (a(n * dim), a(n), a(n * qd), a(n * kvd), a(n * kvd));
    b.rmsnorm(v(&xb), v(&an), c.rms_eps, vm(&mut xn), Some(vm(&mut r1)))
        .unwrap();
    b.matmul_xwt(v(&xn), n, &wq, vm(&mut q)).unwrap();
    b.matmul_xwt(v(&xn), n, &wk, vm(&mut k)).unwrap();
    b.matmul_xwt(v(&xn), n, &wv, vm(&mut vv)).unwrap();
    let rd = RopeDims {
        n_tokens: n,
        pos0: 0,
        n_head: c.n_head,
        head_dim: c.head_dim,
        rope_dim: c.rope_dim,
    };
    b.rope(vm(&mut q), v(&inv), rd).unwrap();
    b.rope(
        vm(&mut k),
        v(&inv),
        RopeDims {
            n_head: c.n_head_kv,
            ..rd
        },
    )
    .unwrap();
    let ad = AttentionDims {
        n_tokens: n,
        pos0: 0,
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: c.head_dim,
    };
    let (mut att, mut lse, mut h) = (a(n * qd), a(n * c.n_head), upload(b, x));
    b.attention(v(&q), v(&k), v(&vv), vm(&mut att), Some(vm(&mut lse)), ad)
        .unwrap();
    let mut o = a(n * dim);
    b.matmul_xwt(v(&att), n, &wo, vm(&mut o)).unwrap();
    b.add_assign(vm(&mut h), v(&o)).unwrap();
    let (mut hn, mut r2, mut g, mut u, mut s) =
        (a(n * dim), a(n), a(n * ffn), a(n * ffn), a(n * ffn));
    b.rmsnorm(v(&h), v(&fnw), c.rms_eps, vm(&mut hn), Some(vm(&mut r2)))
        .unwrap();
    b.matmul_xwt(v(&hn), n, &wg, vm(&mut g)).unwrap();
    b.matmul_xwt(v(&hn), n, &wu, vm(&mut u)).unwrap();
    b.swiglu(v(&g), v(&u), vm(&mut s)).unwrap();
    let (mut f, mut y) = (a(n * dim), a(n * dim));
    b.matmul_xwt(v(&s), n, &wd, vm(&mut f)).unwrap();
    b.gemm(
        GemmDims {
            m: 1,
            n: n * dim,
            k: 1,
            trans_a: false,
            trans_b: false,
        },
        1.0,
        v(&upload(b, &[1.0])),
        v(&h),
        0.0,
        vm(&mut y),
    )
    .unwrap(); // y = h (a copy through the dense GEMM)
    b.add_assign(vm(&mut y), v(&f)).unwrap();
    // Head: cross-entropy over rmsnorm(y).
    let (mut yn, mut r3, mut logits, mut dyn_) = (a(n * dim), a(n), a(8 * vocab), a(n * dim));
    b.rmsnorm(v(&y), v(&on), c.rms_eps, vm(&mut yn), Some(vm(&mut r3)))
        .unwrap();
    let scale = 1.0 / count_targets(targets) as f32;
    let loss = b
        .cross_entropy(
            v(&yn),
            &wout,
            targets,
            scale,
            8,
            vm(&mut logits),
            vm(&mut dyn_),
        )
        .unwrap();
    // Backward.
    let mut dy = a(n * dim);
    b.rmsnorm_backward(v(&y), v(&on), v(&r3), v(&dyn_), vm(&mut dy))
        .unwrap();
    let (mut ds, mut dg, mut du, mut dhn, mut t) =
        (a(n * ffn), a(n * ffn), a(n * ffn), a(n * dim), a(n * dim));
    b.matmul_dyw(v(&dy), n, &wd, vm(&mut ds)).unwrap();
    b.swiglu_backward(v(&g), v(&u), v(&ds), vm(&mut dg), vm(&mut du))
        .unwrap();
    b.matmul_dyw(v(&dg), n, &wg, vm(&mut dhn)).unwrap();
    b.matmul_dyw(v(&du), n, &wu, vm(&mut t)).unwrap();
    b.add_assign(vm(&mut dhn), v(&t)).unwrap();
    let mut dh = a(n * dim);
    b.rmsnorm_backward(v(&h), v(&fnw), v(&r2), v(&dhn), vm(&mut dh))
        .unwrap();
    b.add_assign(vm(&mut dh), v(&dy)).unwrap();
    let mut datt = a(n * qd);
    b.matmul_dyw(v(&dh), n, &wo, vm(&mut datt)).unwrap();
    let (mut dq, mut dk, mut dv) = (a(n * qd), a(n * kvd), a(n * kvd));
    b.attention_backward(
        v(&q),
        v(&k),
        v(&vv),
        v(&att),
        v(&lse),
        v(&datt),
        vm(&mut dq),
        vm(&mut dk),
        vm(&mut dv),
        ad,
    )
    .unwrap();
    b.rope_backward(vm(&mut dq), v(&inv), rd).unwrap();
    b.rope_backward(
        vm(&mut dk),
        v(&inv),
        RopeDims {
            n_head: c.n_head_kv,
            ..rd
        },
    )
    .unwrap();
    let (mut dxn, mut t2) = (a(n * dim), a(n * dim));
    b.matmul_dyw(v(&dq), n, &wq, vm(&mut dxn)).unwrap();
    b.matmul_dyw(v(&dk), n, &wk, vm(&mut t2)).unwrap();
    b.add_assign(vm(&mut dxn), v(&t2)).unwrap();
    b.matmul_dyw(v(&dv), n, &wv, vm(&mut t2)).unwrap();
    b.add_assign(vm(&mut dxn), v(&t2)).unwrap();
    let mut dx = a(n * dim);
    b.rmsnorm_backward(v(&xb), v(&an), v(&r1), v(&dxn), vm(&mut dx))
        .unwrap();
    b.add_assign(vm(&mut dx), v(&dh)).unwrap();
    vec![
        vec![loss as f32],
        download(b, &y),
        download(b, &dx),
        download(b, &dxn),
        download(b, &dhn),
    ]
}

#[test]
fn one_llama_layer_forward_and_backward() {
    let Some(cuda) = device("llama layer") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q6_K] {
        let path = dir.path().join(format!("tiny-{ty}.gguf"));
        testmodel::write_test_model(&testmodel::TINY, WeightTypes::Uniform(ty), 3, &path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let cfg = LlamaConfig::from_gguf(&file).unwrap();
        let w = LlamaWeights::from_gguf(&file, &cfg).unwrap();
        // Attach the file (as the CLI does) so weights resolve into one upload.
        let _attached = cuda.attach_weights(file.as_bytes()).unwrap();
        let n = 24; // ≥ 16: the tensor-core path on sm ≥ 8.7
        let x = gaussian(&mut rng(11), n * cfg.dim, 1.0);
        let targets: Vec<i32> = (0..n as i32)
            .map(|i| {
                if i == 3 {
                    -100
                } else {
                    (i * 53 + 7) % cfg.n_vocab as i32
                }
            })
            .collect();
        let c = layer_body(&CpuBackend, &cfg, &w, &x, &targets);
        let g = layer_body(&cuda, &cfg, &w, &x, &targets);
        assert!(
            ((g[0][0] - c[0][0]) / c[0][0]).abs() < 1e-3,
            "{ty}: loss {} vs {}",
            g[0][0],
            c[0][0]
        );
        for (i, what) in [
            "y",
            "dx",
            "dxn (attention input grad)",
            "dhn (ffn input grad)",
        ]
        .iter()
        .enumerate()
        {
            let e = rel_rms(&g[i + 1], &c[i + 1]);
            assert!(e < 1e-2, "{ty}: {what} relative RMS {e}");
        }
    }
}

#[test]
fn llama_forward_in_both_weight_modes_matches_the_cpu_model() {
    let Some(cuda) = device("llama forward") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    testmodel::write_test_model(
        &testmodel::TINY,
        WeightTypes::Uniform(GgmlType::Q4_K),
        4,
        &path,
    )
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let cpu = edgetune::model::Llama::load(&file).unwrap();
    let tokens: Vec<u32> = (0..40u32).map(|i| (i * 37 + 11) % 261).collect();
    let vocab = cpu.config().n_vocab;
    let mut want = vec![0.0f32; tokens.len() * vocab];
    let mut cache = cpu.new_cache(64).unwrap();
    cpu.forward(&mut cache, &tokens, &mut want).unwrap();
    drop(cuda);
    for mode in [WeightsMode::Upload, WeightsMode::Map] {
        let be = CudaBackend::with_weights(0, mode).unwrap();
        let gpu = edgetune::backend::cuda::llama::CudaLlama::load(&file, be).unwrap();
        let mut got = vec![0.0f32; tokens.len() * vocab];
        let mut cache = gpu.new_cache(64).unwrap();
        // Two calls: a prompt and then decoding one token at a time reuse the cache.
        gpu.forward(&mut cache, &tokens[..30], &mut got[..30 * vocab])
            .unwrap();
        for i in 30..40 {
            gpu.forward(
                &mut cache,
                &tokens[i..i + 1],
                &mut got[i * vocab..(i + 1) * vocab],
            )
            .unwrap();
        }
        let e = rel_rms(&got, &want);
        assert!(
            e < 1e-2,
            "{mode:?} (mapped: {}): logits relative RMS {e}",
            gpu.weights_mapped()
        );
    }
}

/// The layer composition itself, on the CPU alone (runs everywhere, so the body the GPU test
/// compares is known to be a correct backward before any device time): the directional
/// derivative `dx · δ` of `scale · Σ loss` matches central differences of the forward along a
/// random direction `δ`.
#[test]
fn layer_body_backward_matches_finite_differences_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    testmodel::write_test_model(
        &testmodel::TINY,
        WeightTypes::Uniform(GgmlType::Q8_0),
        3,
        &path,
    )
    .unwrap();
    let file = GgufFile::open(&path).unwrap();
    let cfg = LlamaConfig::from_gguf(&file).unwrap();
    let w = LlamaWeights::from_gguf(&file, &cfg).unwrap();
    let n = 6;
    let x = gaussian(&mut rng(12), n * cfg.dim, 1.0);
    let delta = gaussian(&mut rng(13), n * cfg.dim, 1.0);
    let targets: Vec<i32> = (0..n as i32)
        .map(|i| if i == 2 { -100 } else { i * 31 + 5 })
        .collect();
    let scale = 1.0 / count_targets(&targets) as f64;
    let out = layer_body(&CpuBackend, &cfg, &w, &x, &targets);
    let analytic: f64 = out[2]
        .iter()
        .zip(&delta)
        .map(|(g, d)| *g as f64 * *d as f64)
        .sum();
    let eps = 1e-2f32;
    let loss_at = |s: f32| {
        let xs: Vec<f32> = x.iter().zip(&delta).map(|(a, d)| a + s * d).collect();
        layer_body(&CpuBackend, &cfg, &w, &xs, &targets)[0][0] as f64 * scale
    };
    let numeric = (loss_at(eps) - loss_at(-eps)) / (2.0 * eps as f64);
    // A direction the loss actually changes along (else the check below would be vacuous).
    assert!(numeric.abs() > 1e-3, "finite differences {numeric}: flat direction");
    assert!(
        (analytic - numeric).abs() <= 0.05 * numeric.abs().max(1e-3),
        "dx·δ = {analytic}, finite differences {numeric}"
    );
}
