//! A whole training micro-batch on any [`Backend`] (issue #7): embedding, every layer's
//! forward under gradient checkpointing (only the layer inputs are kept; each layer is
//! recomputed before its backward), the chunked cross-entropy head, and the backward into all
//! adapter gradients — written only in `Backend` ops over ONE workspace allocation, so the
//! same code runs on the CPU (where the tests compare it with [`super::TrainStep`]) and on
//! CUDA.
//!
//! Scope: the plain-LoRA family (methods `lora`, `rslora`, `loraplus`, `qlora` — every adapter
//! a [`Lora`], `y += s·(x·Aᵀ)·Bᵀ`) without dropout; anything else is refused at
//! [`DeviceStep::new`] with an error naming the method or the flag.
//!
//! Parameters are *bridged*: the host [`AdapterSet`] stays the master copy that the host
//! optimizer updates; [`DeviceStep::sync_params`] mirrors it into the workspace after each
//! update. Gradients accumulate on the device (`gemm` with `β = 1` over micro-batches) and are
//! downloaded once into a host copy the first time [`DeviceStep::grads_mut`] is called after a
//! micro-batch (the optimizer's view, as [`super::TrainStep::grads_mut`]).
//!
//! Shapes as in step.rs: a micro-batch is `[B, L]` tokens flattened to `T = B·L` rows;
//! packed examples are causal segments (positions restart at 0), so RoPE and attention run
//! per segment; the loss of token `i` is against `labels[i + 1]` of its row.

use std::ops::Range;

use super::adapter_set::{AdapterSet, target_index};
use crate::adapters::{Adapter, Lora, Pass, Target};
use crate::backend::Backend;
use crate::data::{Batch, IGNORE};
use crate::memory::plan::TARGETS;
use crate::model::{BackendModel, LlamaConfig};
use crate::{Error, Result};

/// One adapted linear: where its mirrored `A` `[r, in]`, `B` `[out, r]` and their gradients
/// live in the workspace, and its scale.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) rank: usize,
    pub(super) in_f: usize,
    pub(super) out_f: usize,
    pub(super) scale: f32,
    pub(super) a: Range<usize>,
    pub(super) b: Range<usize>,
    pub(super) ga: Range<usize>,
    pub(super) gb: Range<usize>,
}

/// The workspace layout: f32 ranges of the one buffer (`T` tokens, `D` dim, `Q`/`K` the
/// query / key-value widths, `F` the FFN width, `r_i` the largest rank of target `i`).
#[derive(Clone, Debug)]
pub(super) struct Layout {
    /// `L + 1` × `[T, D]` from here: the input of every layer and the final hidden state
    /// ([`Layout::x`]; no `Vec`, so that cloning the layout allocates nothing).
    pub(super) xs: usize,
    /// `T · D`.
    pub(super) td: usize,
    // One layer's activations (written by the forward, rewritten by the recompute).
    pub(super) xn: Range<usize>,    // [T, D] attention-norm output
    pub(super) rstd1: Range<usize>, // [T]
    pub(super) q: Range<usize>,     // [T, Q]
    pub(super) k: Range<usize>,     // [T, K]
    pub(super) v: Range<usize>,     // [T, K]
    pub(super) att: Range<usize>,   // [T, Q]
    pub(super) lse: Range<usize>,   // [T, n_head]
    pub(super) mid: Range<usize>,   // [T, D] x + o (recompute only)
    pub(super) fn_: Range<usize>,   // [T, D] ffn-norm output
    pub(super) rstd2: Range<usize>, // [T]
    pub(super) gate: Range<usize>,  // [T, F]
    pub(super) up: Range<usize>,    // [T, F]
    pub(super) sw: Range<usize>,    // [T, F]
    pub(super) y: Range<usize>,     // [T, D] ffn output
    /// Per target: the adapter's saved `H = x·Aᵀ` `[T, r_i]`.
    pub(super) h: [Range<usize>; 7],
    /// `[T, max r]`: `dH` of one adapter backward.
    pub(super) dh: Range<usize>,
    // Head.
    pub(super) fnorm: Range<usize>,  // [T, D]
    pub(super) frstd: Range<usize>,  // [T]
    pub(super) logits: Range<usize>, // [chunk, vocab]
    pub(super) dhead: Range<usize>,  // [T, D]
    // Backward.
    pub(super) dres: Range<usize>,  // [T, D] ∂L/∂x_{l+1} → ∂L/∂x_l
    pub(super) dsw: Range<usize>,   // [T, F]
    pub(super) dgate: Range<usize>, // [T, F]
    pub(super) dup: Range<usize>,   // [T, F]
    pub(super) dfn: Range<usize>,   // [T, D]
    pub(super) dtmp: Range<usize>,  // [T, D]
    pub(super) datt: Range<usize>,  // [T, Q]
    pub(super) dq: Range<usize>,    // [T, Q]
    pub(super) dk: Range<usize>,    // [T, K]
    pub(super) dv: Range<usize>,    // [T, K]
    pub(super) dxn: Range<usize>,   // [T, D]
    /// Every slot's `A`, `B` (slot order), then every slot's `dA`, `dB` (same order: the
    /// host gradient copy is this range downloaded).
    pub(super) params: Range<usize>,
    pub(super) grads: Range<usize>,
    /// Total f32 of the workspace.
    pub(super) len: usize,
}

impl Layout {
    /// `x_l` `[T, D]`, `l ≤ L` (`x_L` the final hidden state).
    pub(super) fn x(&self, l: usize) -> Range<usize> {
        self.xs + l * self.td..self.xs + (l + 1) * self.td
    }
}

/// Hands out consecutive ranges.
struct Carver(usize);

impl Carver {
    fn take(&mut self, len: usize) -> Range<usize> {
        let r = self.0..self.0 + len;
        self.0 += len;
        r
    }
}

/// A training step on backend `B` for the plain-LoRA family. See the module docs.
pub struct DeviceStep<B: Backend> {
    pub(super) cfg: LlamaConfig,
    pub(super) rows: usize,
    pub(super) seq_len: usize,
    pub(super) ce_chunk: usize,
    pub(super) accumulate: bool,
    pub(super) lay: Layout,
    /// Per slot `layer · 7 + target`.
    pub(super) slots: Vec<Option<Slot>>,
    /// The one allocation.
    pub(super) ws: B::Buffer,
    /// The gradients downloaded for the host optimizer (`lay.grads` order; they stand in for
    /// the CPU arena's gradient buffers, which the device engine frees).
    host_grads: Vec<f32>,
    /// Whether `host_grads` is older than the device gradients.
    grads_stale: bool,
    /// Shifted targets `[T]` and the causal segments `(first token, tokens)`.
    targets: Vec<i32>,
    pub(super) segments: Vec<(usize, usize)>,
}

/// The adapter in `a`, as a [`Lora`] without dropout, or an error naming what it is.
fn plain_lora(a: &dyn Adapter, layer: usize, target: Target) -> Result<&Lora> {
    let lora = a.downcast_ref::<Lora>().ok_or_else(|| {
        Error::Invalid(format!(
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
        return Err(Error::Invalid(
            "device training step: --lora-dropout > 0 is not supported on a device backend \
             (use 0 or the cpu backend)"
                .into(),
        ));
    }
    Ok(lora)
}

impl<B: Backend> DeviceStep<B> {
    /// Lays out and allocates (once) the workspace for micro-batches of `rows × seq_len`
    /// tokens on `model` with `set`'s adapters, the head in chunks of `ce_chunk` tokens;
    /// `accumulate`: later micro-batches of a step may add to the gradients. Uploads the
    /// parameters.
    pub fn new(
        model: &BackendModel<'_, B>,
        set: &AdapterSet,
        rows: usize,
        seq_len: usize,
        ce_chunk: usize,
        accumulate: bool,
    ) -> Result<Self> {
        let cfg = model.config.clone();
        set.check_fits(&cfg)?;
        if rows == 0 || seq_len == 0 || ce_chunk == 0 {
            return Err(Error::Invalid(format!(
                "device training step: empty shape ({rows} rows × {seq_len} tokens, chunk \
                 {ce_chunk})"
            )));
        }
        let t = rows * seq_len;
        let (d, qd, kvd, f) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let mut slots: Vec<Option<Slot>> = vec![None; cfg.n_layer * TARGETS.len()];
        let mut max_rank = [0usize; 7];
        let mut n_params = 0;
        for (layer, target, a) in set.iter() {
            let lora = plain_lora(a, layer, target)?;
            let i = target_index(target);
            let (rank, in_f, out_f) = (lora.rank(), a.in_features(), a.out_features());
            max_rank[i] = max_rank[i].max(rank);
            slots[layer * TARGETS.len() + i] = Some(Slot {
                rank,
                in_f,
                out_f,
                scale: a.scale(),
                a: n_params..n_params + rank * in_f,
                b: n_params + rank * in_f..n_params + rank * (in_f + out_f),
                ga: 0..0,
                gb: 0..0,
            });
            n_params += rank * (in_f + out_f);
        }
        let mut c = Carver(0);
        let lay = Layout {
            xs: c.take((cfg.n_layer + 1) * t * d).start,
            td: t * d,
            xn: c.take(t * d),
            rstd1: c.take(t),
            q: c.take(t * qd),
            k: c.take(t * kvd),
            v: c.take(t * kvd),
            att: c.take(t * qd),
            lse: c.take(t * cfg.n_head),
            mid: c.take(t * d),
            fn_: c.take(t * d),
            rstd2: c.take(t),
            gate: c.take(t * f),
            up: c.take(t * f),
            sw: c.take(t * f),
            y: c.take(t * d),
            h: max_rank.map(|r| c.take(t * r)),
            dh: c.take(t * max_rank.iter().copied().max().unwrap_or(0)),
            fnorm: c.take(t * d),
            frstd: c.take(t),
            logits: c.take(ce_chunk.min(t) * cfg.n_vocab),
            dhead: c.take(t * d),
            dres: c.take(t * d),
            dsw: c.take(t * f),
            dgate: c.take(t * f),
            dup: c.take(t * f),
            dfn: c.take(t * d),
            dtmp: c.take(t * d),
            datt: c.take(t * qd),
            dq: c.take(t * qd),
            dk: c.take(t * kvd),
            dv: c.take(t * kvd),
            dxn: c.take(t * d),
            params: c.take(n_params),
            grads: c.take(n_params),
            len: c.0,
        };
        // Place the slots inside the parameter and gradient ranges.
        let (p0, g0) = (lay.params.start, lay.grads.start);
        for s in slots.iter_mut().flatten() {
            s.ga = g0 + s.a.start..g0 + s.a.end;
            s.gb = g0 + s.b.start..g0 + s.b.end;
            s.a = p0 + s.a.start..p0 + s.a.end;
            s.b = p0 + s.b.start..p0 + s.b.end;
        }
        let ws = model.backend.alloc(lay.len)?;
        let mut step = DeviceStep {
            rows,
            seq_len,
            ce_chunk: ce_chunk.min(t),
            accumulate,
            slots,
            ws,
            host_grads: vec![0.0; n_params],
            grads_stale: false,
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

    /// Bytes of the host staging: the gradients downloaded for the host optimizer
    /// (`Σ r·(in + out)` f32; the parameters upload from the adapters' own storage).
    pub fn host_bytes(&self) -> usize {
        self.host_grads.len() * 4
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
        self.prepare(model, batch)?;
        for l in 0..self.cfg.n_layer {
            self.layer_forward(model, l, false)?;
        }
        let loss = self.loss(model, loss_scale)?;
        for l in (0..self.cfg.n_layer).rev() {
            self.layer_forward(model, l, true)?;
            self.layer_backward(model, l, first)?;
        }
        self.grads_stale = true;
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
            self.layer_forward(model, l, false)?;
        }
        let loss = self.loss(model, 0.0)?;
        let counted = self.targets.iter().filter(|&&t| t != IGNORE).count();
        Ok((loss, counted))
    }

    /// The gradients of the adapter in slot `layer · 7 + target` in its parameter order
    /// (`dA`, `dB`), downloading all of them first if a micro-batch ran since the last call;
    /// empty for an unadapted slot. Writes go to the host copy only (clipping, hooks).
    pub fn grads_mut(&mut self, be: &B, layer: usize, target_index: usize) -> Result<&mut [f32]> {
        if self.grads_stale {
            let ws = B::view(&self.ws);
            be.download(B::slice(ws, self.lay.grads.clone())?, &mut self.host_grads)?;
            self.grads_stale = false;
        }
        let slot = (target_index < TARGETS.len())
            .then(|| self.slots.get(layer * TARGETS.len() + target_index))
            .flatten()
            .and_then(Option::as_ref);
        let Some(s) = slot else {
            return Ok(&mut []);
        };
        let g0 = self.lay.grads.start;
        Ok(&mut self.host_grads[s.ga.start - g0..s.gb.end - g0])
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

    /// Final norm, chunked cross-entropy (gradient scaled by `scale`) and the final norm's
    /// backward into `dres`. Returns `Σ loss`.
    fn loss(&mut self, m: &BackendModel<'_, B>, scale: f32) -> Result<f64> {
        let (be, lay) = (&m.backend, &self.lay);
        let top = lay.x(self.cfg.n_layer);
        let [x, norm, rstd] = B::split_mut(
            B::view_mut(&mut self.ws),
            [top.clone(), lay.fnorm.clone(), lay.frstd.clone()],
        )?;
        be.rmsnorm(
            B::freeze(x),
            B::view(&m.output_norm),
            self.cfg.rms_eps,
            norm,
            Some(rstd),
        )?;
        let [norm, logits, dh] = B::split_mut(
            B::view_mut(&mut self.ws),
            [lay.fnorm.clone(), lay.logits.clone(), lay.dhead.clone()],
        )?;
        let loss = be.cross_entropy(
            B::freeze(norm),
            &m.output,
            &self.targets,
            scale,
            self.ce_chunk,
            logits,
            dh,
        )?;
        let [x, rstd, dh, dres] = B::split_mut(
            B::view_mut(&mut self.ws),
            [top, lay.frstd.clone(), lay.dhead.clone(), lay.dres.clone()],
        )?;
        be.rmsnorm_backward(
            B::freeze(x),
            B::view(&m.output_norm),
            B::freeze(rstd),
            B::freeze(dh),
            dres,
        )?;
        Ok(loss)
    }
}
