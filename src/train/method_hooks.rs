//! What a method adds to the trainer's step, around the forward/backward and the optimizer
//! update (docs/METHODS.md#orthogonal-regularizer, #rank-allocation, #dylora-and-qdylora,
//! #task-weights,
//! #layer-importance, #hook-order). Order within one optimizer step `t`
//! (1-based step number `t + 1`):
//!
//! ```text
//! before_step(t+1)   every adapter's on_step (DyLoRA draws the step's rank)
//! weigh_tasks        MT-LoRA: per-task targets of the step → the step's row weights
//! micro-batches      route (MT-LoRA: row tasks into every adapter), forward, loss,
//!                    backward → adapter gradients in the step's arena; MT-LoRA adds the
//!                    micro-batch's per-task losses
//! after_backward     AdaLoRA: += γ/n_mat·∇R (orthogonal regularizer) per AdaLoRA layer
//!                    layerimp: w_i ← τ·w_i + (1−τ)·mean|g_i|, g_i ← w_i·g_i per adapted linear
//! optimizer          global-norm clip, then the update (LoRA+ groups by tensor)
//! after_update(t)    MT-LoRA: per-task mean losses, adaptive task weights (method_tasks.rs)
//!                    AdaLoRA: importance EMAs with the (clipped) gradients, the cubic budget,
//!                    masking e_i (PEFT's update_and_allocate(t), 0-based t)
//! ```
//!
//! The allocation mirrors [`crate::adapters::adalora_alloc::RankAllocator`] but walks the
//! adapter set and the step's gradient buffers in place (the allocator takes slices of
//! `&mut AdaLora` and of gradients, which would have to be collected, i.e. allocated, every
//! step). The score buffers `[L·r0]` are sized once here; nothing is allocated per step.
//!
//! Layer importance ("layerimp") is per adapted linear (one weight per (layer, target)
//! slot, the same granularity as AdaLoRA's `n_mat`). Under AdamW a constant per-tensor
//! gradient factor nearly cancels (Adam normalises by `√v`); it still changes the global norm
//! the clipping sees, the `ε` regime and SGD — that is the study's procedure as written.

use super::adapter_set::{AdapterSet, target_index};
use super::method::{Method, MethodOptions};
use super::method_tasks::{self, MtTasks};
use super::optimizer::Optimizer;
use super::step::TrainStep;
use crate::adapters::Target;
use crate::adapters::adalora::{AdaLora, AdaloraConfig};
use crate::data::Batch;
use crate::{Error, Result};

/// AdaLoRA's global allocator state (the per-layer EMAs live in the adapters).
#[derive(Clone, Debug)]
struct AdaAlloc {
    cfg: AdaloraConfig,
    layers: usize,
    /// Triplet scores of every AdaLoRA layer, slot order `[layers·r0]`.
    scores: Vec<f32>,
    /// A copy for the `k`-th selection.
    select: Vec<f32>,
}

/// The method's per-step hooks and their state.
#[derive(Clone, Debug)]
pub struct MethodHooks {
    method: Method,
    ada: Option<AdaAlloc>,
    /// Layer-importance weights per slot (`n_layer · 7`, unadapted slots stay 1; empty unless
    /// the method is layerimp).
    layer_weights: Vec<f32>,
    tau: f32,
    /// The last step's orthogonal-regularizer value `γ·R` (AdaLoRA), for reporting.
    last_reg: f64,
    /// MT-LoRA's multi-task loss state.
    mt: Option<MtTasks>,
}

impl MethodHooks {
    /// The hooks of `method` for `set` (AdaLoRA: every AdaLoRA adapter of the set takes part
    /// in the allocation, with the first one's configuration).
    pub fn new(method: Method, set: &AdapterSet, layerimp_tau: f32) -> Result<MethodHooks> {
        let opts = MethodOptions {
            layerimp_tau,
            ..MethodOptions::default()
        };
        MethodHooks::with_options(method, set, &opts)
    }

    /// [`MethodHooks::new`] with all of the run's method options (MT-LoRA's task weighting).
    pub fn with_options(
        method: Method,
        set: &AdapterSet,
        opts: &MethodOptions,
    ) -> Result<MethodHooks> {
        let layerimp_tau = opts.layerimp_tau;
        let mut ada = None;
        if method == Method::Adalora {
            let mut cfg = None;
            let mut layers = 0;
            for (l, t, a) in set.iter() {
                let Some(x) = a.downcast_ref::<AdaLora>() else {
                    return Err(Error::Invalid(format!(
                        "method adalora: adapter blk.{l}.{} is {}",
                        t.gguf_stem(),
                        a.method()
                    )));
                };
                let c = cfg.get_or_insert_with(|| x.config().clone());
                if x.init_rank() != c.init_r {
                    return Err(Error::Invalid(format!(
                        "method adalora: adapter blk.{l}.{} has init_r {}, the others {}",
                        t.gguf_stem(),
                        x.init_rank(),
                        c.init_r
                    )));
                }
                layers += 1;
            }
            if let Some(cfg) = cfg {
                cfg.validate()?;
                let n = layers * cfg.init_r;
                ada = Some(AdaAlloc {
                    cfg,
                    layers,
                    scores: vec![0.0; n],
                    select: vec![0.0; n],
                });
            }
        }
        Ok(MethodHooks {
            method,
            ada,
            layer_weights: if method == Method::Layerimp {
                vec![1.0; set.n_layer() * Target::ALL.len()]
            } else {
                Vec::new()
            },
            tau: layerimp_tau,
            last_reg: 0.0,
            mt: match method {
                Method::Mtlora => {
                    let mut mt = MtTasks::new(method_tasks::set_task_count(set), opts)?;
                    if opts.mtlora_skip_absent {
                        mt.skip_absent(set.param_infos().len());
                    }
                    Some(mt)
                }
                _ => None,
            },
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// Bytes of the hooks' own buffers (the plan counts them with the adapters' extras).
    pub fn bytes(&self) -> usize {
        4 * self.layer_weights.len()
            + self
                .ada
                .as_ref()
                .map_or(0, |a| 4 * (a.scores.len() + a.select.len()))
            + self.mt.as_ref().map_or(0, MtTasks::bytes)
    }

    /// MT-LoRA's task state (`None` for other methods).
    pub fn tasks(&self) -> Option<&MtTasks> {
        self.mt.as_ref()
    }

    /// Writable [`MethodHooks::tasks`] (checkpoint restore).
    pub fn tasks_mut(&mut self) -> Option<&mut MtTasks> {
        self.mt.as_mut()
    }

    /// The layer-importance weights, per slot (`layer · 7 + target`).
    pub fn layer_weights(&self) -> &[f32] {
        &self.layer_weights
    }

    /// Restores [`MethodHooks::layer_weights`] (from a checkpoint).
    pub fn set_layer_weights(&mut self, w: &[f32]) -> Result<()> {
        if w.len() != self.layer_weights.len() {
            return Err(Error::Invalid(format!(
                "layer-importance weights: {} values, the model has {} slots",
                w.len(),
                self.layer_weights.len()
            )));
        }
        self.layer_weights.copy_from_slice(w);
        Ok(())
    }

    /// `γ·R` of the last step (AdaLoRA; 0 otherwise).
    pub fn last_regularizer(&self) -> f64 {
        self.last_reg
    }

    /// Before the micro-batches of optimizer step `step` (1-based): every adapter's schedule
    /// hook.
    pub fn before_step(&mut self, set: &mut AdapterSet, step: u64) {
        for (_, _, a) in set.iter_mut() {
            a.on_step(step);
        }
    }

    /// MT-LoRA, before the micro-batches of a step: the step's row weights from `batches`.
    pub fn weigh_tasks(&mut self, batches: &[Batch], step: &mut TrainStep) -> Result<()> {
        match &mut self.mt {
            Some(mt) => mt.weigh(batches, step),
            None => Ok(()),
        }
    }

    /// MT-LoRA, before micro-batch `batch`: routes its rows to their tasks' LoRAs.
    pub fn route(&mut self, set: &mut AdapterSet, batch: &Batch) -> Result<()> {
        match self.mt {
            Some(_) => method_tasks::route(set, batch),
            None => Ok(()),
        }
    }

    /// MT-LoRA, after each micro-batch: its per-task losses.
    pub fn after_micro_batch(&mut self, step: &TrainStep) {
        if let Some(mt) = &mut self.mt {
            mt.add_micro_batch(step);
        }
    }

    /// After the backward of every micro-batch, before clipping and the update.
    pub fn after_backward(&mut self, step: &mut TrainStep, set: &AdapterSet) -> Result<()> {
        if let Some(ada) = &self.ada {
            let coef = ada.cfg.orth_coef(ada.layers);
            let mut reg = 0.0;
            for (layer, target, a) in set.iter() {
                if let Some(x) = a.downcast_ref::<AdaLora>() {
                    let g = step.grads_mut(layer, target_index(target))?;
                    reg += x.orth_regularizer(coef, g)?;
                }
            }
            self.last_reg = reg;
        }
        if self.method == Method::Layerimp {
            let tau = self.tau;
            for (layer, target, _) in set.iter() {
                let slot = layer * Target::ALL.len() + target_index(target);
                let g = step.grads_mut(layer, target_index(target))?;
                let mean_abs = if g.is_empty() {
                    0.0
                } else {
                    g.iter().map(|v| v.abs() as f64).sum::<f64>() / g.len() as f64
                };
                let w = &mut self.layer_weights[slot];
                *w = tau * *w + (1.0 - tau) * mean_abs as f32;
                let f = *w;
                g.iter_mut().for_each(|v| *v *= f);
            }
        }
        Ok(())
    }

    /// Just before the optimizer update: MT-LoRA's skip mask of absent tasks (with
    /// `mtlora_skip_absent`; otherwise every parameter is updated).
    pub fn before_update(&mut self, set: &AdapterSet, opt: &mut Optimizer) -> Result<()> {
        match &mut self.mt {
            Some(mt) => opt.set_skip(mt.skip_mask(set)),
            None => Ok(()),
        }
    }

    /// After the optimizer update of step `t` (0-based: steps completed before it).
    pub fn after_update(
        &mut self,
        t: u64,
        step: &mut TrainStep,
        set: &mut AdapterSet,
    ) -> Result<()> {
        if let Some(mt) = &mut self.mt {
            mt.finish_step(t + 1)?;
        }
        if let Some(ada) = &mut self.ada {
            ada.after_update(t, step, set)?;
            // Its importance scores and masks read and write every adapter: paged weights
            // (`--adapter-weights disk`) go back to their file.
            set.release_all()?;
        }
        Ok(())
    }
}

impl AdaAlloc {
    /// AdaLoRA after the optimizer update of step `t`: importance, budget masking, and the
    /// final freeze of the kept components.
    fn after_update(&mut self, t: u64, step: &mut TrainStep, set: &mut AdapterSet) -> Result<()> {
        let tf = self.cfg.total_step.saturating_sub(self.cfg.tfinal);
        let (budget, mask) = self.cfg.budget(t, self.layers);
        if t > tf {
            for (_, _, a) in set.iter_mut() {
                if let Some(x) = a.downcast_mut::<AdaLora>() {
                    x.apply_keep();
                }
            }
            return Ok(());
        }
        if t < tf {
            for (layer, target, a) in set.iter_mut() {
                if let Some(x) = a.downcast_mut::<AdaLora>() {
                    x.update_importance(step.grads_mut(layer, target_index(target))?)?;
                }
            }
        }
        if t == tf || mask {
            self.mask_to_budget(set, budget)?;
        }
        if t == tf {
            for (_, _, a) in set.iter_mut() {
                if let Some(x) = a.downcast_mut::<AdaLora>() {
                    x.reset_importance();
                }
            }
        }
        Ok(())
    }

    /// Masks the `b_init − budget` least important components over all AdaLoRA layers (ties:
    /// every `S_i ≤ thr`), as `RankAllocator::mask_to_budget`.
    fn mask_to_budget(&mut self, set: &mut AdapterSet, budget: usize) -> Result<()> {
        let r = self.cfg.init_r;
        let k = (self.layers * r).saturating_sub(budget);
        if k == 0 {
            return Ok(());
        }
        let mut chunks = self.scores.chunks_mut(r);
        for (_, _, a) in set.iter() {
            if let Some(x) = a.downcast_ref::<AdaLora>()
                && let Some(s) = chunks.next()
            {
                x.triplet_scores(s)?;
            }
        }
        self.select.copy_from_slice(&self.scores);
        let (_, &mut thr, _) = self.select.select_nth_unstable_by(k - 1, f32::total_cmp);
        let mut chunks = self.scores.chunks(r);
        for (_, _, a) in set.iter_mut() {
            if let Some(x) = a.downcast_mut::<AdaLora>()
                && let Some(s) = chunks.next()
            {
                x.mask_scores(s, thr)?;
            }
        }
        Ok(())
    }
}
