//! Inference: KV-cache generation with streaming output, sampling, and perplexity.

#[cfg(feature = "cuda")]
pub mod cuda_llama;
pub mod generate;
pub mod generate_batch;
pub mod perplexity;
pub mod sampling;

pub use generate::{GenerateOptions, Generation, StopReason, generate};
pub use generate_batch::{DEFAULT_GENERATE_BATCH, batch_for_cache_bytes, generate_batch};
pub use perplexity::{PERPLEXITY_CHUNK, Perplexity, perplexity};
pub use sampling::{Sampler, SamplingParams};

use crate::backend::Backend;
use crate::model::{KvCacheOf, Llama, LlamaConfig};
use crate::{Error, Result};

/// A model [`generate`] and [`perplexity`] can drive: the CPU [`Llama`] or, with the `cuda`
/// feature, `infer::cuda_llama::CudaLlama` (same checks, same chunking, another backend).
pub trait CausalLm {
    type Backend: Backend;
    fn config(&self) -> &LlamaConfig;
    /// A KV cache for `max_tokens` positions.
    fn new_cache(&self, max_tokens: usize) -> Result<KvCacheOf<Self::Backend>>;
    /// Every token's logits into `[tokens.len(), n_vocab]`.
    fn forward(
        &self,
        cache: &mut KvCacheOf<Self::Backend>,
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()>;
    /// The last token's logits into `[n_vocab]`.
    fn forward_last(
        &self,
        cache: &mut KvCacheOf<Self::Backend>,
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()>;
    /// One token per sequence (`tokens[i]` into `caches[i]`), logits into `[n, n_vocab]`. By
    /// default one [`forward_last`](Self::forward_last) per sequence; a model that can run the
    /// sequences' projections together overrides it.
    fn decode_batch(
        &self,
        caches: &mut [&mut KvCacheOf<Self::Backend>],
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        let vocab = self.config().n_vocab;
        if caches.len() != tokens.len() || logits.len() != tokens.len() * vocab {
            return Err(Error::Invalid(format!(
                "decode_batch: {} caches, {} tokens and {} logits (expected tokens × {vocab})",
                caches.len(),
                tokens.len(),
                logits.len()
            )));
        }
        for ((cache, &t), row) in caches.iter_mut().zip(tokens).zip(logits.chunks_mut(vocab)) {
            self.forward_last(cache, &[t], row)?;
        }
        Ok(())
    }
}

impl CausalLm for Llama<'_> {
    type Backend = crate::backend::CpuBackend;
    fn config(&self) -> &LlamaConfig {
        Llama::config(self)
    }
    fn new_cache(&self, max_tokens: usize) -> Result<KvCacheOf<Self::Backend>> {
        Llama::new_cache(self, max_tokens)
    }
    fn forward(&self, c: &mut KvCacheOf<Self::Backend>, t: &[u32], l: &mut [f32]) -> Result<()> {
        Llama::forward(self, c, t, l)
    }
    fn forward_last(
        &self,
        c: &mut KvCacheOf<Self::Backend>,
        t: &[u32],
        l: &mut [f32],
    ) -> Result<()> {
        Llama::forward_last(self, c, t, l)
    }
    fn decode_batch(
        &self,
        c: &mut [&mut KvCacheOf<Self::Backend>],
        t: &[u32],
        l: &mut [f32],
    ) -> Result<()> {
        Llama::decode_batch(self, c, t, l)
    }
}

/// Refuses logits that are not all finite: `what` says where they come from (for the message).
/// A NaN or infinite logit means the weights, the adapter or the forward are broken, and every
/// number computed from them (a perplexity, a sampled token) would be meaningless.
pub fn check_logits(row: &[f32], what: impl FnOnce() -> String) -> Result<()> {
    match row.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::NonFinite(format!(
            "{}: the logit of token {i} is {} ({} of the {} logits are not finite): the model's \
             weights or the adapter hold NaN/Inf, or the forward overflowed (`edgetune train` \
             names a non-finite weight tensor before it starts)",
            what(),
            row[i],
            row.iter().filter(|v| !v.is_finite()).count(),
            row.len()
        ))),
    }
}
