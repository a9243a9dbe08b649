//! The f64 reference forward (tests/reference) checked on its own, before it judges ours:
//! hand-computed one-layer toys for the attention, RMSNorm and RoPE math (adjacent pairs,
//! `base^(−2j/d)`, division by `rope_freqs`), GQA head grouping against an equivalent model
//! with the KV heads repeated, causality, and loading test models (tied and untied).

use crate::reference::{RefLayer, RefModel, load, max_rel_diff, reference_logits};
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, Preset, TINY, WeightTypes};

fn identity(n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|i| if i / n == i % n { 1.0 } else { 0.0 })
        .collect()
}

/// One layer, one head spanning the whole model (head_dim = dim = n), identity Q/K/V/O and
/// output, one-hot embeddings (token t ↦ e_t), unit norms, eps 0, an FFN that adds nothing.
fn toy(n: usize, rope_base: f64, rope_freqs: Option<Vec<f64>>) -> RefModel {
    RefModel {
        dim: n,
        n_head: 1,
        n_head_kv: 1,
        head_dim: n,
        ffn: 1,
        n_vocab: n,
        rope_base,
        rms_eps: 0.0,
        token_embd: identity(n),
        layers: vec![RefLayer {
            attn_norm: vec![1.0; n],
            wq: identity(n),
            wk: identity(n),
            wv: identity(n),
            wo: identity(n),
            ffn_norm: vec![1.0; n],
            w_gate: vec![0.0; n],
            w_up: vec![0.0; n],
            w_down: vec![0.0; n],
        }],
        output_norm: vec![1.0; n],
        output: Some(identity(n)),
        rope_freqs,
    }
}

/// Hand computation for tokens [a, b] where (a, b) = (2j, 2j+1) is RoPE pair j and the pair's
/// angle at position 1 is 1 radian. With c = √n (RMSNorm of a one-hot), at position 0:
/// q = k = v = c·e_a, attention returns v, h0 = (1 + c)·e_a, logits = √n·e_a. At position 1:
/// q1 = k1 = c·(−sin 1·e_a + cos 1·e_b), scores s0 = q1·k0/√n = −c² sin 1/√n and
/// s1 = c²/√n, weights w = softmax(s), h1 = c·w0·e_a + (1 + c·w1)·e_b, logits = h1/rms(h1).
fn expected_toy_logits(n: usize, a: usize, b: usize) -> Vec<Vec<f64>> {
    let c = (n as f64).sqrt();
    let s0 = -c * c * 1f64.sin() / c;
    let s1 = c * c / c;
    let (w0, w1) = (
        s0.exp() / (s0.exp() + s1.exp()),
        s1.exp() / (s0.exp() + s1.exp()),
    );
    let mut first = vec![0.0; n];
    first[a] = c;
    let (ha, hb) = (c * w0, 1.0 + c * w1);
    let rms = ((ha * ha + hb * hb) / n as f64).sqrt();
    let mut second = vec![0.0; n];
    second[a] = ha / rms;
    second[b] = hb / rms;
    vec![first, second]
}

fn assert_close(got: &[Vec<f64>], want: &[Vec<f64>], tol: f64) {
    for (p, (g, w)) in got.iter().zip(want).enumerate() {
        for (i, (x, y)) in g.iter().zip(w).enumerate() {
            assert!((x - y).abs() <= tol, "position {p}, logit {i}: {x} vs {y}");
        }
    }
}

#[test]
fn one_layer_toy_with_a_single_rope_pair() {
    // dim 2: pair 0, theta = pos·base⁰ = pos whatever the base.
    let m = toy(2, 10_000.0, None);
    assert_close(
        &reference_logits(&m, &[0, 1]),
        &expected_toy_logits(2, 0, 1),
        1e-12,
    );
}

#[test]
fn rope_uses_adjacent_pairs_the_base_power_and_divides_by_rope_freqs() {
    // dim 4, tokens on pair 1 = (2, 3): theta = pos · 100^(−2/4) / 0.1 = pos · 1 radian.
    // Rotating (i, i + d/2) instead, or multiplying by rope_freqs, gives other numbers.
    let m = toy(4, 100.0, Some(vec![1.0, 0.1]));
    let got = reference_logits(&m, &[2, 3]);
    assert_close(&got, &expected_toy_logits(4, 2, 3), 1e-12);
    let unscaled = toy(4, 100.0, None);
    assert!(max_rel_diff(&reference_logits(&unscaled, &[2, 3]), &got) > 1e-2);
}

/// A small random model (values from a fixed LCG) with `n_head_kv` KV heads.
fn random_model(seed: u64, n_head: usize, n_head_kv: usize) -> RefModel {
    let mut state = seed;
    let mut next = move |n: usize, scale: f64| -> Vec<f64> {
        (0..n)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0 * scale
            })
            .collect()
    };
    let (dim, hd, ffn, vocab) = (16, 4, 24, 11);
    let kv = n_head_kv * hd;
    let layer = |next: &mut dyn FnMut(usize, f64) -> Vec<f64>| RefLayer {
        attn_norm: next(dim, 0.2).iter().map(|v| 1.0 + v).collect(),
        wq: next(dim * dim, 0.5),
        wk: next(kv * dim, 0.5),
        wv: next(kv * dim, 0.5),
        wo: next(dim * dim, 0.5),
        ffn_norm: next(dim, 0.2).iter().map(|v| 1.0 + v).collect(),
        w_gate: next(ffn * dim, 0.5),
        w_up: next(ffn * dim, 0.5),
        w_down: next(dim * ffn, 0.5),
    };
    let layers = vec![layer(&mut next), layer(&mut next)];
    RefModel {
        dim,
        n_head,
        n_head_kv,
        head_dim: hd,
        ffn,
        n_vocab: vocab,
        rope_base: 10_000.0,
        rms_eps: 1e-5,
        token_embd: next(vocab * dim, 1.0),
        layers,
        output_norm: vec![1.0; dim],
        output: None,
        rope_freqs: Some(vec![1.0, 2.0]),
    }
}

/// GQA: query head h reads KV head h / (n_head / n_head_kv). The same model with each KV head
/// repeated for its group (plain multi-head attention) must give the same logits; grouping
/// heads the other way (h mod n_head_kv) would not.
#[test]
fn gqa_equals_multi_head_attention_with_repeated_kv_heads() {
    let gqa = random_model(3, 4, 2);
    let mut mha = gqa.clone();
    mha.n_head_kv = 4;
    let hd = gqa.head_dim;
    let repeat = |w: &[f64]| -> Vec<f64> {
        // Rows of KV head g are rows g·hd..(g+1)·hd; heads 0, 1 read KV head 0, heads 2, 3 KV 1.
        let rows_of = |g: usize| w[g * hd * gqa.dim..(g + 1) * hd * gqa.dim].to_vec();
        [0, 0, 1, 1].iter().flat_map(|&g| rows_of(g)).collect()
    };
    for layer in &mut mha.layers {
        layer.wk = repeat(&layer.wk);
        layer.wv = repeat(&layer.wv);
    }
    let tokens = [1, 7, 3, 3, 10, 0, 5];
    let a = reference_logits(&gqa, &tokens);
    assert!(max_rel_diff(&a, &reference_logits(&mha, &tokens)) < 1e-12);
    let mut interleaved = mha.clone();
    for (layer, orig) in interleaved.layers.iter_mut().zip(&gqa.layers) {
        let rows_of = |w: &[f64], g: usize| w[g * hd * gqa.dim..(g + 1) * hd * gqa.dim].to_vec();
        layer.wk = [0, 1, 0, 1]
            .iter()
            .flat_map(|&g| rows_of(&orig.wk, g))
            .collect();
        layer.wv = [0, 1, 0, 1]
            .iter()
            .flat_map(|&g| rows_of(&orig.wv, g))
            .collect();
    }
    assert!(max_rel_diff(&a, &reference_logits(&interleaved, &tokens)) > 1e-3);
}

#[test]
fn changing_a_later_token_leaves_earlier_logits_unchanged() {
    let m = random_model(9, 4, 2);
    let a = reference_logits(&m, &[4, 2, 8, 1, 6]);
    let b = reference_logits(&m, &[4, 2, 8, 9, 6]);
    assert_eq!(a[..3], b[..3], "positions before the change");
    assert_ne!(a[3], b[3]);
    assert_ne!(a[4], b[4], "later positions see the change");
}

#[test]
fn loads_test_models_tied_and_untied() {
    let dir = tempfile::tempdir().unwrap();
    let untied = dir.path().join("untied.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::Uniform(GgmlType::F32), 4, &untied).unwrap();
    let m = load(&untied);
    assert_eq!((m.dim, m.n_head, m.n_head_kv, m.head_dim), (256, 4, 2, 64));
    assert_eq!((m.ffn, m.n_vocab, m.layers.len()), (512, TINY.n_vocab, 2));
    assert_eq!(m.rope_freqs.as_ref().map(Vec::len), Some(32));
    assert!(m.output.is_some());
    let tokens: Vec<u32> = (0..12).map(|i| (i * 37 % 261) as u32).collect();
    let logits = reference_logits(&m, &tokens);
    assert!(logits.iter().flatten().all(|v| v.is_finite()));

    let tied_preset = Preset {
        tied_output: true,
        ..TINY
    };
    let tied = dir.path().join("tied.gguf");
    let f32s = WeightTypes::Uniform(GgmlType::F32);
    testmodel::write_test_model(&tied_preset, f32s, 4, &tied).unwrap();
    let t = load(&tied);
    assert!(t.output.is_none());
    // Tied output = token_embd: the logit of token v is (normed hidden) · embedding row v.
    let mut with_copy = t.clone();
    with_copy.output = Some(t.token_embd.clone());
    assert_eq!(
        reference_logits(&t, &tokens),
        reference_logits(&with_copy, &tokens)
    );

    // Q8_0 weights are the F32 weights plus < 1 % noise: the logits move, but little.
    let q8 = dir.path().join("q8.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::Uniform(GgmlType::Q8_0), 4, &q8).unwrap();
    let d = max_rel_diff(&reference_logits(&load(&q8), &tokens), &logits);
    assert!(d > 0.0 && d < 0.05, "Q8_0 vs F32 reference: {d}");
}
