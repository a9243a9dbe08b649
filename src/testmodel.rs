//! Seeded random Llama-architecture GGUF files for tests, demos and benchmarks.
//!
//! The weights are random (not trained): these files exercise the file format, the kernels and
//! the memory plan with real shapes and real per-tensor type mixes (`q4_k_m` mixes Q4_K and Q6_K
//! the way llama.cpp's Q4_K_M does). Tensors are generated and written one at a time, so the
//! writer never holds a whole model.

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::gguf::{Array, GgufWriter, Value};
use crate::quant::{self, GgmlType};
use crate::{Error, Result};

/// Shapes of a Llama-architecture model.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub n_layer: usize,
    pub dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub ffn: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

/// `tiny`: two layers, every row length a multiple of 256 so K-quants apply; GQA 4:2.
pub const TINY: Preset = Preset {
    name: "tiny",
    n_layer: 2,
    dim: 256,
    n_head: 4,
    n_head_kv: 2,
    ffn: 512,
    context: 512,
    rope_base: 500_000.0,
    rms_eps: 1e-5,
};

/// The presets by name.
pub fn preset(name: &str) -> Result<Preset> {
    match name {
        "tiny" => Ok(TINY),
        other => Err(Error::Invalid(format!(
            "unknown test-model preset `{other}` (known: tiny)"
        ))),
    }
}

/// How the projection weights are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightTypes {
    /// Every 2-D weight in one type.
    Uniform(GgmlType),
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for `output` and for `attn_v`/`ffn_down` in the
    /// layers that get more bits (the first and last eighth, and every third one between).
    Q4KM,
}

impl WeightTypes {
    /// Parses `q4_k_m` or any ggml type name (`q4_0`, `Q8_0`, `f16`, …).
    pub fn parse(s: &str) -> Result<WeightTypes> {
        if s.eq_ignore_ascii_case("q4_k_m") {
            return Ok(WeightTypes::Q4KM);
        }
        let ty = GgmlType::from_name(s)
            .ok_or_else(|| Error::Invalid(format!("unknown weight type `{s}`")))?;
        if ty.traits().quantize_ref.is_none() {
            return Err(Error::Invalid(format!(
                "edgetune cannot write {ty} weights"
            )));
        }
        Ok(WeightTypes::Uniform(ty))
    }

    fn for_tensor(self, name: &str, layer: Option<usize>, n_layer: usize) -> GgmlType {
        match self {
            WeightTypes::Uniform(t) => t,
            WeightTypes::Q4KM => {
                let more_bits = |i: usize| {
                    i < n_layer / 8 || i >= 7 * n_layer / 8 || (i - n_layer / 8) % 3 == 2
                };
                let wants_q6 = name == "output.weight"
                    || ((name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
                        && layer.is_some_and(more_bits));
                if wants_q6 {
                    GgmlType::Q6_K
                } else {
                    GgmlType::Q4_K
                }
            }
        }
    }
}

/// GPT-2's byte → printable-character map used by byte-level BPE vocabularies.
pub fn byte_to_unicode() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('?')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('?')
        };
    }
    map
}

/// Llama 3's special tokens, placed after the byte tokens.
const SPECIALS: [&str; 5] = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
];

/// llama3 RoPE scaling as per-pair frequency divisors (factor 8, low 1, high 4, original 8192),
/// which GGUF stores as `rope_freqs.weight`.
pub fn llama3_rope_freqs(head_dim: usize, base: f32) -> Vec<f32> {
    let (factor, low, high, old_ctx) = (8.0f64, 1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = (base as f64).powf(-2.0 * i as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor as f32
            } else {
                let smooth = (old_ctx / wavelen - low) / (high - low);
                (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
            }
        })
        .collect()
}

struct TensorPlan {
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    /// Standard deviation of the random values; `None` for norm weights (1 ± small noise).
    scale: Option<f32>,
    fixed: Option<Vec<f32>>,
}

/// Writes a seeded random model of preset `p` to `path` (atomically).
pub fn write_test_model(p: &Preset, types: WeightTypes, seed: u64, path: &Path) -> Result<()> {
    let vocab = 256 + SPECIALS.len();
    let head_dim = p.dim / p.n_head;
    let kv_dim = head_dim * p.n_head_kv;
    let mut w = GgufWriter::new(32);
    let kv = |w: &mut GgufWriter, k: &str, v: Value| w.add_kv(k, v);
    kv(
        &mut w,
        "general.architecture",
        Value::String("llama".into()),
    )?;
    kv(
        &mut w,
        "general.name",
        Value::String(format!("edgetune-testmodel-{}", p.name)),
    )?;
    kv(&mut w, "llama.context_length", Value::U32(p.context as u32))?;
    kv(&mut w, "llama.embedding_length", Value::U32(p.dim as u32))?;
    kv(&mut w, "llama.block_count", Value::U32(p.n_layer as u32))?;
    kv(
        &mut w,
        "llama.feed_forward_length",
        Value::U32(p.ffn as u32),
    )?;
    kv(
        &mut w,
        "llama.attention.head_count",
        Value::U32(p.n_head as u32),
    )?;
    kv(
        &mut w,
        "llama.attention.head_count_kv",
        Value::U32(p.n_head_kv as u32),
    )?;
    kv(&mut w, "llama.rope.freq_base", Value::F32(p.rope_base))?;
    kv(
        &mut w,
        "llama.attention.layer_norm_rms_epsilon",
        Value::F32(p.rms_eps),
    )?;
    kv(
        &mut w,
        "llama.rope.dimension_count",
        Value::U32(head_dim as u32),
    )?;
    kv(&mut w, "llama.vocab_size", Value::U32(vocab as u32))?;
    let map = byte_to_unicode();
    let mut tokens: Vec<String> = map.iter().map(|c| c.to_string()).collect();
    tokens.extend(SPECIALS.iter().map(|s| s.to_string()));
    let mut token_types = vec![1i32; 256];
    token_types.extend([3i32; SPECIALS.len()]);
    kv(&mut w, "tokenizer.ggml.model", Value::String("gpt2".into()))?;
    kv(
        &mut w,
        "tokenizer.ggml.pre",
        Value::String("llama-bpe".into()),
    )?;
    kv(
        &mut w,
        "tokenizer.ggml.tokens",
        Value::Array(Array::String(tokens)),
    )?;
    kv(
        &mut w,
        "tokenizer.ggml.token_type",
        Value::Array(Array::I32(token_types)),
    )?;
    kv(
        &mut w,
        "tokenizer.ggml.merges",
        Value::Array(Array::String(Vec::new())),
    )?;
    kv(&mut w, "tokenizer.ggml.bos_token_id", Value::U32(256))?;
    kv(&mut w, "tokenizer.ggml.eos_token_id", Value::U32(257))?;

    let mut plan = Vec::new();
    let mut add = |name: String, dims: Vec<u64>, layer: Option<usize>, scale: Option<f32>| {
        let ty = if dims.len() == 1 {
            GgmlType::F32
        } else {
            types.for_tensor(&name, layer, p.n_layer)
        };
        plan.push(TensorPlan {
            name,
            dims,
            ty,
            scale,
            fixed: None,
        });
    };
    let (d, f) = (p.dim as u64, p.ffn as u64);
    add(
        "token_embd.weight".into(),
        vec![d, vocab as u64],
        None,
        Some(0.02),
    );
    for l in 0..p.n_layer {
        let s_d = 1.0 / (p.dim as f32).sqrt();
        let s_f = 1.0 / (p.ffn as f32).sqrt();
        add(format!("blk.{l}.attn_norm.weight"), vec![d], Some(l), None);
        add(
            format!("blk.{l}.attn_q.weight"),
            vec![d, d],
            Some(l),
            Some(s_d),
        );
        add(
            format!("blk.{l}.attn_k.weight"),
            vec![d, kv_dim as u64],
            Some(l),
            Some(s_d),
        );
        add(
            format!("blk.{l}.attn_v.weight"),
            vec![d, kv_dim as u64],
            Some(l),
            Some(s_d),
        );
        add(
            format!("blk.{l}.attn_output.weight"),
            vec![d, d],
            Some(l),
            Some(s_d),
        );
        add(format!("blk.{l}.ffn_norm.weight"), vec![d], Some(l), None);
        add(
            format!("blk.{l}.ffn_gate.weight"),
            vec![d, f],
            Some(l),
            Some(s_d),
        );
        add(
            format!("blk.{l}.ffn_up.weight"),
            vec![d, f],
            Some(l),
            Some(s_d),
        );
        add(
            format!("blk.{l}.ffn_down.weight"),
            vec![f, d],
            Some(l),
            Some(s_f),
        );
    }
    add("output_norm.weight".into(), vec![d], None, None);
    add(
        "output.weight".into(),
        vec![d, vocab as u64],
        None,
        Some(1.0 / (p.dim as f32).sqrt()),
    );
    plan.push(TensorPlan {
        name: "rope_freqs.weight".into(),
        dims: vec![head_dim as u64 / 2],
        ty: GgmlType::F32,
        scale: None,
        fixed: Some(llama3_rope_freqs(head_dim, p.rope_base)),
    });
    for t in &plan {
        w.add_tensor(t.name.clone(), &t.dims, t.ty)?;
    }
    // One RNG per tensor, seeded from (seed, index): a tensor's values do not depend on the types
    // chosen for the others.
    w.write_to_path(path, |index, info, sink| {
        let t = &plan[index];
        let n = info.n_elements as usize;
        let values: Vec<f32> = match (&t.fixed, t.scale) {
            (Some(v), _) => v.clone(),
            (None, scale) => {
                let mut rng = StdRng::seed_from_u64(
                    seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                (0..n)
                    .map(|_| {
                        let g: f32 =
                            (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 0.866;
                        match scale {
                            Some(s) => g * s,
                            None => 1.0 + 0.05 * g,
                        }
                    })
                    .collect()
            }
        };
        let mut bytes = vec![0u8; info.n_bytes as usize];
        quant::quantize(t.ty, &values, &mut bytes)?;
        sink.write_all(&bytes)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection_onto_printable_chars() {
        let map = byte_to_unicode();
        let set: std::collections::HashSet<char> = map.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(map[b'A' as usize], 'A');
        assert_eq!(map[b' ' as usize], 'Ġ');
        assert_eq!(map[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn rope_freqs_follow_the_llama3_rule() {
        let f = llama3_rope_freqs(128, 500_000.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0); // short wavelengths are not scaled
        assert_eq!(f[63], 8.0); // long wavelengths are divided by the factor
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "monotone");
    }

    #[test]
    fn q4_k_m_mix_matches_llama_cpp_rule() {
        let t = WeightTypes::Q4KM;
        assert_eq!(t.for_tensor("output.weight", None, 32), GgmlType::Q6_K);
        assert_eq!(
            t.for_tensor("blk.0.attn_v.weight", Some(0), 32),
            GgmlType::Q6_K
        );
        assert_eq!(
            t.for_tensor("blk.5.attn_v.weight", Some(5), 32),
            GgmlType::Q4_K
        );
        assert_eq!(
            t.for_tensor("blk.6.ffn_down.weight", Some(6), 32),
            GgmlType::Q6_K
        );
        assert_eq!(
            t.for_tensor("blk.31.ffn_down.weight", Some(31), 32),
            GgmlType::Q6_K
        );
        assert_eq!(
            t.for_tensor("blk.0.attn_q.weight", Some(0), 32),
            GgmlType::Q4_K
        );
    }
}
