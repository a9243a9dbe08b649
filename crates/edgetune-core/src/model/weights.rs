//! Weight views by name, validated against the config: every tensor present, of the right
//! shape (GGUF ne order) and a type the kernels read; norms and `rope_freqs` in F32.
//!
//! Matrices are [`QuantMatrix`] views of the mapped file (never copied). The 1-D F32 vectors
//! (norm weights, `rope_freqs`: `dim` or `head_dim/2` values each) are decoded into small
//! `Vec<f32>`s, because a backend takes them as f32 buffers and the file's bytes need not be
//! 4-byte aligned in an owned buffer.

use super::config::LlamaConfig;
use crate::adapters::Target;
use crate::gguf::{GgufFile, TensorInfo};
use crate::quant::matmul::QuantMatrix;
use crate::quant::{self, GgmlType};
use crate::{Error, Result};

/// The weights of one transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights<'a> {
    pub attn_norm: Vec<f32>,
    /// `[q_dim, dim]` in row-major terms (`out` rows of `in`), as every matrix below.
    pub attn_q: QuantMatrix<'a>,
    pub attn_k: QuantMatrix<'a>,
    pub attn_v: QuantMatrix<'a>,
    pub attn_output: QuantMatrix<'a>,
    pub ffn_norm: Vec<f32>,
    pub ffn_gate: QuantMatrix<'a>,
    pub ffn_up: QuantMatrix<'a>,
    pub ffn_down: QuantMatrix<'a>,
}

/// All weights of a Llama model.
#[derive(Clone, Debug)]
pub struct LlamaWeights<'a> {
    /// `[n_vocab, dim]`: one row per token.
    pub token_embd: QuantMatrix<'a>,
    pub layers: Vec<LayerWeights<'a>>,
    pub output_norm: Vec<f32>,
    /// `output.weight`, or `token_embd` when the file has none (tied embeddings).
    pub output: QuantMatrix<'a>,
    pub tied_output: bool,
    /// Llama 3 RoPE scaling: per-pair frequency divisors (`[rope_dim / 2]`), if present.
    pub rope_freqs: Option<Vec<f32>>,
}

/// `[4096, 14336]` (ne order).
fn shape(dims: &[u64]) -> String {
    let parts: Vec<String> = dims.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

struct Checker<'a> {
    file: &'a GgufFile,
}

impl<'a> Checker<'a> {
    fn err(&self, name: &str, what: String) -> Error {
        Error::Tensor {
            path: self.file.path().to_path_buf(),
            name: name.to_string(),
            what,
        }
    }

    fn find(&self, name: &str, dims: &[u64]) -> Result<&'a TensorInfo> {
        let t = self
            .file
            .tensor(name)
            .ok_or_else(|| self.err(name, format!("missing (expected shape {})", shape(dims))))?;
        // Trailing 1-dims beyond the expected rank carry no data ([dim, 1] = [dim]).
        let mut found = &t.dims[..];
        while found.len() > dims.len() && found.last() == Some(&1) {
            found = &found[..found.len() - 1];
        }
        if found != dims {
            return Err(self.err(
                name,
                format!("expected {}, found {}", shape(dims), shape(&t.dims)),
            ));
        }
        Ok(t)
    }

    /// A linear `[in, out]` in ne order → `QuantMatrix` with `out` rows of `in`.
    fn matrix(&self, name: &str, n_in: usize, n_out: usize) -> Result<QuantMatrix<'a>> {
        let t = self.find(name, &[n_in as u64, n_out as u64])?;
        QuantMatrix::new(t.ty, n_out, n_in, self.file.tensor_data(t))
            .map_err(|e| self.err(name, e.to_string()))
    }

    /// A 1-D F32 vector of `n` values.
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>> {
        let t = self.find(name, &[n as u64])?;
        if t.ty != GgmlType::F32 {
            return Err(self.err(name, format!("expected type F32, found {}", t.ty)));
        }
        let mut v = vec![0.0f32; n];
        quant::dequantize(GgmlType::F32, self.file.tensor_data(t), &mut v)
            .map_err(|e| self.err(name, e.to_string()))?;
        Ok(v)
    }
}

impl<'a> LlamaWeights<'a> {
    /// The same views with every projection (and the output head) multiplied with `compute`
    /// arithmetic.
    pub fn with_compute(&self, compute: crate::quant::Compute) -> LlamaWeights<'a> {
        let mut w = self.clone();
        for l in &mut w.layers {
            for m in [
                &mut l.attn_q,
                &mut l.attn_k,
                &mut l.attn_v,
                &mut l.attn_output,
                &mut l.ffn_gate,
                &mut l.ffn_up,
                &mut l.ffn_down,
            ] {
                *m = m.with_compute(compute);
            }
        }
        w.output = w.output.with_compute(compute);
        w
    }

    /// Finds and checks every tensor `cfg` implies.
    pub fn from_gguf(file: &'a GgufFile, cfg: &LlamaConfig) -> Result<LlamaWeights<'a>> {
        let c = Checker { file };
        let (dim, ffn, qd, kvd) = (cfg.dim, cfg.ffn, cfg.q_dim(), cfg.kv_dim());
        let token_embd = c.matrix("token_embd.weight", dim, cfg.n_vocab)?;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for l in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{l}.{s}.weight");
            layers.push(LayerWeights {
                attn_norm: c.vector(&n("attn_norm"), dim)?,
                attn_q: c.matrix(&n("attn_q"), dim, qd)?,
                attn_k: c.matrix(&n("attn_k"), dim, kvd)?,
                attn_v: c.matrix(&n("attn_v"), dim, kvd)?,
                attn_output: c.matrix(&n("attn_output"), qd, dim)?,
                ffn_norm: c.vector(&n("ffn_norm"), dim)?,
                ffn_gate: c.matrix(&n("ffn_gate"), dim, ffn)?,
                ffn_up: c.matrix(&n("ffn_up"), dim, ffn)?,
                ffn_down: c.matrix(&n("ffn_down"), ffn, dim)?,
            });
        }
        let output_norm = c.vector("output_norm.weight", dim)?;
        let (output, tied_output) = if file.tensor("output.weight").is_some() {
            (c.matrix("output.weight", dim, cfg.n_vocab)?, false)
        } else {
            (token_embd, true)
        };
        let rope_freqs = if file.tensor("rope_freqs.weight").is_some() {
            let f = c.vector("rope_freqs.weight", cfg.rope_dim / 2)?;
            if let Some((j, v)) = f
                .iter()
                .enumerate()
                .find(|(_, v)| !(v.is_finite() && **v > 0.0))
            {
                return Err(c.err(
                    "rope_freqs.weight",
                    format!("value {v} at index {j} is not a positive frequency divisor"),
                ));
            }
            Some(f)
        } else {
            None
        };
        Ok(LlamaWeights {
            token_embd,
            layers,
            output_norm,
            output,
            tied_output,
            rope_freqs,
        })
    }
}

/// The matrix of `target` in a block's weights.
pub fn target_matrix<'a, 'w>(w: &'a LayerWeights<'w>, target: Target) -> &'a QuantMatrix<'w> {
    match target {
        Target::AttnQ => &w.attn_q,
        Target::AttnK => &w.attn_k,
        Target::AttnV => &w.attn_v,
        Target::AttnOutput => &w.attn_output,
        Target::FfnGate => &w.ffn_gate,
        Target::FfnUp => &w.ffn_up,
        Target::FfnDown => &w.ffn_down,
    }
}
