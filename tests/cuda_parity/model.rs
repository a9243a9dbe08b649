//! One Llama layer (forward, cross-entropy head, backward) composed from `Backend` ops on the
//! tiny test model, and the whole-model forward, CUDA against CPU: loss within 1e-3 relative,
//! activations and gradients within 1e-2 relative RMS (bf16 tensor cores). The layer body is
//! also checked on the CPU alone against finite differences, so the composition the GPU test
//! compares is a correct backward. The whole training step on CUDA (`DeviceStep`, built from
//! the same ops) is compared in `tests/cuda_parity/step.rs`. No-device skip:
//! `tests/cuda_support/mod.rs`.

use edgetune::backend::cpu::cross_entropy::count_targets;
use edgetune::backend::cuda::{CudaBackend, WeightsMode};
use edgetune::backend::{AttentionDims, Backend, CpuBackend, GemmDims, RopeDims};
use edgetune::gguf::GgufFile;
use edgetune::model::{LlamaConfig, LlamaWeights};
use edgetune::quant::GgmlType;
use edgetune::quant::matmul::QuantMatrix;
use edgetune::testmodel::{self, WeightTypes};

use crate::common::{gaussian, rng};
use crate::cuda_support::{device, download, rel_rms, upload};

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
#[ignore = "needs a CUDA device"]
fn one_llama_layer_forward_and_backward() {
    let cuda = device("llama layer");
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
#[ignore = "needs a CUDA device"]
fn llama_forward_in_both_weight_modes_matches_the_cpu_model() {
    let cuda = device("llama forward");
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
        let gpu = edgetune::infer::cuda_llama::CudaLlama::load(&file, be).unwrap();
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
    assert!(
        numeric.abs() > 1e-3,
        "finite differences {numeric}: flat direction"
    );
    assert!(
        (analytic - numeric).abs() <= 0.05 * numeric.abs().max(1e-3),
        "dx·δ = {analytic}, finite differences {numeric}"
    );
}
