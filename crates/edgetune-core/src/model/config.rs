//! Llama hyper-parameters from GGUF metadata (`{arch}.*` keys,
//! docs/FORMATS.md#llama-metadata-and-tensors).

use crate::adapters::Target;
use crate::adapters::set::LinearShapes;
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// The one architecture edgetune runs.
pub const ARCH: &str = "llama";

/// Shapes and constants of a Llama model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub n_layer: usize,
    /// Model width (`embedding_length`).
    pub dim: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Per-head width: `attention.key_length` if present, else `dim / n_head`.
    pub head_dim: usize,
    /// Feed-forward width.
    pub ffn: usize,
    /// `vocab_size`, else the token list's length, else `token_embd`'s row count.
    pub n_vocab: usize,
    pub context_length: usize,
    /// RoPE base frequency (`rope.freq_base`, default 10000 as in llama.cpp).
    pub rope_base: f32,
    pub rms_eps: f32,
    /// Dims of each head that RoPE rotates (`rope.dimension_count`, default `head_dim`).
    pub rope_dim: usize,
}

impl LlamaConfig {
    /// Reads and checks the config; `general.architecture` must be `llama`.
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
        let arch = file.str("general.architecture")?;
        if arch != ARCH {
            return Err(Error::Metadata {
                path: file.path().to_path_buf(),
                key: "general.architecture".into(),
                what: format!("architecture `{arch}` is not supported (edgetune runs `{ARCH}`)"),
            });
        }
        let key = |k: &str| format!("{ARCH}.{k}");
        let usize_of = |k: &str| -> Result<usize> { Ok(file.u32(&key(k))? as usize) };
        let opt_usize =
            |k: &str| -> Result<Option<usize>> { Ok(file.opt_u32(&key(k))?.map(|v| v as usize)) };
        let n_layer = usize_of("block_count")?;
        let dim = usize_of("embedding_length")?;
        let n_head = usize_of("attention.head_count")?;
        let n_head_kv = opt_usize("attention.head_count_kv")?.unwrap_or(n_head);
        let ffn = usize_of("feed_forward_length")?;
        let context_length = usize_of("context_length")?;
        let rope_base = file.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rms_eps = file.f32(&key("attention.layer_norm_rms_epsilon"))?;
        let bad = |k: &str, what: String| Error::Metadata {
            path: file.path().to_path_buf(),
            key: key(k),
            what,
        };
        if n_head == 0 {
            return Err(bad("attention.head_count", "is 0".into()));
        }
        let head_dim = match opt_usize("attention.key_length")? {
            Some(hd) => hd,
            None if dim % n_head == 0 => dim / n_head,
            None => {
                return Err(bad(
                    "attention.head_count",
                    format!("{n_head} heads do not divide embedding_length {dim}"),
                ));
            }
        };
        let rope_dim = opt_usize("rope.dimension_count")?.unwrap_or(head_dim);
        let n_vocab = match opt_usize("vocab_size")? {
            Some(v) => v,
            None => match file.opt_array("tokenizer.ggml.tokens")? {
                Some(a) => a.len(),
                None => file
                    .tensor("token_embd.weight")
                    .and_then(|t| t.dims.get(1).copied())
                    .unwrap_or(0) as usize,
            },
        };
        for (k, v) in [
            ("block_count", n_layer),
            ("embedding_length", dim),
            ("feed_forward_length", ffn),
            ("context_length", context_length),
            ("attention.key_length", head_dim),
            ("vocab_size", n_vocab),
        ] {
            if v == 0 {
                return Err(bad(k, "is 0 (or could not be determined)".into()));
            }
        }
        if n_head_kv == 0 || n_head % n_head_kv != 0 {
            return Err(bad(
                "attention.head_count_kv",
                format!("{n_head_kv} KV heads do not divide {n_head} query heads"),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(bad(
                "attention.key_length",
                format!("head dim {head_dim} is odd"),
            ));
        }
        if rope_dim % 2 != 0
            || rope_dim > head_dim
            || rope_dim > crate::backend::cpu::rope::MAX_ROPE_DIM
        {
            return Err(bad(
                "rope.dimension_count",
                format!("{rope_dim} must be even and at most the head dim {head_dim}"),
            ));
        }
        if !(rms_eps.is_finite() && rms_eps > 0.0) {
            return Err(bad(
                "attention.layer_norm_rms_epsilon",
                format!("{rms_eps} is not a positive number"),
            ));
        }
        if !(rope_base.is_finite() && rope_base > 0.0) {
            return Err(bad(
                "rope.freq_base",
                format!("{rope_base} is not a positive number"),
            ));
        }
        Ok(LlamaConfig {
            n_layer,
            dim,
            n_head,
            n_head_kv,
            head_dim,
            ffn,
            n_vocab,
            context_length,
            rope_base,
            rms_eps,
            rope_dim,
        })
    }

    /// Width of the query projection output (`n_head · head_dim`; = `dim` for Llama).
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }

    /// Width of the key/value projection outputs (`n_head_kv · head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.n_head_kv * self.head_dim
    }
}

/// `(in, out)` features of `target`'s linear in a Llama block of `cfg`.
pub fn target_shape(cfg: &LlamaConfig, target: Target) -> (usize, usize) {
    match target {
        Target::AttnQ => (cfg.dim, cfg.q_dim()),
        Target::AttnK | Target::AttnV => (cfg.dim, cfg.kv_dim()),
        Target::AttnOutput => (cfg.q_dim(), cfg.dim),
        Target::FfnGate | Target::FfnUp => (cfg.dim, cfg.ffn),
        Target::FfnDown => (cfg.ffn, cfg.dim),
    }
}

impl LinearShapes for LlamaConfig {
    fn n_layer(&self) -> usize {
        self.n_layer
    }

    fn linear_shape(&self, target: Target) -> (usize, usize) {
        target_shape(self, target)
    }
}
