//! Test-model shapes: two small ones for tests and the shape-true Llama 3.x models.
//!
//! The Llama shapes were checked against public copies of Meta's Hugging Face `config.json`:
//! - Llama 3.2 1B: `hidden_size` 2048, `intermediate_size` 8192, 16 layers, 32 heads, 8 KV
//!   heads (`head_dim` 64), vocab 128256, `tie_word_embeddings` true, `rope_theta` 500000,
//!   llama3 `rope_scaling` factor 32 (meta-llama/Llama-3.2-1B-Instruct config as copied in
//!   github.com/kevinstephano/thunder_model_blocks, hf_llama/llama_config.py);
//! - Llama 3.1 8B and 70B: hidden 4096 / 8192, MLP 14336 / 28672, 32 / 80 layers, 32 / 64
//!   heads, 8 KV heads, vocab 128256, untied (oumi's model table, as copied in
//!   github.com/vulkomilev/oumi, configs/recipes/llama3_1/README.md); `rope_theta` 500000,
//!   RMS eps 1e-5 and llama3 scaling factor 8 (Llama 3.1 configs; a published 8B Q4_K_M GGUF
//!   lists `llama.rope.freq_base` 500000).

use super::vocab::BYTE_VOCAB;
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
    /// Vocabulary size: [`BYTE_VOCAB`] for the byte vocabulary, else the Llama 3 layout.
    pub n_vocab: usize,
    /// No `output.weight`: the output projection is `token_embd` (Llama 3.2 1B and 3B).
    pub tied_output: bool,
    pub context: usize,
    pub rope_base: f32,
    /// llama3 RoPE scaling factor (8 for Llama 3.1, 32 for Llama 3.2) for `rope_freqs`.
    pub rope_scale: f32,
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
    n_vocab: BYTE_VOCAB,
    tied_output: false,
    context: 512,
    rope_base: 500_000.0,
    rope_scale: 8.0,
    rms_eps: 1e-5,
};

/// `small`: ≈ 101M parameters with the byte vocabulary (the embeddings are only 0.4M of them,
/// so 16 layers of dim 768 / FFN 2048 make up the size); head dim 64, GQA 12:4, rows multiples
/// of 256.
pub const SMALL: Preset = Preset {
    name: "small",
    n_layer: 16,
    dim: 768,
    n_head: 12,
    n_head_kv: 4,
    ffn: 2048,
    n_vocab: BYTE_VOCAB,
    tied_output: false,
    context: 2048,
    rope_base: 500_000.0,
    rope_scale: 8.0,
    rms_eps: 1e-5,
};

/// Llama 3.2 1B (1.24B parameters, tied output).
pub const LLAMA_3_2_1B: Preset = Preset {
    name: "llama-3.2-1b",
    n_layer: 16,
    dim: 2048,
    n_head: 32,
    n_head_kv: 8,
    ffn: 8192,
    n_vocab: 128_256,
    tied_output: true,
    context: 131_072,
    rope_base: 500_000.0,
    rope_scale: 32.0,
    rms_eps: 1e-5,
};

/// Llama 3.1 8B (8.03B parameters).
pub const LLAMA_3_1_8B: Preset = Preset {
    name: "llama-3.1-8b",
    n_layer: 32,
    dim: 4096,
    n_head: 32,
    n_head_kv: 8,
    ffn: 14_336,
    n_vocab: 128_256,
    tied_output: false,
    context: 131_072,
    rope_base: 500_000.0,
    rope_scale: 8.0,
    rms_eps: 1e-5,
};

/// Llama 3.1 70B (70.6B parameters).
pub const LLAMA_3_1_70B: Preset = Preset {
    name: "llama-3.1-70b",
    n_layer: 80,
    dim: 8192,
    n_head: 64,
    n_head_kv: 8,
    ffn: 28_672,
    n_vocab: 128_256,
    tied_output: false,
    context: 131_072,
    rope_base: 500_000.0,
    rope_scale: 8.0,
    rms_eps: 1e-5,
};

/// Every preset, smallest first.
pub const PRESETS: [&Preset; 5] = [&TINY, &SMALL, &LLAMA_3_2_1B, &LLAMA_3_1_8B, &LLAMA_3_1_70B];

/// The presets by name.
pub fn preset(name: &str) -> Result<Preset> {
    PRESETS
        .iter()
        .find(|p| p.name == name)
        .map(|p| (*p).clone())
        .ok_or_else(|| {
            let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
            Error::Invalid(format!(
                "unknown test-model preset `{name}` (known: {})",
                known.join(", ")
            ))
        })
}

impl Preset {
    pub fn head_dim(&self) -> usize {
        self.dim / self.n_head
    }

    /// Width of the K and V projections (`n_head_kv · head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_head_kv
    }

    /// Parameters: embeddings (twice when untied), per layer 2 norms, Q, K, V, O and the three
    /// FFN matrices, and the output norm (`rope_freqs` is not counted).
    pub fn n_params(&self) -> u64 {
        let (d, f, kv, v) = (
            self.dim as u64,
            self.ffn as u64,
            self.kv_dim() as u64,
            self.n_vocab as u64,
        );
        let embeddings = v * d * if self.tied_output { 1 } else { 2 };
        let layer = 2 * d + 2 * d * d + 2 * d * kv + 3 * d * f;
        embeddings + self.n_layer as u64 * layer + d
    }

    /// Whether tensors are streamed as random valid blocks instead of quantized from random
    /// values: for a Llama 3 vocabulary or over 200M parameters, where quantizing would take
    /// minutes to hours.
    pub fn writes_random_blocks(&self) -> bool {
        self.n_vocab > BYTE_VOCAB || self.n_params() > 200_000_000
    }

    /// The [`crate::model::LlamaConfig`] a model written from this preset reads back as
    /// (what plans and adapter shapes need, without writing a file).
    pub fn llama_config(&self) -> crate::model::LlamaConfig {
        crate::model::LlamaConfig {
            n_layer: self.n_layer,
            dim: self.dim,
            n_head: self.n_head,
            n_head_kv: self.n_head_kv,
            head_dim: self.head_dim(),
            ffn: self.ffn,
            n_vocab: self.n_vocab,
            context_length: self.context,
            rope_base: self.rope_base,
            rms_eps: self.rms_eps,
            rope_dim: self.head_dim(),
        }
    }

    /// Shapes the writer and the Llama layout accept.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("preset {}: {what}", self.name)));
        if self.n_layer == 0 || self.n_head == 0 || self.n_head_kv == 0 || self.ffn == 0 {
            return bad("layers, heads, KV heads and FFN size must be positive".into());
        }
        if !self.dim.is_multiple_of(self.n_head) || !self.n_head.is_multiple_of(self.n_head_kv) {
            return bad(format!(
                "dim {} must split into {} heads, grouped evenly over {} KV heads",
                self.dim, self.n_head, self.n_head_kv
            ));
        }
        if !self.head_dim().is_multiple_of(2)
            || !self.dim.is_multiple_of(32)
            || !self.ffn.is_multiple_of(32)
        {
            return bad(format!(
                "head dim {} must be even and dim {} / FFN {} multiples of 32 (block size)",
                self.head_dim(),
                self.dim,
                self.ffn
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published sizes: Llama 3.2 1B has 1.24B parameters (1,235,814,400), Llama 3.1 8B
    /// 8.03B (8,030,261,248), 70B 70.6B (70,553,706,496).
    #[test]
    fn parameter_counts_match_the_published_models() {
        assert_eq!(LLAMA_3_2_1B.n_params(), 1_235_814_400);
        assert_eq!(LLAMA_3_1_8B.n_params(), 8_030_261_248);
        assert_eq!(LLAMA_3_1_70B.n_params(), 70_553_706_496);
        let small = SMALL.n_params();
        assert!((95_000_000..110_000_000).contains(&small), "{small}");
        assert!(!TINY.writes_random_blocks() && !SMALL.writes_random_blocks());
        assert!(LLAMA_3_2_1B.writes_random_blocks());
    }

    #[test]
    fn presets_by_name_and_validation() {
        for p in PRESETS {
            assert_eq!(&preset(p.name).unwrap(), p);
            p.validate().unwrap();
        }
        assert!(preset("llama-4").is_err());
        let odd = Preset {
            n_head_kv: 3,
            ..TINY
        };
        assert!(odd.validate().is_err());
    }
}
