//! Seeded random Llama-architecture GGUF files for tests, demos and benchmarks.
//!
//! The weights are random (not trained): these files exercise the file format, the kernels and
//! the memory plan with real shapes and real per-tensor type mixes (`q4_k_m` mixes Q4_K and Q6_K
//! the way llama.cpp's Q4_K_M does). Tensors are generated and written one at a time, so the
//! writer never holds a whole model.
//!
//! Small presets (`tiny`, `small`) quantize seeded Gaussian-like f32 values with the reference
//! quantizers. Large ones (a 128,256-entry vocabulary or over 200M parameters) stream random
//! valid blocks in 1 MiB chunks instead ([`random_blocks`]), so the 8B file (4.3 GiB in Q4_0)
//! is written at disk speed in O(1 MiB) memory.

mod presets;
pub mod random_blocks;
pub mod vocab;

use std::path::Path;

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::gguf::{GgufWriter, Value};
use crate::quant::{self, GgmlType};
use crate::{Error, Result};

pub use presets::{
    LLAMA_3_1_8B, LLAMA_3_1_70B, LLAMA_3_2_1B, PRESETS, Preset, SMALL, TINY, preset,
};
pub use random_blocks::{FastRng, fill_random_blocks};
pub use vocab::{BYTE_VOCAB, synthetic_vocab_metadata, vocab_len};

/// How the projection weights are stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WeightTypes {
    /// Every 2-D weight in one type (llama-quantize `--pure`).
    Uniform(GgmlType),
    /// One type the way `llama-quantize` applies it without `--pure`: `output.weight` (or the
    /// tied `token_embd.weight`) in Q6_K unless the type is Q8_0 or a float type (this is why
    /// Llama 3.1 8B in Q4_0 is 4.33 GiB, not 4.21); IQ4_NL also bumps `attn_v` (GQA ≥ 4) and
    /// the first eighth of `ffn_down` to Q5_K.
    LlamaCpp(GgmlType),
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for `output` and for `attn_v`/`ffn_down` in the
    /// layers that get more bits (the first and last eighth, and every third one between);
    /// in the 80-layer (70B) model the other `attn_v` are Q5_K.
    Q4KM,
}

impl WeightTypes {
    /// Parses `q4_k_m` or any ggml type name (`q4_0`, `Q8_0`, `f16`, …); a single type is
    /// applied as `llama-quantize` does ([`WeightTypes::LlamaCpp`]).
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
        Ok(WeightTypes::LlamaCpp(ty))
    }

    /// The same choice with llama.cpp's per-tensor adjustments switched off.
    pub fn pure(self) -> WeightTypes {
        match self {
            WeightTypes::LlamaCpp(t) => WeightTypes::Uniform(t),
            other => other,
        }
    }

    /// Type of the 2-D tensor `name` (in layer `layer`) of a model shaped like `p`; a port of
    /// the rules of llama.cpp's `llama_tensor_get_type` that apply to these types and shapes.
    pub fn for_tensor(self, name: &str, layer: Option<usize>, p: &Preset) -> GgmlType {
        let (base, q4_k_m) = match self {
            WeightTypes::Uniform(t) => return t,
            WeightTypes::LlamaCpp(t) => (t, false),
            WeightTypes::Q4KM => (GgmlType::Q4_K, true),
        };
        if matches!(base, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
            return base;
        }
        let n = p.n_layer;
        let more_bits = |i: usize| i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
        let is_output = name == "output.weight" || (p.tied_output && name == "token_embd.weight");
        if is_output {
            // Q6_K needs rows of 256; llama.cpp falls back to Q8_0 otherwise.
            return if base == GgmlType::Q8_0 || !p.dim.is_multiple_of(256) {
                GgmlType::Q8_0
            } else {
                GgmlType::Q6_K
            };
        }
        let layer_more_bits = layer.is_some_and(more_bits);
        if name.ends_with("attn_v.weight") {
            let mut ty = base;
            if q4_k_m && layer_more_bits {
                ty = GgmlType::Q6_K;
            } else if base == GgmlType::IQ4_NL && p.n_head / p.n_head_kv >= 4 {
                ty = GgmlType::Q5_K;
            }
            // llama.cpp's LLM_TYPE_70B (80 Llama layers): attn_v is 8× smaller than attn_q.
            if p.n_layer == 80 && ty == GgmlType::Q4_K {
                ty = GgmlType::Q5_K;
            }
            return ty;
        }
        if name.ends_with("ffn_down.weight") {
            if q4_k_m && layer_more_bits {
                return GgmlType::Q6_K;
            }
            if base == GgmlType::IQ4_NL && layer.is_some_and(|i| i < n / 8) {
                return GgmlType::Q5_K;
            }
        }
        base
    }
}

/// Where the `tokenizer.*` metadata comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Vocabulary {
    /// [`synthetic_vocab_metadata`] of the preset's `n_vocab`.
    Synthetic,
    /// Given metadata (from a real `tokenizer.json`); its token count must equal `n_vocab`.
    Metadata(Vec<(String, Value)>),
}

/// llama3 RoPE scaling as per-pair frequency divisors (factor 8, low 1, high 4, original 8192:
/// Llama 3.1), which GGUF stores as `rope_freqs.weight`.
pub fn llama3_rope_freqs(head_dim: usize, base: f32) -> Vec<f32> {
    llama3_rope_freqs_scaled(head_dim, base, 8.0)
}

/// [`llama3_rope_freqs`] with another scaling factor (Llama 3.2 uses 32).
pub fn llama3_rope_freqs_scaled(head_dim: usize, base: f32, factor: f32) -> Vec<f32> {
    let factor = f64::from(factor);
    let (low, high, old_ctx) = (1.0f64, 4.0f64, 8192.0f64);
    let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
    (0..head_dim / 2)
        .map(|i| {
            let freq = f64::from(base).powf(-2.0 * i as f64 / head_dim as f64);
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

/// How one tensor's values are made.
enum Fill {
    /// Random weights with this standard deviation.
    Random(f32),
    /// A norm weight: 1 ± small noise.
    Norm,
    /// Given values (`rope_freqs`).
    Fixed(Vec<f32>),
}

/// What [`write_test_model_with`] wrote.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Written {
    /// File size in bytes.
    pub file_size: u64,
    /// Parameters (elements of every tensor but `rope_freqs`).
    pub n_params: u64,
}

/// Metadata and tensor infos of the model, and how to fill each tensor.
fn build(p: &Preset, types: WeightTypes, vocab: &Vocabulary) -> Result<(GgufWriter, Vec<Fill>)> {
    p.validate()?;
    let tokenizer = match vocab {
        Vocabulary::Synthetic => synthetic_vocab_metadata(p.n_vocab)?,
        Vocabulary::Metadata(kv) => {
            let n = vocab_len(kv)?;
            if n != p.n_vocab {
                return Err(Error::Invalid(format!(
                    "the tokenizer has {n} tokens but preset {} is set to {} (set n_vocab)",
                    p.name, p.n_vocab
                )));
            }
            kv.clone()
        }
    };
    let (head_dim, kv_dim) = (p.head_dim(), p.kv_dim());
    let mut w = GgufWriter::new(32);
    let u32_of = |x: usize| Value::U32(x as u32);
    let header = [
        ("general.architecture", Value::String("llama".into())),
        (
            "general.name",
            Value::String(format!("edgetune-testmodel-{}", p.name)),
        ),
        ("llama.context_length", u32_of(p.context)),
        ("llama.embedding_length", u32_of(p.dim)),
        ("llama.block_count", u32_of(p.n_layer)),
        ("llama.feed_forward_length", u32_of(p.ffn)),
        ("llama.attention.head_count", u32_of(p.n_head)),
        ("llama.attention.head_count_kv", u32_of(p.n_head_kv)),
        ("llama.rope.freq_base", Value::F32(p.rope_base)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(p.rms_eps),
        ),
        ("llama.rope.dimension_count", u32_of(head_dim)),
        ("llama.vocab_size", u32_of(p.n_vocab)),
    ];
    for (k, v) in header {
        w.add_kv(k, v)?;
    }
    for (k, v) in tokenizer {
        w.add_kv(k, v)?;
    }

    let mut fills = Vec::new();
    let mut add = |w: &mut GgufWriter, name: String, dims: &[u64], layer, fill: Fill| {
        let ty = if dims.len() == 1 {
            GgmlType::F32
        } else {
            types.for_tensor(&name, layer, p)
        };
        fills.push(fill);
        w.add_tensor(name, dims, ty)
    };
    let (d, f, kv, v) = (p.dim as u64, p.ffn as u64, kv_dim as u64, p.n_vocab as u64);
    // Linear weights are [in, out] in ne order; std 1/sqrt(in) keeps activations O(1).
    let s_d = 1.0 / (p.dim as f32).sqrt();
    let s_f = 1.0 / (p.ffn as f32).sqrt();
    add(
        &mut w,
        "token_embd.weight".into(),
        &[d, v],
        None,
        Fill::Random(0.02),
    )?;
    for l in 0..p.n_layer {
        let blk = |t: &str| format!("blk.{l}.{t}.weight");
        let layer = Some(l);
        add(&mut w, blk("attn_norm"), &[d], layer, Fill::Norm)?;
        add(&mut w, blk("attn_q"), &[d, d], layer, Fill::Random(s_d))?;
        add(&mut w, blk("attn_k"), &[d, kv], layer, Fill::Random(s_d))?;
        add(&mut w, blk("attn_v"), &[d, kv], layer, Fill::Random(s_d))?;
        add(
            &mut w,
            blk("attn_output"),
            &[d, d],
            layer,
            Fill::Random(s_d),
        )?;
        add(&mut w, blk("ffn_norm"), &[d], layer, Fill::Norm)?;
        add(&mut w, blk("ffn_gate"), &[d, f], layer, Fill::Random(s_d))?;
        add(&mut w, blk("ffn_up"), &[d, f], layer, Fill::Random(s_d))?;
        add(&mut w, blk("ffn_down"), &[f, d], layer, Fill::Random(s_f))?;
    }
    add(&mut w, "output_norm.weight".into(), &[d], None, Fill::Norm)?;
    if !p.tied_output {
        add(
            &mut w,
            "output.weight".into(),
            &[d, v],
            None,
            Fill::Random(s_d),
        )?;
    }
    let freqs = llama3_rope_freqs_scaled(head_dim, p.rope_base, p.rope_scale);
    add(
        &mut w,
        "rope_freqs.weight".into(),
        &[head_dim as u64 / 2],
        None,
        Fill::Fixed(freqs),
    )?;
    Ok((w, fills))
}

/// The writer of the model, planned but not written: its metadata, tensor infos, and
/// `file_size()` (what the 8B Q4_0 file will weigh, without writing 4 GiB).
pub fn plan_test_model(p: &Preset, types: WeightTypes, vocab: &Vocabulary) -> Result<GgufWriter> {
    build(p, types, vocab).map(|(w, _)| w)
}

/// Writes a seeded random model of preset `p` with its synthetic vocabulary to `path`
/// (atomically).
pub fn write_test_model(p: &Preset, types: WeightTypes, seed: u64, path: &Path) -> Result<()> {
    write_test_model_with(p, types, seed, &Vocabulary::Synthetic, path).map(|_| ())
}

/// Writes a seeded random model of preset `p` with the given vocabulary to `path` (atomically).
pub fn write_test_model_with(
    p: &Preset,
    types: WeightTypes,
    seed: u64,
    vocab: &Vocabulary,
    path: &Path,
) -> Result<Written> {
    let (w, fills) = build(p, types, vocab)?;
    let written = Written {
        file_size: w.file_size()?,
        n_params: w
            .tensors()
            .iter()
            .filter(|t| t.name != "rope_freqs.weight")
            .map(|t| t.n_elements)
            .sum(),
    };
    let stream_blocks = p.writes_random_blocks();
    let mut chunk = Vec::new();
    // One RNG per tensor, seeded from (seed, index): a tensor's values do not depend on the types
    // chosen for the others.
    w.write_to_path(path, |index, info, sink| {
        let tensor_seed = seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let values: Vec<f32> = match &fills[index] {
            Fill::Fixed(v) => v.clone(),
            &Fill::Random(std) if stream_blocks => {
                // Whole blocks per chunk, about 1 MiB each.
                let bb = info.ty.block_bytes();
                chunk.resize((1 << 20) / bb * bb, 0);
                let mut rng = FastRng::new(tensor_seed);
                while sink.remaining() > 0 {
                    let n = (sink.remaining() as usize).min(chunk.len());
                    fill_random_blocks(info.ty, std, &mut rng, &mut chunk[..n])?;
                    sink.write_all(&chunk[..n])?;
                }
                return Ok(());
            }
            fill => {
                let mut rng = StdRng::seed_from_u64(tensor_seed);
                (0..info.n_elements)
                    .map(|_| {
                        let g: f32 =
                            (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum::<f32>() * 0.866;
                        match fill {
                            Fill::Random(s) => g * s,
                            _ => 1.0 + 0.05 * g,
                        }
                    })
                    .collect()
            }
        };
        let mut bytes = vec![0u8; info.n_bytes as usize];
        quant::quantize(info.ty, &values, &mut bytes)?;
        sink.write_all(&bytes)
    })?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_freqs_follow_the_llama3_rule() {
        let f = llama3_rope_freqs(128, 500_000.0);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0); // short wavelengths are not scaled
        assert_eq!(f[63], 8.0); // long wavelengths are divided by the factor
        assert!(f.windows(2).all(|w| w[0] <= w[1]), "monotone");
        assert_eq!(llama3_rope_freqs_scaled(64, 500_000.0, 32.0)[31], 32.0);
    }

    #[test]
    fn q4_k_m_mix_matches_llama_cpp_rule() {
        let (t, p) = (WeightTypes::Q4KM, &LLAMA_3_1_8B);
        assert_eq!(t.for_tensor("output.weight", None, p), GgmlType::Q6_K);
        assert_eq!(t.for_tensor("token_embd.weight", None, p), GgmlType::Q4_K);
        assert_eq!(
            t.for_tensor("blk.0.attn_v.weight", Some(0), p),
            GgmlType::Q6_K
        );
        assert_eq!(
            t.for_tensor("blk.5.attn_v.weight", Some(5), p),
            GgmlType::Q4_K
        );
        assert_eq!(
            t.for_tensor("blk.6.ffn_down.weight", Some(6), p),
            GgmlType::Q6_K
        );
        assert_eq!(
            t.for_tensor("blk.31.ffn_down.weight", Some(31), p),
            GgmlType::Q6_K
        );
        assert_eq!(
            t.for_tensor("blk.0.attn_q.weight", Some(0), p),
            GgmlType::Q4_K
        );
        // Tied (Llama 3.2 1B): the embedding is the output, so it gets the output's type.
        let tied = &LLAMA_3_2_1B;
        assert_eq!(
            t.for_tensor("token_embd.weight", None, tied),
            GgmlType::Q6_K
        );
        // 70B: the attn_v layers without more bits are Q5_K.
        let big = &LLAMA_3_1_70B;
        assert_eq!(
            t.for_tensor("blk.20.attn_v.weight", Some(20), big),
            GgmlType::Q5_K
        );
        assert_eq!(
            t.for_tensor("blk.0.attn_v.weight", Some(0), big),
            GgmlType::Q6_K
        );
    }

    #[test]
    fn single_types_follow_llama_quantize_unless_pure() {
        let p = &LLAMA_3_1_8B;
        let q4 = WeightTypes::parse("q4_0").unwrap();
        assert_eq!(q4, WeightTypes::LlamaCpp(GgmlType::Q4_0));
        assert_eq!(q4.for_tensor("output.weight", None, p), GgmlType::Q6_K);
        assert_eq!(q4.for_tensor("token_embd.weight", None, p), GgmlType::Q4_0);
        assert_eq!(
            q4.pure().for_tensor("output.weight", None, p),
            GgmlType::Q4_0
        );
        let q8 = WeightTypes::parse("Q8_0").unwrap();
        assert_eq!(q8.for_tensor("output.weight", None, p), GgmlType::Q8_0);
        let f16 = WeightTypes::parse("f16").unwrap();
        assert_eq!(f16.for_tensor("output.weight", None, p), GgmlType::F16);
        let nl = WeightTypes::parse("iq4_nl").unwrap();
        assert_eq!(
            nl.for_tensor("blk.9.attn_v.weight", Some(9), p),
            GgmlType::Q5_K
        );
        assert_eq!(
            nl.for_tensor("blk.3.ffn_down.weight", Some(3), p),
            GgmlType::Q5_K
        );
        assert_eq!(
            nl.for_tensor("blk.4.ffn_down.weight", Some(4), p),
            GgmlType::IQ4_NL
        );
        assert!(WeightTypes::parse("q2_k").is_err());
        assert!(WeightTypes::parse("q9_9").is_err());
    }
}
