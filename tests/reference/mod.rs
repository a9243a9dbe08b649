//! An independent, slow f64 Llama forward written from the Llama architecture's definition alone,
//! sharing no code with `src/` beyond reading the file: the yardstick for our forward.
//!
//! [`load`] reads a GGUF with `edgetune::gguf` and dequantizes every tensor with the scalar
//! `dequantize_ref` of its type (checked bit-exact against gguf-py elsewhere), widening to f64.
//! [`reference_logits`] is one plain function: no tiling, no caching, no cleverness.
#![allow(dead_code)]

use std::path::Path;

use edgetune::gguf::GgufFile;

/// One transformer block's weights, dequantized. Linear weights are `out` rows of `in`
/// contiguous values (GGUF dims `[in, out]` in ne order): `y[o] = Σ_i w[o·in + i]·x[i]`.
#[derive(Clone, Debug)]
pub struct RefLayer {
    pub attn_norm: Vec<f64>,
    /// `[n_head·head_dim rows][dim]`
    pub wq: Vec<f64>,
    /// `[n_head_kv·head_dim rows][dim]`
    pub wk: Vec<f64>,
    pub wv: Vec<f64>,
    /// `[dim rows][n_head·head_dim]`
    pub wo: Vec<f64>,
    pub ffn_norm: Vec<f64>,
    /// `[ffn rows][dim]`
    pub w_gate: Vec<f64>,
    pub w_up: Vec<f64>,
    /// `[dim rows][ffn]`
    pub w_down: Vec<f64>,
}

/// A Llama model with every weight in f64.
#[derive(Clone, Debug)]
pub struct RefModel {
    pub dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub n_vocab: usize,
    pub rope_base: f64,
    pub rms_eps: f64,
    /// `[n_vocab rows][dim]`
    pub token_embd: Vec<f64>,
    pub layers: Vec<RefLayer>,
    pub output_norm: Vec<f64>,
    /// `[n_vocab rows][dim]`; `None` when tied to `token_embd`.
    pub output: Option<Vec<f64>>,
    /// Per-pair frequency divisors (`rope_freqs.weight`, `head_dim/2`), if present.
    pub rope_freqs: Option<Vec<f64>>,
}

/// Reads `path` and dequantizes every tensor to f64.
pub fn load(path: &Path) -> RefModel {
    let file = GgufFile::open(path).expect("open GGUF");
    let tensor = |name: &str| -> Option<Vec<f64>> {
        let info = file.tensor(name)?;
        let mut values = vec![0f32; info.n_elements as usize];
        (info.ty.traits().dequantize_ref)(file.tensor_data(info), &mut values);
        Some(values.into_iter().map(f64::from).collect())
    };
    let must = |name: &str| tensor(name).unwrap_or_else(|| panic!("missing tensor {name}"));
    let u = |key: &str| file.u32(key).expect(key) as usize;
    let dim = u("llama.embedding_length");
    let n_head = u("llama.attention.head_count");
    let n_layer = u("llama.block_count");
    let token_embd = must("token_embd.weight");
    RefModel {
        dim,
        n_head,
        n_head_kv: u("llama.attention.head_count_kv"),
        head_dim: dim / n_head,
        ffn: u("llama.feed_forward_length"),
        n_vocab: token_embd.len() / dim,
        rope_base: f64::from(file.f32("llama.rope.freq_base").expect("rope base")),
        rms_eps: f64::from(
            file.f32("llama.attention.layer_norm_rms_epsilon")
                .expect("eps"),
        ),
        token_embd,
        layers: (0..n_layer)
            .map(|l| {
                let w = |t: &str| must(&format!("blk.{l}.{t}.weight"));
                RefLayer {
                    attn_norm: w("attn_norm"),
                    wq: w("attn_q"),
                    wk: w("attn_k"),
                    wv: w("attn_v"),
                    wo: w("attn_output"),
                    ffn_norm: w("ffn_norm"),
                    w_gate: w("ffn_gate"),
                    w_up: w("ffn_up"),
                    w_down: w("ffn_down"),
                }
            })
            .collect(),
        output_norm: must("output_norm.weight"),
        output: tensor("output.weight"),
        rope_freqs: tensor("rope_freqs.weight"),
    }
}

/// Logits `[tokens.len()][n_vocab]` of the sequence `tokens` at positions 0, 1, 2, …
pub fn reference_logits(m: &RefModel, tokens: &[u32]) -> Vec<Vec<f64>> {
    let (dim, hd) = (m.dim, m.head_dim);
    // y = W·x for W stored as `out` rows of `x.len()` values.
    let linear = |w: &[f64], x: &[f64]| -> Vec<f64> {
        w.chunks_exact(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    };
    // RMSNorm: x / sqrt(mean(x²) + eps) · weight.
    let rms_norm = |x: &[f64], weight: &[f64]| -> Vec<f64> {
        let mean_sq = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (mean_sq + m.rms_eps).sqrt();
        x.iter().zip(weight).map(|(v, w)| v * inv * w).collect()
    };
    // RoPE on adjacent pairs (2j, 2j+1) within each head of `v`, at position `pos`:
    // theta_j = pos · base^(−2j/head_dim) / rope_freqs[j].
    let rope = |v: &mut [f64], pos: usize| {
        for head in v.chunks_exact_mut(hd) {
            for j in 0..hd / 2 {
                let divisor = m.rope_freqs.as_ref().map_or(1.0, |f| f[j]);
                let theta = pos as f64 * m.rope_base.powf(-2.0 * j as f64 / hd as f64) / divisor;
                let (sin, cos) = theta.sin_cos();
                let (a, b) = (head[2 * j], head[2 * j + 1]);
                head[2 * j] = a * cos - b * sin;
                head[2 * j + 1] = a * sin + b * cos;
            }
        }
    };
    let silu = |x: f64| x / (1.0 + (-x).exp());

    // The residual stream, one row per position: the embedding rows of the tokens.
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| m.token_embd[t as usize * dim..(t as usize + 1) * dim].to_vec())
        .collect();
    for layer in &m.layers {
        // Attention: Q, K, V of every position (RoPE on Q and K), then causal GQA.
        let mut q = Vec::new();
        let mut k = Vec::new();
        let mut v = Vec::new();
        for (pos, row) in x.iter().enumerate() {
            let h = rms_norm(row, &layer.attn_norm);
            let (mut qp, mut kp) = (linear(&layer.wq, &h), linear(&layer.wk, &h));
            rope(&mut qp, pos);
            rope(&mut kp, pos);
            q.push(qp);
            k.push(kp);
            v.push(linear(&layer.wv, &h));
        }
        let group = m.n_head / m.n_head_kv;
        for (pos, row) in x.iter_mut().enumerate() {
            let mut heads_out = vec![0.0; m.n_head * hd];
            for head in 0..m.n_head {
                let kv_head = head / group;
                let qh = &q[pos][head * hd..(head + 1) * hd];
                // Scores against positions 0..=pos only (causal), scaled by 1/sqrt(head_dim).
                let scores: Vec<f64> = (0..=pos)
                    .map(|s| {
                        let ks = &k[s][kv_head * hd..(kv_head + 1) * hd];
                        qh.iter().zip(ks).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = exps.iter().sum();
                for (s, e) in exps.iter().enumerate() {
                    let vs = &v[s][kv_head * hd..(kv_head + 1) * hd];
                    for (o, vv) in heads_out[head * hd..(head + 1) * hd].iter_mut().zip(vs) {
                        *o += e / total * vv;
                    }
                }
            }
            for (r, a) in row.iter_mut().zip(linear(&layer.wo, &heads_out)) {
                *r += a;
            }
        }
        // SwiGLU feed-forward: down(silu(gate(h)) · up(h)), added to the residual.
        for row in x.iter_mut() {
            let h = rms_norm(row, &layer.ffn_norm);
            let gate = linear(&layer.w_gate, &h);
            let up = linear(&layer.w_up, &h);
            let act: Vec<f64> = gate.iter().zip(&up).map(|(g, u)| silu(*g) * u).collect();
            for (r, d) in row.iter_mut().zip(linear(&layer.w_down, &act)) {
                *r += d;
            }
        }
    }
    let output = m.output.as_deref().unwrap_or(&m.token_embd);
    x.iter()
        .map(|row| linear(output, &rms_norm(row, &m.output_norm)))
        .collect()
}

/// max |a − b| over all entries, divided by max |b| (the criterion of the comparisons).
pub fn max_rel_diff(ours: &[Vec<f64>], reference: &[Vec<f64>]) -> f64 {
    assert_eq!(ours.len(), reference.len());
    let mut diff = 0f64;
    let mut scale = 0f64;
    for (a, b) in ours.iter().zip(reference) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            diff = diff.max((x - y).abs());
            scale = scale.max(y.abs());
        }
    }
    diff / scale
}
