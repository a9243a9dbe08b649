//! The Llama model: config from GGUF metadata, validated weight views, and inference on the
//! CPU backend with a KV cache.
//!
//! ```no_run
//! use edgetune_core::gguf::GgufFile;
//! use edgetune_core::model::Llama;
//!
//! let file = GgufFile::open("model.gguf")?;
//! let model = Llama::load(&file)?;
//! let mut cache = model.new_cache(256)?;
//! let mut logits = vec![0.0; model.config().n_vocab];
//! model.forward_last(&mut cache, &[1, 2, 3], &mut logits)?;
//! # Ok::<(), edgetune_core::Error>(())
//! ```

pub mod adapter_hook;
pub mod config;
pub mod decode_batch;
pub mod finite;
pub mod forward;
pub mod kv_cache;
pub mod layer_source;
pub mod stream;
mod stream_io;
pub mod weights;

use std::sync::{Arc, Mutex};

pub use config::{LlamaConfig, target_shape};
pub use forward::{BackendModel, LOGIT_ROWS, Workspace};
pub use kv_cache::{KvCache, KvCacheOf};
pub use weights::{LayerWeights, LlamaWeights, target_matrix};

use crate::adapters::AdapterSet;
use crate::backend::CpuBackend;
use crate::gguf::GgufFile;
use crate::quant::Compute;
use crate::{Error, Result};
use adapter_hook::{AdapterBuffers, AdapterHook};
use forward::{LogitRows, NoAdapters};

/// Default most tokens per internal chunk: long prompts run in chunks of this many tokens (the
/// result is the same as one call; causal attention sees every earlier position via the cache).
pub const DEFAULT_MAX_BATCH: usize = 64;

/// A Llama model whose weights are views of a mapped GGUF file.
pub struct Llama<'a> {
    config: LlamaConfig,
    weights: LlamaWeights<'a>,
    model: BackendModel<'a, CpuBackend>,
    /// The weights `forward` multiplies with when its arithmetic is not f32 (`model` is what
    /// training runs on, always f32 unless the trainer asks otherwise).
    infer: Option<BackendModel<'a, CpuBackend>>,
    compute: Compute,
    max_batch: usize,
    /// Activation buffers, allocated on first use for `min(tokens, max_batch)` tokens and grown
    /// only when a larger chunk arrives; with adapters, their buffers too.
    workspace: Mutex<Option<(Workspace<CpuBackend>, AdapterBuffers)>>,
    /// Trained adapters applied after the base projections.
    adapters: Option<Arc<AdapterSet>>,
    /// Streamed layers ([`Llama::stream_weights`]); `None`: the mapped ones.
    stream: Option<Mutex<stream::WeightStream>>,
}

impl<'a> Llama<'a> {
    /// Reads the config and validates every weight of `file`.
    pub fn load(file: &'a GgufFile) -> Result<Llama<'a>> {
        let config = LlamaConfig::from_gguf(file)?;
        let weights = LlamaWeights::from_gguf(file, &config)?;
        let model = BackendModel::new(CpuBackend, &config, &weights)?;
        log::debug!(
            "{}: llama {} layers, dim {}, heads {}/{}, ffn {}, vocab {}, tied output {}, rope_freqs {}",
            file.path().display(),
            config.n_layer,
            config.dim,
            config.n_head,
            config.n_head_kv,
            config.ffn,
            config.n_vocab,
            weights.tied_output,
            weights.rope_freqs.is_some()
        );
        Ok(Llama {
            config,
            weights,
            model,
            infer: None,
            compute: Compute::F32,
            max_batch: DEFAULT_MAX_BATCH,
            workspace: Mutex::new(None),
            adapters: None,
            stream: None,
        })
    }

    /// Reads the layers from `file` (the one this model was loaded from) as they run, through
    /// two staging buffers, and the output head once into its own buffer, instead of through
    /// the map ([`stream::WeightStream`]): inference under a budget below the model's size.
    /// The map's pages read so far leave the process. Logits are bit-identical to the mapped
    /// model's. Call after [`Llama::set_compute`] (the stream multiplies with its arithmetic).
    pub fn stream_weights(&mut self, file: &GgufFile) -> Result<()> {
        self.stream_weights_with(file, stream::StreamOptions::default())
    }

    /// [`Llama::stream_weights`] with the head placed as `options` say (streamed in chunks of
    /// rows too: nothing of the head stays in memory; logits are still bit-identical).
    pub fn stream_weights_with(
        &mut self,
        file: &GgufFile,
        options: stream::StreamOptions,
    ) -> Result<()> {
        let s = stream::WeightStream::open_with(
            file,
            &self.config,
            &self.weights,
            self.compute,
            options,
        )?;
        self.stream = Some(Mutex::new(s));
        file.release_pages()
    }

    /// The weight stream's counters (`None`: mapped weights).
    pub fn stream_stats(&self) -> Option<stream::StreamStats> {
        let s = self.stream.as_ref()?;
        s.lock().ok().map(|s| s.stats())
    }

    /// Applies `adapters` (checked against this model's shapes) in every later forward, or
    /// none again with `None`.
    pub fn set_adapters(&mut self, adapters: Option<Arc<AdapterSet>>) -> Result<()> {
        if let Some(set) = &adapters {
            set.check_fits(&self.config)?;
        }
        self.adapters = adapters;
        *self.workspace.get_mut().map_err(|_| poisoned())? = None;
        Ok(())
    }

    /// Arithmetic of the quantized projections in [`Llama::forward`] and
    /// [`Llama::forward_last`]: `F32` (the default: weights converted to f32) or `Int8`
    /// (activations quantized per block, integer dot products, where the CPU has them; logits
    /// then differ from f32 by about llama.cpp's own error). Training is not affected.
    pub fn set_compute(&mut self, compute: Compute) -> Result<()> {
        self.infer = match compute {
            Compute::F32 => None,
            c => Some(BackendModel::new(
                CpuBackend,
                &self.config,
                &self.weights.with_compute(c),
            )?),
        };
        self.compute = compute;
        if let Some(s) = &mut self.stream {
            s.get_mut().map_err(|_| poisoned())?.set_compute(compute);
        }
        Ok(())
    }

    /// Arithmetic of the training step's forward products through the frozen weights
    /// ([`Llama::backend_model`]: `x·Wᵀ`; the backward's `dy·W` is f32 either way): `F32` by
    /// default; `Int8` rounds the activations per block to 8 bits as inference's int8 does
    /// (LoRA gradients then about 1e-2 from the f64 reference instead of 1e-6,
    /// tests/train/grad.rs).
    pub fn set_train_compute(&mut self, compute: Compute) -> Result<()> {
        self.model = BackendModel::new(
            CpuBackend,
            &self.config,
            &self.weights.with_compute(compute),
        )?;
        Ok(())
    }

    /// The arithmetic of the forward (see [`Llama::set_compute`]).
    pub fn compute(&self) -> Compute {
        self.compute
    }

    /// The adapters applied, if any.
    pub fn adapters(&self) -> Option<&Arc<AdapterSet>> {
        self.adapters.as_ref()
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The weights prepared for the CPU backend (what the training step runs on).
    pub fn backend_model(&self) -> &BackendModel<'a, CpuBackend> {
        &self.model
    }

    /// The validated weight views.
    pub fn weights(&self) -> &LlamaWeights<'a> {
        &self.weights
    }

    /// Most tokens per internal chunk (bounds the workspace).
    pub fn max_batch_tokens(&self) -> usize {
        self.max_batch
    }

    /// Sets the most tokens per internal chunk (≥ 1); the workspace is reallocated on next use.
    pub fn set_max_batch_tokens(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::Invalid("max batch tokens must be at least 1".into()));
        }
        self.max_batch = n;
        *self.workspace.get_mut().map_err(|_| poisoned())? = None;
        Ok(())
    }

    /// A KV cache preallocated for `max_tokens` positions of every layer (f32).
    pub fn new_cache(&self, max_tokens: usize) -> Result<KvCache> {
        if max_tokens > self.config.context_length {
            log::warn!(
                "KV cache of {max_tokens} positions exceeds the model's context length {}",
                self.config.context_length
            );
        }
        KvCache::new(
            &CpuBackend,
            self.config.n_layer,
            self.config.kv_dim(),
            max_tokens,
        )
    }

    /// Runs `tokens` at positions `cache.len()..`, appends their K/V to the cache, and writes
    /// the logits of every token into `logits` (`[tokens.len(), n_vocab]` row-major).
    pub fn forward(&self, cache: &mut KvCache, tokens: &[u32], logits: &mut [f32]) -> Result<()> {
        let vocab = self.config.n_vocab;
        if Some(logits.len()) != tokens.len().checked_mul(vocab) {
            return Err(Error::Invalid(format!(
                "forward: logits buffer has {} values, expected {} tokens × {vocab} = {}",
                logits.len(),
                tokens.len(),
                tokens.len() * vocab
            )));
        }
        self.run(cache, tokens, Wanted::All(logits))
    }

    /// Same as [`Llama::forward`], but only the last token's logits (`[n_vocab]`).
    pub fn forward_last(
        &self,
        cache: &mut KvCache,
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        let vocab = self.config.n_vocab;
        if tokens.is_empty() {
            return Err(Error::Invalid("forward_last: no tokens".into()));
        }
        if logits.len() != vocab {
            return Err(Error::Invalid(format!(
                "forward_last: logits buffer has {} values, expected n_vocab = {vocab}",
                logits.len()
            )));
        }
        self.run(cache, tokens, Wanted::Last(logits))
    }

    /// One decoding step for several sequences: `tokens[i]` is appended to `caches[i]` and its
    /// logits written to row `i` of `logits` (`[tokens.len(), n_vocab]`). The projections run
    /// over all sequences at once (see [`decode_batch`](decode_batch::decode_batch)), up to
    /// `max_batch` sequences per pass.
    pub fn decode_batch(
        &self,
        caches: &mut [&mut KvCache],
        tokens: &[u32],
        logits: &mut [f32],
    ) -> Result<()> {
        let c = &self.config;
        let vocab = c.n_vocab;
        if caches.len() != tokens.len() {
            return Err(Error::Invalid(format!(
                "decode_batch: {} caches for {} tokens (one token per sequence)",
                caches.len(),
                tokens.len()
            )));
        }
        if Some(logits.len()) != tokens.len().checked_mul(vocab) {
            return Err(Error::Invalid(format!(
                "decode_batch: logits buffer has {} values, expected {} sequences × {vocab}",
                logits.len(),
                tokens.len()
            )));
        }
        for (i, (cache, &t)) in caches.iter().zip(tokens).enumerate() {
            self.check_cache(cache)?;
            if t as usize >= vocab {
                return Err(Error::Invalid(format!(
                    "decode_batch: token id {t} of sequence {i} is outside the vocabulary \
                     (n_vocab = {vocab})"
                )));
            }
            cache.check_room(1)?;
        }
        if tokens.is_empty() {
            return Ok(());
        }
        let mut guard = self.workspace_for(tokens.len())?;
        let (ws, ab) = guard.as_mut().ok_or_else(poisoned)?;
        let model = self.infer.as_ref().unwrap_or(&self.model);
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + self.max_batch).min(tokens.len());
            let (cs, ts) = (&mut caches[start..end], &tokens[start..end]);
            let out = &mut logits[start * vocab..end * vocab];
            self.with_layers(model, |src| {
                self.with_hook(ab, |hook| {
                    decode_batch::decode_batch(model, src, ws, cs, ts, out, hook)
                })
            })?;
            start = end;
        }
        Ok(())
    }

    /// Runs `f` with the source of `model`'s layers: the weight stream when the weights are
    /// streamed ([`Llama::stream_weights`]), else `model` itself.
    fn with_layers<R>(
        &self,
        model: &BackendModel<'a, CpuBackend>,
        f: impl FnOnce(&mut dyn stream::LayerSource<CpuBackend>) -> Result<R>,
    ) -> Result<R> {
        match &self.stream {
            Some(s) => f(&mut *s.lock().map_err(|_| poisoned())?),
            None => f(&mut &*model),
        }
    }

    /// Runs `f` with the projection hook of this model: its adapters (in `ab`'s buffers), or
    /// none.
    fn with_hook<R>(
        &self,
        ab: &mut AdapterBuffers,
        f: impl FnOnce(&mut dyn forward::ProjectionHook<CpuBackend>) -> Result<R>,
    ) -> Result<R> {
        match &self.adapters {
            Some(set) => f(&mut AdapterHook { set, buffers: ab }),
            None => f(&mut NoAdapters),
        }
    }

    fn check_cache(&self, cache: &KvCache) -> Result<()> {
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
        Ok(())
    }

    /// The workspace (and adapter buffers) for chunks of `min(tokens, max_batch)` rows,
    /// allocated or grown here.
    fn workspace_for(&self, tokens: usize) -> Result<WorkspaceGuard<'_>> {
        let mut guard = self.workspace.lock().map_err(|_| poisoned())?;
        let want = tokens.min(self.max_batch);
        if guard.as_ref().is_none_or(|(w, _)| w.max_tokens() < want) {
            *guard = None; // free the old one before allocating the larger one
            let ab = match &self.adapters {
                Some(set) => AdapterBuffers::new(set, want),
                None => AdapterBuffers::default(),
            };
            *guard = Some((Workspace::new(&self.model.backend, &self.config, want)?, ab));
        }
        Ok(guard)
    }

    /// Checks the inputs, then runs chunks of at most `max_batch` tokens.
    fn run(&self, cache: &mut KvCache, tokens: &[u32], wanted: Wanted<'_>) -> Result<()> {
        let c = &self.config;
        self.check_cache(cache)?;
        if let Some((i, &t)) = tokens
            .iter()
            .enumerate()
            .find(|(_, t)| **t as usize >= c.n_vocab)
        {
            return Err(Error::Invalid(format!(
                "token id {t} at position {i} is outside the vocabulary (n_vocab = {})",
                c.n_vocab
            )));
        }
        cache.check_room(tokens.len())?;
        if tokens.is_empty() {
            return Ok(());
        }
        let mut guard = self.workspace_for(tokens.len())?;
        let (ws, ab) = guard.as_mut().ok_or_else(poisoned)?;
        let vocab = c.n_vocab;
        let (mut all, mut last) = match wanted {
            Wanted::All(out) => (out, None),
            Wanted::Last(out) => (&mut [][..], Some(out)),
        };
        let mut start = 0;
        while start < tokens.len() {
            let end = (start + self.max_batch).min(tokens.len());
            let rows = if let Some(out) = last.take_if(|_| end == tokens.len()) {
                LogitRows::Last(out)
            } else if last.is_some() {
                LogitRows::None
            } else {
                let (head, tail) = std::mem::take(&mut all).split_at_mut((end - start) * vocab);
                all = tail;
                LogitRows::All(head)
            };
            let chunk = &tokens[start..end];
            let model = self.infer.as_ref().unwrap_or(&self.model);
            self.with_layers(model, |src| {
                self.with_hook(ab, |hook| {
                    forward::forward_chunk(model, src, ws, cache, chunk, rows, hook)
                })
            })?;
            start = end;
        }
        Ok(())
    }
}

/// The logits a call asks for (sizes already checked).
enum Wanted<'o> {
    All(&'o mut [f32]),
    Last(&'o mut [f32]),
}

type WorkspaceGuard<'m> =
    std::sync::MutexGuard<'m, Option<(Workspace<CpuBackend>, AdapterBuffers)>>;

fn poisoned() -> Error {
    Error::Invalid("the model's workspace is unusable after a panic in another thread".into())
}
