//! The shape of one training step as the planner sees it: tokens per row and rows, the loss
//! chunk, which memory levers are on, and per adapted projection what its adapter saves, needs
//! as scratch and trains ([`AdapterShape`]).

use super::schedule::TARGETS;
use edgetune_core::model::config::LlamaConfig;
use edgetune_core::{Error, Result};

/// What one adapted projection needs from the plan (from its adapter's
/// [`edgetune_core::adapters::Workspace`] and parameter count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterShape {
    /// f32 per token the forward saves for the backward.
    pub saved_per_token: usize,
    /// f32 per token of scratch inside one forward or backward call.
    pub scratch_per_token: usize,
    /// Trainable values (the gradient buffer's length).
    pub n_params: usize,
    /// Values of its largest single tensor (the optimizer staging window).
    pub largest_param: usize,
}

impl AdapterShape {
    /// LoRA of rank `rank` on a linear `[out, in]` (with input dropout: `in` more scratch).
    pub fn lora(rank: usize, fan_in: usize, fan_out: usize, dropout: bool) -> AdapterShape {
        AdapterShape {
            saved_per_token: rank,
            scratch_per_token: rank + if dropout { fan_in } else { 0 },
            n_params: rank * (fan_in + fan_out),
            largest_param: rank * fan_in.max(fan_out),
        }
    }
}

/// The shape of one training step: tokens, loss chunk, checkpointing and the adapters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainShape {
    pub seq_len: usize,
    pub micro_batch: usize,
    /// Tokens per cross-entropy chunk.
    pub ce_chunk: usize,
    pub checkpointing: bool,
    /// Gradients accumulate over several micro-batches (adds `grad.tmp`, and the gradients
    /// live for the whole step).
    pub accumulate: bool,
    /// Stage the largest tensor's optimizer state in the arena (`opt.m`, `opt.v`).
    pub optimizer_staging: bool,
    /// The optimizer updates each layer's adapters right after that layer's backward
    /// (`--fused-update`): a layer's gradients live only through its backward, so the layers
    /// share their memory. Not with `accumulate`.
    pub fused_update: bool,
    /// Layer inputs kept for the backward in bf16 (`--checkpoint-dtype bf16`, with
    /// checkpointing): `L{l}.xc` holds them packed, `L{l}.x` lives only through the layer's
    /// forward and `L{l}.xr` (the unpacked copy) only through its recompute and backward.
    pub checkpoint_bf16: bool,
    /// Layer inputs kept in a file instead of the arena (`--checkpoints-on disk`, with
    /// checkpointing): `L{l}.x` and `L{l}.xr` as with bf16 checkpoints, no `L{l}.xc`; with
    /// bf16 one `ckpt.stage` `[⌈T·D/2⌉]` packs and unpacks them on the way.
    pub checkpoints_on_disk: bool,
    /// The output head is streamed in chunks of rows (`--stream-head`, model/stream.rs): the
    /// loss accumulates `dh` over the chunks through `ce.dh_part` `[ce_chunk, dim]`.
    pub stream_head: bool,
    /// Per projection in [`TARGETS`] order: its adapter, or `None`.
    pub adapters: [Option<AdapterShape>; 7],
}

impl TrainShape {
    /// Rows of `seq_len` tokens, the loss in chunks of `ce_chunk`, `adapters` per projection,
    /// and every memory lever but `checkpointing` off.
    pub fn plain(
        seq_len: usize,
        micro_batch: usize,
        ce_chunk: usize,
        checkpointing: bool,
        adapters: [Option<AdapterShape>; 7],
    ) -> TrainShape {
        TrainShape {
            seq_len,
            micro_batch,
            ce_chunk,
            checkpointing,
            accumulate: false,
            optimizer_staging: false,
            fused_update: false,
            checkpoint_bf16: false,
            checkpoints_on_disk: false,
            stream_head: false,
            adapters,
        }
    }

    /// LoRA of rank `rank` on the first `n_targets` of [`TARGETS`] of a model `cfg`.
    pub fn lora(
        cfg: &LlamaConfig,
        seq_len: usize,
        micro_batch: usize,
        rank: usize,
        n_targets: usize,
        ce_chunk: usize,
        checkpointing: bool,
    ) -> Result<TrainShape> {
        if n_targets > TARGETS.len() {
            return Err(Error::Invalid(format!(
                "plan: {n_targets} adapted projections per layer, a Llama layer has {}",
                TARGETS.len()
            )));
        }
        if n_targets > 0 && rank == 0 {
            return Err(Error::Invalid("plan: LoRA rank is 0".into()));
        }
        let mut adapters = [None; 7];
        for (i, slot) in adapters.iter_mut().enumerate().take(n_targets) {
            let (fan_in, fan_out) = projection_shape(cfg, i);
            *slot = Some(AdapterShape::lora(rank, fan_in, fan_out, false));
        }
        Ok(TrainShape::plain(
            seq_len,
            micro_batch,
            ce_chunk,
            checkpointing,
            adapters,
        ))
    }
}

/// `(in, out)` of projection `i` of [`TARGETS`].
pub fn projection_shape(cfg: &LlamaConfig, i: usize) -> (usize, usize) {
    let (d, q, kv, f) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)][i.min(6)]
}
