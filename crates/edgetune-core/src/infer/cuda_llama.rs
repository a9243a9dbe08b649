//! Llama inference on the CUDA backend: the generic forward of `model::forward` over
//! [`CudaBackend`], with the GGUF attached once (mapped in place or uploaded, weights.rs) and a
//! device KV cache — what `generate` and `perplexity` run with `--backend cuda`.
//!
//! The same checks and chunking as [`crate::model::Llama`] (the CPU model); adapters are not
//! applied on this backend yet (the adapter hook is CPU code), so the CLI refuses
//! `--adapter` with `--backend cuda`.

use std::sync::Mutex;

use crate::backend::cuda::{AttachedWeights, CudaBackend};
use crate::gguf::GgufFile;
use crate::model::forward::{self, LogitRows, NoAdapters};
use crate::model::{BackendModel, KvCacheOf, LlamaConfig, LlamaWeights, Workspace};
use crate::{Error, Result};

/// Most tokens per chunk (as the CPU model's default).
pub const MAX_BATCH: usize = crate::model::DEFAULT_MAX_BATCH;

/// A Llama model on the GPU. Fields drop in order: the model's device weights before the
/// attachment that backs them.
pub struct CudaLlama<'a> {
    config: LlamaConfig,
    model: BackendModel<'a, CudaBackend>,
    workspace: Mutex<Option<Workspace<CudaBackend>>>,
    max_batch: usize,
    attached: AttachedWeights<'a>,
}

impl<'a> CudaLlama<'a> {
    /// Reads the config, validates the weights, attaches the file's bytes to the device (by the
    /// backend's `--weights` mode) and prepares every weight from them.
    pub fn load(file: &'a GgufFile, backend: CudaBackend) -> Result<CudaLlama<'a>> {
        let config = LlamaConfig::from_gguf(file)?;
        let weights = LlamaWeights::from_gguf(file, &config)?;
        let attached = backend.attach_weights(file.as_bytes())?;
        let model = BackendModel::new(backend, &config, &weights)?;
        Ok(CudaLlama {
            config,
            model,
            workspace: Mutex::new(None),
            max_batch: MAX_BATCH,
            attached,
        })
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn backend(&self) -> &CudaBackend {
        &self.model.backend
    }

    /// Whether the weights are read in place from the mapped file (else uploaded).
    pub fn weights_mapped(&self) -> bool {
        self.attached.mapped
    }

    /// A device KV cache for `max_tokens` positions.
    pub fn new_cache(&self, max_tokens: usize) -> Result<KvCacheOf<CudaBackend>> {
        KvCacheOf::new(
            &self.model.backend,
            self.config.n_layer,
            self.config.kv_dim(),
            max_tokens,
        )
    }

    /// As [`crate::model::Llama::forward`]: every token's logits, `[tokens.len(), n_vocab]`.
    pub fn forward(
        &self,
        cache: &mut KvCacheOf<CudaBackend>,
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        let vocab = self.config.n_vocab;
        if Some(logits.len()) != tokens.len().checked_mul(vocab) {
            return Err(Error::Invalid(format!(
                "forward: logits buffer has {} values, expected {} tokens × {vocab}",
                logits.len(),
                tokens.len()
            )));
        }
        self.run(cache, tokens, logits, false)
    }

    /// As [`crate::model::Llama::forward_last`]: the last token's logits, `[n_vocab]`.
    pub fn forward_last(
        &self,
        cache: &mut KvCacheOf<CudaBackend>,
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Invalid("forward_last: no tokens".into()));
        }
        if logits.len() != self.config.n_vocab {
            return Err(Error::Invalid(format!(
                "forward_last: logits buffer has {} values, expected n_vocab = {}",
                logits.len(),
                self.config.n_vocab
            )));
        }
        self.run(cache, tokens, logits, true)
    }

    fn run(
        &self,
        cache: &mut KvCacheOf<CudaBackend>,
        tokens: &[u32],
        logits: &mut [f32],
        last_only: bool,
    ) -> Result<()> {
        let c = &self.config;
        if cache.n_layer() != c.n_layer || cache.kv_dim() != c.kv_dim() {
            return Err(Error::Invalid(format!(
                "KV cache of {} layers × {} values per position does not fit this model \
                 ({} layers × {})",
                cache.n_layer(),
                cache.kv_dim(),
                c.n_layer,
                c.kv_dim()
            )));
        }
        cache.check_room(tokens.len())?;
        if tokens.is_empty() {
            return Ok(());
        }
        let mut guard = self
            .workspace
            .lock()
            .map_err(|_| Error::Invalid("cuda: workspace poisoned by a panic".into()))?;
        let want = tokens.len().min(self.max_batch);
        if guard.as_ref().is_none_or(|w| w.max_tokens() < want) {
            *guard = None;
            *guard = Some(Workspace::new(&self.model.backend, c, want)?);
        }
        let ws = guard
            .as_mut()
            .ok_or_else(|| Error::Invalid("cuda: no workspace".into()))?;
        let vocab = c.n_vocab;
        let mut rest = logits;
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + self.max_batch).min(tokens.len());
            let rows = if last_only {
                if end == tokens.len() {
                    LogitRows::Last(std::mem::take(&mut rest))
                } else {
                    LogitRows::None
                }
            } else {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut((end - start) * vocab);
                rest = tail;
                LogitRows::All(head)
            };
            forward::forward_chunk(
                &self.model,
                &mut &self.model,
                ws,
                cache,
                &tokens[start..end],
                rows,
                &mut NoAdapters,
            )?;
            start = end;
        }
        Ok(())
    }
}

impl super::CausalLm for CudaLlama<'_> {
    type Backend = CudaBackend;
    fn config(&self) -> &LlamaConfig {
        CudaLlama::config(self)
    }
    fn new_cache(&self, max_tokens: usize) -> Result<KvCacheOf<CudaBackend>> {
        CudaLlama::new_cache(self, max_tokens)
    }
    fn forward(&self, c: &mut KvCacheOf<CudaBackend>, t: &[u32], l: &mut [f32]) -> Result<()> {
        CudaLlama::forward(self, c, t, l)
    }
    fn forward_last(&self, c: &mut KvCacheOf<CudaBackend>, t: &[u32], l: &mut [f32]) -> Result<()> {
        CudaLlama::forward_last(self, c, t, l)
    }
}
