//! Inference: KV-cache generation with streaming output, sampling, and perplexity.

pub mod generate;
pub mod perplexity;
pub mod sampling;

pub use generate::{GenerateOptions, Generation, StopReason, generate};
pub use perplexity::{Perplexity, perplexity};
pub use sampling::{Sampler, SamplingParams};

use crate::Result;
use crate::backend::Backend;
use crate::model::{KvCacheOf, Llama, LlamaConfig};

/// A model [`generate`] and [`perplexity`] can drive: the CPU [`Llama`] or, with the `cuda`
/// feature, `backend::cuda::llama::CudaLlama` (same checks, same chunking, another backend).
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
}
