//! A whole training micro-batch on any [`Backend`]: embedding, every layer's
//! forward under gradient checkpointing (only the layer inputs are kept; each layer is
//! recomputed before its backward), the chunked cross-entropy head, and the backward into all
//! adapter gradients — written only in `Backend` ops over ONE workspace allocation, so the
//! same code runs on the CPU (where the tests compare it with [`super::TrainStep`]) and on
//! CUDA.
//!
//! The workspace is laid out by [`plan_device_step`] (step_device_plan.rs), from shapes alone,
//! so the trainer holds the step to the budget before allocating it: the parameters, the
//! gradients and the layer inputs for the whole step, and one layer's buffers packed by
//! lifetime (the forward's, the head's and the backward's share addresses); the FFN and the
//! head run in row chunks (`Tc`, `C` tokens), so no `[T, F]` or `[T, vocab]` buffer exists.
//! Llama 3.1 8B at 1 × 512 tokens, LoRA r = 16 on all 7 projections, C = 64 (Tc = 32, the
//! smallest workspace, [`plan_device_step`]'s automatic choice): a workspace of 625.5 MiB (160 of A/B, 160 of gradients, 256 of layer
//! inputs, 49.5 packed — the head's chunk at its peak) and 1.1 MiB on the host, in place of
//! the CPU step's 608 MiB arena (tests/train_device/plan.rs). Under `--budget` the trainer
//! takes the largest FFN chunk that still fits ([`super::plan_device_step_within`]: larger
//! chunks read the FFN weights fewer times): `Tc = 512` for Q4_0 and 128 for Q4_K_M there.
//! Without a budget it takes the whole micro-batch (`Tc = T`, the fastest).
//!
//! Scope: the plain-LoRA family (methods `lora`, `rslora`, `loraplus`, `qlora` — every adapter
//! a [`Lora`], `y += s·(x·Aᵀ)·Bᵀ`) without dropout; anything else is refused at
//! [`DeviceStep::new`] with an error naming the method or the flag.
//!
//! Parameters are *bridged*: the host [`AdapterSet`] stays the master copy that the host
//! optimizer updates; [`DeviceStep::sync_params`] mirrors it into the workspace after each
//! update. Gradients accumulate on the device (`gemm` with `β = 1` over micro-batches and FFN
//! row chunks) and the optimizer sees them one slot at a time ([`DeviceStep::grads_mut`], as
//! [`super::TrainStep::grads_mut`]): downloaded into a host staging buffer of the largest
//! slot, the previously staged slot uploaded back first if it was handed out writable, so a
//! write (clipping) reaches the update and any later read. The optimizer's norm pass reads
//! ([`DeviceStep::grads`]) and its update pass writes: two downloads and one upload of the
//! gradients per step, and no host copy of all of them.
//!
//! Shapes as in step.rs: a micro-batch is `[B, L]` tokens flattened to `T = B·L` rows;
//! packed examples are causal segments (positions restart at 0), so RoPE and attention run
//! per segment; the loss of token `i` is against `labels[i + 1]` of its row.

use super::adapter_set::{AdapterSet, target_index};
use super::step_device_layout::{Layout, Slot};
use super::step_device_plan::{DevicePlan, DeviceShape, plan_device_step};
use crate::train::plan_llama::TARGETS;
use edgetune_core::adapters::{Adapter, Lora, Pass, Target};
use edgetune_core::backend::Backend;
use edgetune_core::data::{Batch, IGNORE};
use edgetune_core::model::{BackendModel, LlamaConfig};
use edgetune_core::{Error, Result};

/// A training step on backend `B` for the plain-LoRA family. See the module docs.
pub struct DeviceStep<B: Backend> {
    pub(super) cfg: LlamaConfig,
    pub(super) rows: usize,
    pub(super) seq_len: usize,
    pub(super) ce_chunk: usize,
    pub(super) ffn_chunk: usize,
    pub(super) accumulate: bool,
    pub(super) lay: Layout,
    /// Per slot `layer · 7 + target`.
    pub(super) slots: Vec<Option<Slot>>,
    /// The one allocation.
    pub(super) ws: B::Buffer,
    /// One slot's gradients on the host (the largest slot's `r·(in + out)` f32): the
    /// optimizer's window onto the device gradients ([`DeviceStep::grads_mut`]).
    staging: Vec<f32>,
    /// The slot whose gradients `staging` holds, and whether they may have been written
    /// (then they go back to the device before another slot is staged).
    staged: Option<usize>,
    staged_dirty: bool,
    /// Shifted targets `[T]` and the causal segments `(first token, tokens)`.
    targets: Vec<i32>,
    pub(super) segments: Vec<(usize, usize)>,
}

/// The adapter in `a`, as a [`Lora`] without dropout, or an error naming what it is.
pub(super) fn plain_lora(a: &dyn Adapter, layer: usize, target: Target) -> Result<&Lora> {
    let lora = a.as_lora().ok_or_else(|| {
        Error::Unsupported(format!(
            "device training step: method {:?} (blk.{layer}.{}) is not supported; only the \
             plain-LoRA family (lora, rslora, loraplus, qlora) runs on a device backend",
            a.method(),
            target.gguf_stem()
        ))
    })?;
    let probe = Pass {
        n: 1,
        training: true,
        seed: 0,
    };
    if lora.dropout_mask(probe).is_some() {
        return Err(Error::Unsupported(
            "device training step: --lora-dropout > 0 is not supported on a device backend \
             (use 0 or the cpu backend)"
                .into(),
        ));
    }
    Ok(lora)
}

impl<B: Backend> DeviceStep<B> {
    /// Lays out ([`plan_device_step`]) and allocates (once) the workspace for micro-batches of
    /// `rows × seq_len` tokens on `model` with `set`'s adapters, the head in chunks of
    /// `ce_chunk` tokens, the FFN in the plan's automatic row chunks; `accumulate`: later
    /// micro-batches of a step may add to the gradients. Uploads the parameters.
    pub fn new(
        model: &BackendModel<'_, B>,
        set: &AdapterSet,
        rows: usize,
        seq_len: usize,
        ce_chunk: usize,
        accumulate: bool,
    ) -> Result<Self> {
        let shape = DeviceShape::for_set(set, rows, seq_len, ce_chunk, accumulate)?;
        Self::with_shape(model, set, &shape)
    }

    /// [`DeviceStep::new`] for an explicit `shape` (its slots must be `set`'s adapters; e.g.
    /// [`DeviceShape::for_set`] with a chosen `ffn_chunk`).
    pub fn with_shape(
        model: &BackendModel<'_, B>,
        set: &AdapterSet,
        shape: &DeviceShape,
    ) -> Result<Self> {
        let cfg = model.config.clone();
        set.check_fits(&cfg)?;
        let DevicePlan {
            lay,
            mut slots,
            tokens: t,
            ce_chunk,
            ffn_chunk,
            staging_len,
            ..
        } = plan_device_step(&cfg, shape)?;
        for (layer, target, a) in set.iter() {
            let lora = plain_lora(a, layer, target)?;
            let slot = slots
                .get_mut(layer * TARGETS.len() + target_index(target))
                .and_then(Option::as_mut)
                .filter(|s| s.a.len() == lora.a().len() && s.b.len() == lora.b().len());
            let Some(s) = slot else {
                return Err(Error::Invalid(format!(
                    "device training step: the adapter of blk.{layer}.{} is not in the planned \
                     shape",
                    target.gguf_stem()
                )));
            };
            s.scale = a.scale();
        }
        let ws = model.backend.alloc(lay.len)?;
        let mut step = DeviceStep {
            rows: shape.rows,
            seq_len: shape.seq_len,
            ce_chunk,
            ffn_chunk,
            accumulate: shape.accumulate,
            slots,
            ws,
            staging: vec![0.0; staging_len],
            staged: None,
            staged_dirty: false,
            targets: vec![IGNORE; t],
            segments: Vec::with_capacity(t),
            lay,
            cfg,
        };
        step.sync_params(&model.backend, set)?;
        Ok(step)
    }

    /// Bytes of the workspace (the one allocation).
    pub fn workspace_bytes(&self) -> usize {
        self.lay.len * 4
    }

    /// Host bytes of the step's own buffers: one slot's gradient staging, the targets and the
    /// segments (the parameters upload from the adapters' own storage).
    pub fn host_bytes(&self) -> usize {
        super::step_device_plan::host_bytes_of(
            self.staging.capacity(),
            self.targets.capacity(),
            self.segments.capacity(),
        )
    }

    /// Tokens per FFN row chunk.
    pub fn ffn_chunk(&self) -> usize {
        self.ffn_chunk
    }

    /// Tokens per micro-batch (`T`).
    pub fn tokens(&self) -> usize {
        self.rows * self.seq_len
    }

    /// Mirrors `set`'s parameters into the workspace (one upload of `A` and of `B` per adapted
    /// linear); call after every optimizer update. `set` must have the adapters the step was built for.
    pub fn sync_params(&mut self, be: &B, set: &AdapterSet) -> Result<()> {
        for (layer, target, a) in set.iter() {
            let lora = plain_lora(a, layer, target)?;
            let slot = self
                .slots
                .get(layer * TARGETS.len() + target_index(target))
                .and_then(Option::as_ref);
            let fits = slot.filter(|s| {
                s.a.len() == lora.a().len() && s.b.len() == lora.b().len() && s.scale == a.scale()
            });
            let Some(s) = fits else {
                return Err(Error::Invalid(format!(
                    "device training step: the adapter of blk.{layer}.{} differs from the one \
                     the step was built for",
                    target.gguf_stem()
                )));
            };
            // Straight from the adapter's own storage (no host staging copy: on an 8B model
            // that copy would be another 160 MiB): two small uploads per adapted linear.
            let [da, db] = B::split_mut(B::view_mut(&mut self.ws), [s.a.clone(), s.b.clone()])?;
            be.upload(lora.a(), da)?;
            be.upload(lora.b(), db)?;
        }
        Ok(())
    }

    /// Forward, loss and backward of one micro-batch (as [`super::TrainStep::micro_batch`],
    /// without dropout): the loss gradient is that of `loss_scale · Σ loss`; `first` overwrites
    /// the adapter gradients, later micro-batches add to them. Returns `Σ loss`.
    pub fn micro_batch(
        &mut self,
        model: &BackendModel<'_, B>,
        batch: &Batch,
        loss_scale: f32,
        first: bool,
    ) -> Result<f64> {
        if !first && !self.accumulate {
            return Err(Error::Invalid(
                "device training step: built without gradient accumulation".into(),
            ));
        }
        // The device gradients change: the staged slot is stale (its writes first reach the
        // device when this micro-batch adds to them; a first one overwrites them anyway).
        if !first {
            self.flush_staged(&model.backend)?;
        }
        (self.staged, self.staged_dirty) = (None, false);
        self.prepare(model, batch)?;
        for l in 0..self.cfg.n_layer {
            self.layer_forward(model, l)?;
        }
        let loss = self.loss(model, loss_scale)?;
        // Nothing below the lowest adapted layer is trained: the backward stops there.
        let lowest = self
            .slots
            .iter()
            .position(Option::is_some)
            .map_or(self.cfg.n_layer, |i| i / TARGETS.len());
        for l in (lowest..self.cfg.n_layer).rev() {
            self.layer_backward(model, l, first)?;
        }
        Ok(loss)
    }

    /// The forward and the loss only: `(Σ loss, targets)` (held-out evaluation).
    pub fn eval_loss(
        &mut self,
        model: &BackendModel<'_, B>,
        batch: &Batch,
    ) -> Result<(f64, usize)> {
        self.prepare(model, batch)?;
        for l in 0..self.cfg.n_layer {
            self.layer_forward(model, l)?;
        }
        let loss = self.loss(model, 0.0)?;
        let counted = self.targets.iter().filter(|&&t| t != IGNORE).count();
        Ok((loss, counted))
    }

    /// The gradients of the adapter in slot `layer · 7 + target` in its parameter order
    /// (`dA`, `dB`), staged on the host: downloaded when another slot (or a micro-batch) was
    /// the last one, while the previously staged slot's values go back to the device first,
    /// so writes (clipping, hooks) reach the device gradients and every later read. Empty for
    /// an unadapted slot.
    pub fn grads_mut(&mut self, be: &B, layer: usize, target_index: usize) -> Result<&mut [f32]> {
        let n = self.stage(be, layer, target_index)?;
        self.staged_dirty |= n > 0;
        Ok(&mut self.staging[..n])
    }

    /// [`DeviceStep::grads_mut`] for reading only (the optimizer's norm pass): nothing goes
    /// back to the device for it.
    pub fn grads(&mut self, be: &B, layer: usize, target_index: usize) -> Result<&[f32]> {
        let n = self.stage(be, layer, target_index)?;
        Ok(&self.staging[..n])
    }

    /// Stages slot `layer · 7 + target_index` (see [`DeviceStep::grads_mut`]); returns its
    /// number of gradients (0: unadapted or out of range).
    fn stage(&mut self, be: &B, layer: usize, target_index: usize) -> Result<usize> {
        let idx = layer * TARGETS.len() + target_index;
        let slot = (target_index < TARGETS.len())
            .then(|| self.slots.get(idx))
            .flatten()
            .and_then(Option::as_ref);
        let Some(s) = slot else {
            return Ok(0);
        };
        let (range, n) = (s.ga.start..s.gb.end, s.ga.len() + s.gb.len());
        if self.staged != Some(idx) {
            self.flush_staged(be)?;
            let src = B::slice(B::view(&self.ws), range)?;
            be.download(src, &mut self.staging[..n])?;
            (self.staged, self.staged_dirty) = (Some(idx), false);
        }
        Ok(n)
    }

    /// Uploads the staged slot's gradients if they may have been written.
    fn flush_staged(&mut self, be: &B) -> Result<()> {
        if let (Some(idx), true) = (self.staged, self.staged_dirty)
            && let Some(s) = self.slots.get(idx).and_then(Option::as_ref)
        {
            let n = s.ga.len() + s.gb.len();
            let dst = B::slice_mut(B::view_mut(&mut self.ws), s.ga.start..s.gb.end)?;
            be.upload(&self.staging[..n], dst)?;
        }
        self.staged_dirty = false;
        Ok(())
    }

    /// Checks the model and the batch, fills the shifted targets and the segments (exactly as
    /// [`super::TrainStep`]), and embeds the tokens into `x_0`.
    fn prepare(&mut self, m: &BackendModel<'_, B>, batch: &Batch) -> Result<()> {
        if m.config != self.cfg {
            return Err(Error::Invalid(
                "device training step: called with another model than it was built for".into(),
            ));
        }
        let (b, l) = (self.rows, self.seq_len);
        batch.check_shape(b, l, "device training step")?;
        batch.shifted_targets_and_segments(&mut self.targets, &mut self.segments);
        let [x0] = B::split_mut(B::view_mut(&mut self.ws), [self.lay.x(0)])?;
        m.backend.embedding(&m.token_embd, &batch.ids, x0)
    }

    /// Final norm, cross-entropy (gradient scaled by `scale`) and the final norm's backward
    /// into `dres`, in row chunks of `C = ce_chunk` tokens (all three are per row, so `[T, D]`
    /// of the norm and of its gradient never exist). Returns `Σ loss`.
    fn loss(&mut self, m: &BackendModel<'_, B>, scale: f32) -> Result<f64> {
        let (be, lay) = (&m.backend, &self.lay);
        let (t, d, chunk) = (self.rows * self.seq_len, self.cfg.dim, self.ce_chunk);
        let hd = &lay.head;
        let mut loss = 0.0;
        let mut t0 = 0;
        while t0 < t {
            let c = chunk.min(t - t0);
            let x = lay.x(self.cfg.n_layer).start + t0 * d
                ..lay.x(self.cfg.n_layer).start + (t0 + c) * d;
            let (norm, rstd) = (
                hd.norm.start..hd.norm.start + c * d,
                hd.rstd.start..hd.rstd.start + c,
            );
            let dh = hd.dh.start..hd.dh.start + c * d;
            let dres = lay.dres.start + t0 * d..lay.dres.start + (t0 + c) * d;
            let ws = &mut self.ws;
            let [xv, nv, rv] =
                B::split_mut(B::view_mut(ws), [x.clone(), norm.clone(), rstd.clone()])?;
            let w = B::view(&m.output_norm);
            be.rmsnorm(B::freeze(xv), w, self.cfg.rms_eps, nv, Some(rv))?;
            let [nv, lv, dv] =
                B::split_mut(B::view_mut(ws), [norm, hd.logits.clone(), dh.clone()])?;
            let targets = &self.targets[t0..t0 + c];
            loss += be.cross_entropy(B::freeze(nv), &m.output, targets, scale, chunk, lv, dv)?;
            let [xv, rv, dv, gv] = B::split_mut(B::view_mut(ws), [x, rstd, dh, dres])?;
            let (xv, rv, dv) = (B::freeze(xv), B::freeze(rv), B::freeze(dv));
            be.rmsnorm_backward(xv, B::view(&m.output_norm), rv, dv, gv)?;
            t0 += c;
        }
        Ok(loss)
    }
}
