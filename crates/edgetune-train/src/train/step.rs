//! One training step over a planned arena: embedding, the layers' forward (keeping only layer
//! inputs under gradient checkpointing), the chunked cross-entropy, and the backward from the
//! top layer down (recomputing each layer first), leaving the adapter gradients in the arena
//! for the optimizer. Nothing is allocated after [`TrainStep::new`].
//!
//! Shapes: a micro-batch is `[B, L]` tokens, flattened to `T = B·L` rows; the residual stream
//! is `[T, D]`. Rows are independent sequences, and inside a row every packed example is its
//! own causal sequence: RoPE and attention run per *segment* (an example, with the padding
//! after a row's last example folded into it — padding has no loss and nothing attends to
//! it), so attention is block-diagonal and positions restart at 0 with every example.
//!
//! The loss of token `i` is the cross-entropy of its logits against `labels[i + 1]` of the
//! same row (Hugging Face's shift); a row's last token and ignored labels carry none.

use super::adapter_set::AdapterSet;
use super::embed_rows::EmbeddingRows;
use super::step_ids::{EMPTY, StepIds};
use super::step_spill::{CheckpointSpill, InputStore, save_layer_input};
use super::step_weights::{StepWeights, backward_next, forward_next};
use crate::train::plan_llama::{
    AdapterShape, Bwd, LlamaSchedule, TARGETS, TrainShape, llama_training_plan,
};
use edgetune_core::adapters::{Adapter, Pass};
use edgetune_core::backend::{Backend, CpuBackend};
use edgetune_core::data::{Batch, IGNORE};
use edgetune_core::memory::arena::Arena;
use edgetune_core::memory::plan::{Category, Plan};
use edgetune_core::model::stream::{HEAD, StreamStats, WeightStream};
use edgetune_core::model::{BackendModel, LlamaConfig};
use edgetune_core::{Error, Result};

/// Which pass of a layer's forward runs (it decides the schedule steps and the buffers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Forward,
    Recompute,
}

/// A training step's engine: the plan, its arena, and per-step host scratch (all sized once).
pub struct TrainStep {
    pub(super) cfg: LlamaConfig,
    pub(super) shape: TrainShape,
    pub(super) sched: LlamaSchedule,
    plan: Plan,
    pub(super) arena: Arena,
    pub(super) ids: StepIds,
    /// Per slot (`layer · 7 + target`): the adapter's parameter count (0: none).
    pub(super) n_params: Vec<usize>,
    /// Shifted targets `[T]` of the current micro-batch.
    pub(super) targets: Vec<i32>,
    /// `(first token, tokens)` of each causal segment of the current micro-batch.
    pub(super) segments: Vec<(usize, usize)>,
    /// The embedding gather by positioned reads ([`EmbeddingRows`]); `None`: through the map.
    embed_rows: Option<EmbeddingRows>,
    /// Streamed layer weights (`--weights stream`, model/stream.rs); `None`: the model's own.
    stream: Option<WeightStream>,
    /// The layer-input spill file (`--checkpoints-on disk`, step_spill.rs).
    pub(super) spill: Option<CheckpointSpill>,
    /// ResLoRA's cross-layer module inputs and pending gradients (`None` without ResLoRA).
    pub(super) res: Option<super::step_reslora::ResStore>,
    /// A streamed head's per-token log-sum-exp statistics `[T]` (step_loss.rs); empty unless
    /// the stream streams its head.
    pub(super) head_lse: Vec<edgetune_core::backend::cpu::cross_entropy_vocab::RowLse>,
    /// Multi-task loss (MT-LoRA, docs/METHODS.md#mt-lora, #task-weights): the task of each row of
    /// the current micro-batch, the weight `w_t` of each task (empty: one plain loss), and the last
    /// micro-batch's per-task `(Σ loss, targets)` (unweighted).
    pub(super) row_tasks: Vec<u32>,
    pub(super) task_weights: Vec<f32>,
    pub(super) task_losses: Vec<(f64, usize)>,
    /// The KL anchor (`--kl-anchor`, step_kl.rs); `None`: off.
    pub(super) kl: Option<super::step_kl::KlAnchor>,
    /// Set during the KL anchor's base pass: the layers run with every adapter off.
    pub(super) adapters_off: bool,
}

/// The per-projection shapes of `set`'s adapters (the largest over layers).
pub fn adapter_shapes(set: &AdapterSet) -> [Option<AdapterShape>; 7] {
    let mut shapes: [Option<AdapterShape>; 7] = [None; 7];
    for (_, target, a) in set.iter() {
        let i = super::adapter_set::target_index(target);
        let w = a.workspace();
        let largest = (0..)
            .map_while(|p| a.param(p))
            .map(<[f32]>::len)
            .max()
            .unwrap_or(0);
        let new = AdapterShape {
            saved_per_token: w.saved_per_token,
            scratch_per_token: w.scratch_per_token,
            n_params: a.n_params(),
            largest_param: largest,
        };
        shapes[i] = Some(match shapes[i] {
            None => new,
            Some(s) => AdapterShape {
                saved_per_token: s.saved_per_token.max(new.saved_per_token),
                scratch_per_token: s.scratch_per_token.max(new.scratch_per_token),
                n_params: s.n_params.max(new.n_params),
                largest_param: s.largest_param.max(new.largest_param),
            },
        });
    }
    shapes
}

/// The plan of one step of `shape` on `cfg`, with the step's zero-length [`EMPTY`] buffer.
pub fn step_plan(cfg: &LlamaConfig, shape: &TrainShape) -> Result<Plan> {
    let mut b = llama_training_plan(cfg, shape)?;
    let s = LlamaSchedule::new(cfg.n_layer)?;
    b.add_buffer(EMPTY, Category::Temporary, 0, 0, s.optimizer());
    b.pack()
}

impl TrainStep {
    /// Plans the step for `set`'s adapters on `model` and allocates the arena.
    pub fn new(
        model: &BackendModel<'_, CpuBackend>,
        set: &AdapterSet,
        shape: TrainShape,
    ) -> Result<Self> {
        let cfg = model.config.clone();
        set.check_fits(&cfg)?;
        if shape.adapters != adapter_shapes(set) {
            return Err(Error::Invalid(
                "training step: the shape's adapters differ from the adapter set's".into(),
            ));
        }
        let plan = step_plan(&cfg, &shape)?;
        let arena = Arena::new(&plan)?;
        let ids = StepIds::resolve(&plan, cfg.n_layer, shape.checkpointing)?;
        let mut n_params = vec![0; cfg.n_layer * TARGETS.len()];
        for (layer, target, a) in set.iter() {
            n_params[layer * TARGETS.len() + super::adapter_set::target_index(target)] =
                a.n_params();
        }
        let t = shape.seq_len * shape.micro_batch;
        let res = super::step_reslora::ResStore::new(set, cfg.n_layer, t);
        let rows = shape.micro_batch;
        Ok(TrainStep {
            sched: LlamaSchedule::new(cfg.n_layer)?,
            cfg,
            shape,
            plan,
            arena,
            ids,
            n_params,
            targets: vec![IGNORE; t],
            segments: Vec::with_capacity(t),
            embed_rows: None,
            stream: None,
            spill: None,
            res,
            head_lse: Vec::new(),
            row_tasks: vec![0; rows],
            task_weights: Vec::new(),
            task_losses: Vec::new(),
            kl: None,
            adapters_off: false,
        })
    }

    /// Gathers the embedding rows with `rows` (sized for at least [`TrainStep::tokens`]) instead
    /// of through the map, so `token_embd` stays out of the process's memory.
    pub fn set_embedding_rows(&mut self, rows: EmbeddingRows) -> Result<()> {
        if rows.capacity() < self.tokens() {
            return Err(Error::Invalid(format!(
                "training step: the embedding staging buffer holds {} rows, a micro-batch has {}",
                rows.capacity(),
                self.tokens()
            )));
        }
        self.embed_rows = Some(rows);
        Ok(())
    }

    /// Reads the layers (and the head) through `stream` instead of the model's map: the same
    /// arithmetic on the same bytes, so losses and gradients are bit-identical.
    pub fn set_weight_stream(&mut self, stream: WeightStream) -> Result<()> {
        if stream.n_layer() != self.cfg.n_layer {
            return Err(Error::Invalid(format!(
                "training step: the weight stream has {} layers, the model {}",
                stream.n_layer(),
                self.cfg.n_layer
            )));
        }
        if stream.head_streamed() != self.shape.stream_head {
            return Err(Error::Invalid(format!(
                "training step: planned with the head {}, the weight stream has it {}",
                if self.shape.stream_head {
                    "streamed"
                } else {
                    "resident"
                },
                if stream.head_streamed() {
                    "streamed"
                } else {
                    "resident"
                }
            )));
        }
        self.head_lse = if stream.head_streamed() {
            vec![edgetune_core::backend::cpu::cross_entropy_vocab::RowLse::EMPTY; self.tokens()]
        } else {
            Vec::new()
        };
        self.stream = Some(stream);
        Ok(())
    }

    /// The weight stream's counters (`None` when the weights are mapped).
    pub fn stream_stats(&self) -> Option<StreamStats> {
        self.stream.as_ref().map(WeightStream::stats)
    }

    /// Bytes the weight stream holds (staging buffers and the resident head; 0 when mapped).
    pub fn stream_bytes(&self) -> usize {
        self.stream
            .as_ref()
            .map_or(0, |s| s.staging_bytes() + s.head_bytes())
    }

    /// The step's shape (what it was planned for).
    pub fn shape(&self) -> &TrainShape {
        &self.shape
    }

    /// How the layer inputs are kept (from the shape).
    pub(super) fn input_store(&self) -> InputStore {
        InputStore {
            bf16: self.shape.checkpoint_bf16,
            on_disk: self.shape.checkpoints_on_disk,
        }
    }

    /// Bytes of one layer's slot in the spill file of a step planned with the layer inputs on
    /// disk.
    pub fn checkpoint_slot_bytes(&self) -> usize {
        self.input_store().slot_bytes(self.tokens(), self.cfg.dim)
    }

    /// Keeps the layer inputs in `spill` (a step planned with them on disk needs one).
    pub fn set_checkpoint_spill(&mut self, spill: CheckpointSpill) -> Result<()> {
        if !self.shape.checkpoints_on_disk || spill.slot_bytes() != self.checkpoint_slot_bytes() {
            return Err(Error::Invalid(format!(
                "training step: a spill file of {}-byte slots for a step planned {} (slots of \
                 {} bytes)",
                spill.slot_bytes(),
                if self.shape.checkpoints_on_disk {
                    "with the layer inputs on disk"
                } else {
                    "with the layer inputs in memory"
                },
                self.checkpoint_slot_bytes()
            )));
        }
        self.spill = Some(spill);
        Ok(())
    }

    /// Bytes of the spill file (0 when the layer inputs stay in memory).
    pub fn spill_bytes(&self) -> u64 {
        self.spill.as_ref().map_or(0, CheckpointSpill::file_bytes)
    }

    /// The packed plan (for reports).
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Bytes of the arena.
    pub fn arena_bytes(&self) -> usize {
        self.arena.bytes()
    }

    /// Frees the arena when a device engine runs the micro-batches instead (engine.rs), so the
    /// host does not hold a second, unused step; any later CPU micro-batch is an error.
    pub fn release_arena(&mut self) {
        self.arena.release();
    }

    /// Turns on the multi-task loss `Σ_t w_t·L_t` (docs/METHODS.md#mt-lora): row `r`'s loss
    /// gradient is scaled by `weights[batch.tasks[r]]`, and [`TrainStep::task_losses`] reports each
    /// task's unweighted `(Σ loss, targets)`. Empty `weights`: off (one plain loss, the default).
    pub fn set_task_weights(&mut self, weights: &[f32]) -> Result<()> {
        if let Some(w) = weights.iter().find(|w| !w.is_finite() || **w < 0.0) {
            return Err(Error::Invalid(format!(
                "task weight {w} must be finite and >= 0"
            )));
        }
        self.task_weights.clear();
        self.task_weights.extend_from_slice(weights);
        self.task_losses.resize(weights.len(), (0.0, 0));
        Ok(())
    }

    /// Per task id: `(Σ loss, targets)` of the last micro-batch (empty when the multi-task
    /// loss is off).
    pub fn task_losses(&self) -> &[(f64, usize)] {
        &self.task_losses
    }

    /// Bytes of ResLoRA's cross-layer store, held outside the arena (0 without ResLoRA).
    pub fn reslora_bytes(&self) -> usize {
        self.res.as_ref().map_or(0, |r| r.bytes())
    }

    /// Tokens per micro-batch (`T`).
    pub fn tokens(&self) -> usize {
        self.shape.seq_len * self.shape.micro_batch
    }

    /// Forward, loss and backward of one micro-batch. The loss gradient is that of
    /// `loss_scale · Σ loss` (`1 / targets of the whole step` for a mean); `first` overwrites
    /// the adapter gradients, later micro-batches of the step add to them. `seed` is the
    /// dropout stream of this micro-batch. Returns `Σ loss` over its targets.
    pub fn micro_batch(
        &mut self,
        model: &BackendModel<'_, CpuBackend>,
        set: &AdapterSet,
        batch: &Batch,
        loss_scale: f32,
        first: bool,
        seed: u64,
    ) -> Result<f64> {
        if !first && !self.shape.accumulate {
            return Err(Error::Invalid(
                "training step: planned without gradient accumulation".into(),
            ));
        }
        self.check_model(model)?;
        self.with_weights(model, |step, w| {
            step.micro_batch_on(w, set, batch, loss_scale, first, seed)
        })
    }

    /// Runs `f` on the step's weights: the model's map, or the attached stream (taken out of
    /// the step for the call and put back whatever `f` returns).
    fn with_weights<R>(
        &mut self,
        model: &BackendModel<'_, CpuBackend>,
        f: impl FnOnce(&mut Self, &mut StepWeights<'_, '_>) -> Result<R>,
    ) -> Result<R> {
        let mut stream = self.stream.take();
        let mut w = StepWeights {
            model,
            stream: stream.as_mut(),
        };
        let result = f(self, &mut w);
        self.stream = stream;
        result
    }

    fn micro_batch_on(
        &mut self,
        w: &mut StepWeights<'_, '_>,
        set: &AdapterSet,
        batch: &Batch,
        loss_scale: f32,
        first: bool,
        seed: u64,
    ) -> Result<f64> {
        let (pass, loss, lowest) = self.forward_and_loss(w, set, batch, loss_scale, seed)?;
        for l in (lowest..self.cfg.n_layer).rev() {
            self.backward_layer(w, l, lowest, set, pass, first)?;
            set.release_layer(l)?;
        }
        Ok(loss)
    }

    /// One micro-batch (the step's only one) with the fused per-layer update
    /// ([`TrainShape::fused_update`]): right after layer `l`'s backward, `update(l, self, set)`
    /// runs while the layer's gradients are live (read them with [`TrainStep::grads_mut`]);
    /// they are dropped before the next layer's. The layers below `l` have not run their
    /// backward yet and use their adapters as they were. A non-finite loss returns before the
    /// backward, so nothing is updated.
    #[allow(clippy::too_many_arguments)]
    pub fn micro_batch_fused(
        &mut self,
        model: &BackendModel<'_, CpuBackend>,
        set: &mut AdapterSet,
        batch: &Batch,
        loss_scale: f32,
        seed: u64,
        update: &mut dyn FnMut(usize, &mut TrainStep, &mut AdapterSet) -> Result<()>,
    ) -> Result<f64> {
        if !self.shape.fused_update {
            return Err(Error::Invalid(
                "training step: planned without the fused per-layer update".into(),
            ));
        }
        self.check_model(model)?;
        self.with_weights(model, |step, w| {
            let (pass, loss, lowest) = step.forward_and_loss(w, set, batch, loss_scale, seed)?;
            if !loss.is_finite() {
                return Ok(loss);
            }
            for l in (lowest..step.cfg.n_layer).rev() {
                step.backward_layer(w, l, lowest, set, pass, true)?;
                update(l, step, set)?;
                set.release_layer(l)?;
            }
            Ok(loss)
        })
    }

    /// Embedding, every layer's forward and the loss (with the KL anchor's base pass first).
    /// Returns the pass, `Σ loss` and the lowest layer the backward reaches.
    fn forward_and_loss(
        &mut self,
        w: &mut StepWeights<'_, '_>,
        set: &AdapterSet,
        batch: &Batch,
        loss_scale: f32,
        seed: u64,
    ) -> Result<(Pass, f64, usize)> {
        let pass = self.prepare(w, batch, true, seed)?;
        // The KL anchor: the base model's hidden states first (step_kl.rs).
        let anchored = self.weigh_anchored_tokens(batch);
        if anchored {
            self.base_pass(w, set, pass)?;
        }
        // Nothing below the lowest adapted layer is trained: the backward stops there.
        let n_layer = self.cfg.n_layer;
        let lowest = set.first_adapted_layer().unwrap_or(n_layer);
        let loss = if w.head_streamed() {
            // The head's chunks evict the top layer: the backward reads it again.
            self.forward_all(w, set, pass, Some(HEAD))?;
            let top = n_layer.checked_sub(1).filter(|&l| l >= lowest);
            self.loss(w, loss_scale, anchored, top)?
        } else {
            // The top layer stays staged for the backward, which reads the one below next.
            let then = n_layer.checked_sub(2).filter(|&l| l >= lowest);
            self.forward_all(w, set, pass, then)?;
            self.loss(w, loss_scale, anchored, None)?
        };
        if let Some(r) = &mut self.res {
            r.clear_pending();
        }
        Ok((pass, loss, lowest))
    }

    /// Layer `l`'s backward (its recompute first under checkpointing); `lowest`: where the
    /// backward stops (for the stream's next read).
    fn backward_layer(
        &mut self,
        w: &mut StepWeights<'_, '_>,
        l: usize,
        lowest: usize,
        set: &AdapterSet,
        pass: Pass,
        first: bool,
    ) -> Result<()> {
        let m = w.model;
        let checkpointing = self.shape.checkpointing;
        w.layer(l, backward_next(l, lowest), &mut |lw| {
            if checkpointing {
                self.layer_forward(m, lw, Phase::Recompute, l, set, pass)?;
            }
            self.layer_backward(m, lw, l, set, pass, first)
        })
    }

    /// The forward and the loss only (no dropout, no gradients): `(Σ loss, targets)` — for
    /// held-out evaluation.
    pub fn eval_loss(
        &mut self,
        model: &BackendModel<'_, CpuBackend>,
        set: &AdapterSet,
        batch: &Batch,
    ) -> Result<(f64, usize)> {
        self.check_model(model)?;
        let loss = self.with_weights(model, |step, w| {
            let pass = step.prepare(w, batch, false, 0)?;
            let then = if w.head_streamed() { HEAD } else { 0 };
            step.forward_all(w, set, pass, Some(then))?;
            step.loss(w, 0.0, false, Some(0))
        })?;
        let counted = self.targets.iter().filter(|&&t| t != IGNORE).count();
        Ok((loss, counted))
    }

    /// Number of loss targets of `batch` under the step's shift (a step's loss scale is one
    /// over their sum across its micro-batches).
    pub fn count_targets(batch: &Batch) -> usize {
        let l = batch.seq_len;
        (0..batch.batch_size)
            .map(|r| {
                batch.labels[r * l + 1..(r + 1) * l]
                    .iter()
                    .filter(|&&t| t != IGNORE)
                    .count()
            })
            .sum()
    }

    /// The gradients of the adapter in slot `layer · 7 + target` (after a micro-batch, or with
    /// the fused update inside its per-layer callback), in its parameter order; empty for an
    /// unadapted slot.
    pub fn grads_mut(&mut self, layer: usize, target_index: usize) -> Result<&mut [f32]> {
        let id = self
            .ids
            .layers
            .get(layer)
            .and_then(|l| l.grad.get(target_index))
            .copied()
            .unwrap_or(self.ids.empty);
        let n = self.n_params[layer * TARGETS.len() + target_index.min(6)];
        // Fused, a layer's gradients live only through its own backward.
        let at = if self.shape.fused_update && layer < self.cfg.n_layer {
            self.sched.bwd(layer, Bwd::AttnNorm)
        } else {
            self.sched.optimizer()
        };
        let [g] = self.arena.views_mut_at(at, [id])?;
        let len = n.min(g.len());
        Ok(&mut g[..len])
    }

    /// Checks the batch, fills the shifted targets and the segments, embeds the tokens.
    /// The model must be the one planned for.
    fn check_model(&self, model: &BackendModel<'_, CpuBackend>) -> Result<()> {
        if model.config != self.cfg {
            return Err(Error::Invalid(
                "training step: called with another model than it was planned for".into(),
            ));
        }
        Ok(())
    }

    fn prepare(
        &mut self,
        w: &StepWeights<'_, '_>,
        batch: &Batch,
        training: bool,
        seed: u64,
    ) -> Result<Pass> {
        let (b, l) = (self.shape.micro_batch, self.shape.seq_len);
        batch.check_shape(b, l, "training step")?;
        let vocab = self.cfg.n_vocab;
        if let Some(i) = batch.ids.iter().position(|&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "training step: token id {} at row {}, position {} is outside the vocabulary \
                 ({vocab})",
                batch.ids[i],
                i / l,
                i % l
            )));
        }
        self.row_tasks.fill(0);
        if !self.task_weights.is_empty() {
            let nt = self.task_weights.len();
            for (r, &t) in batch.tasks.iter().enumerate().take(b) {
                if t as usize >= nt {
                    return Err(Error::Invalid(format!(
                        "training step: row {r} has task {t}, {nt} task weights are set"
                    )));
                }
                self.row_tasks[r] = t;
            }
        }
        batch.shifted_targets_and_segments(&mut self.targets, &mut self.segments);
        let [x0] = self
            .arena
            .views_mut_at(self.sched.embed(), [self.ids.layers[0].x])?;
        match &mut self.embed_rows {
            Some(rows) => rows.gather(&batch.ids, x0)?,
            None => CpuBackend.embedding(&w.embedding()?, &batch.ids, x0)?,
        }
        // Layer 0's input kept for its recompute (bf16 or on disk: step_spill.rs).
        let (store, spill) = (self.input_store(), self.spill.as_ref());
        let embed = self.sched.embed();
        save_layer_input(&mut self.arena, &self.ids, store, spill, 0, embed)?;
        Ok(Pass {
            n: b * l,
            training,
            seed,
        })
    }

    /// Every layer's forward; `then`: the layer asked for after the last one.
    pub(super) fn forward_all(
        &mut self,
        w: &mut StepWeights<'_, '_>,
        set: &AdapterSet,
        pass: Pass,
        then: Option<usize>,
    ) -> Result<()> {
        let (m, n) = (w.model, self.cfg.n_layer);
        for l in 0..n {
            w.layer(l, forward_next(l, n, then), &mut |lw| {
                self.layer_forward(m, lw, Phase::Forward, l, set, pass)
            })?;
            // Paged adapter weights (`--adapter-weights disk`): this layer's are not read again
            // before its backward.
            set.release_layer(l)?;
        }
        Ok(())
    }
}

/// The adapter of slot (`layer`, `TARGETS[i]`), if any.
pub(super) fn adapter_at(set: &AdapterSet, layer: usize, i: usize) -> Option<&dyn Adapter> {
    set.get(layer, edgetune_core::adapters::Target::ALL[i])
}
