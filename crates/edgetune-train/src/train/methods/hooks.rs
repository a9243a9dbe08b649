//! The step hooks of AdaLoRA ([`BudgetHooks`]: the orthogonal regularizer, importance, rank
//! budget and masking over every adapter with a
//! [`RankBudget`](edgetune_core::adapters::RankBudget)) and of layer importance ([`LayerWeights`]:
//! one EMA gradient weight per adapted linear), built by their
//! [`MethodImpl::hooks`](super::MethodImpl::hooks). MT-LoRA's are `MtTasks`
//! (`crates/edgetune-train/src/train/method_tasks.rs`). The order of the hooks within a step is
//! `crates/edgetune-train/src/train/method_hooks.rs`'s module doc.
//!
//! The allocation mirrors [`edgetune_core::adapters::adalora_alloc::RankAllocator`] but walks the
//! adapter set and the step's gradient buffers in place (the allocator takes slices of
//! `&mut AdaLora` and of gradients, which would have to be collected, i.e. allocated, every
//! step). The score buffers `[L·r0]` are sized once here; nothing is allocated per step.
//!
//! Layer importance ("layerimp") is per adapted linear (one weight per (layer, target)
//! slot, the same granularity as AdaLoRA's `n_mat`). Under AdamW a constant per-tensor
//! gradient factor nearly cancels (Adam normalises by `√v`); it still changes the global norm
//! the clipping sees, the `ε` regime and SGD — that is the study's procedure as written.

use crate::train::adapter_set::{AdapterSet, target_index};
use crate::train::method_hooks::StepHooks;
use crate::train::step::TrainStep;
use edgetune_core::adapters::adalora::AdaloraConfig;
use edgetune_core::adapters::{StateSource, StateTensor, Target};
use edgetune_core::{Error, Result};

/// `layerimp.weights` `[n_layer · 7]` in the method state.
const LAYERIMP: &str = "layerimp.weights";

/// AdaLoRA's global allocator state (the per-layer EMAs live in the adapters).
#[derive(Clone, Debug)]
pub struct BudgetHooks {
    cfg: AdaloraConfig,
    layers: usize,
    /// Triplet scores of every budgeted adapter, slot order `[layers·r0]`.
    scores: Vec<f32>,
    /// A copy for the `k`-th selection.
    select: Vec<f32>,
    /// The last step's orthogonal-regularizer value `γ·R`, for reporting.
    last_reg: f64,
}

impl BudgetHooks {
    /// The hooks over every adapter of `set`, which must all take part in the budget, with the
    /// same `r0` (the first one's configuration rules). `None` for an empty set. `method`
    /// names the run's method in errors.
    pub fn new(set: &AdapterSet, method: &str) -> Result<Option<BudgetHooks>> {
        let mut cfg: Option<AdaloraConfig> = None;
        let mut layers = 0;
        for (l, t, a) in set.iter() {
            let Some(x) = a.rank_budget() else {
                return Err(Error::Invalid(format!(
                    "method {method}: adapter blk.{l}.{} is {}",
                    t.gguf_stem(),
                    a.method()
                )));
            };
            let c = cfg.get_or_insert_with(|| x.budget_config().clone());
            if x.init_rank() != c.init_r {
                return Err(Error::Invalid(format!(
                    "method {method}: adapter blk.{l}.{} has init_r {}, the others {}",
                    t.gguf_stem(),
                    x.init_rank(),
                    c.init_r
                )));
            }
            layers += 1;
        }
        let Some(cfg) = cfg else { return Ok(None) };
        cfg.validate()?;
        let n = layers * cfg.init_r;
        Ok(Some(BudgetHooks {
            cfg,
            layers,
            scores: vec![0.0; n],
            select: vec![0.0; n],
            last_reg: 0.0,
        }))
    }

    /// Masks the `b_init − budget` least important components over all budgeted adapters
    /// (ties: every `S_i ≤ thr`), as `RankAllocator::mask_to_budget`.
    fn mask_to_budget(&mut self, set: &mut AdapterSet, budget: usize) -> Result<()> {
        let r = self.cfg.init_r;
        let k = (self.layers * r).saturating_sub(budget);
        if k == 0 {
            return Ok(());
        }
        let mut chunks = self.scores.chunks_mut(r);
        for (_, _, a) in set.iter() {
            if let Some(x) = a.rank_budget()
                && let Some(s) = chunks.next()
            {
                x.triplet_scores(s)?;
            }
        }
        self.select.copy_from_slice(&self.scores);
        let (_, &mut thr, _) = self.select.select_nth_unstable_by(k - 1, f32::total_cmp);
        let mut chunks = self.scores.chunks(r);
        for (_, _, a) in set.iter_mut() {
            if let Some(x) = a.rank_budget_mut()
                && let Some(s) = chunks.next()
            {
                x.mask_scores(s, thr)?;
            }
        }
        Ok(())
    }

    /// After the optimizer update of step `t`: importance, budget masking, and the final
    /// freeze of the kept components.
    fn allocate(&mut self, t: u64, step: &mut TrainStep, set: &mut AdapterSet) -> Result<()> {
        let tf = self.cfg.total_step.saturating_sub(self.cfg.tfinal);
        let (budget, mask) = self.cfg.budget(t, self.layers);
        if t > tf {
            for (_, _, a) in set.iter_mut() {
                if let Some(x) = a.rank_budget_mut() {
                    x.apply_keep();
                }
            }
            return Ok(());
        }
        if t < tf {
            for (layer, target, a) in set.iter_mut() {
                if let Some(x) = a.rank_budget_mut() {
                    x.update_importance(step.grads_mut(layer, target_index(target))?)?;
                }
            }
        }
        if t == tf || mask {
            self.mask_to_budget(set, budget)?;
        }
        if t == tf {
            for (_, _, a) in set.iter_mut() {
                if let Some(x) = a.rank_budget_mut() {
                    x.reset_importance();
                }
            }
        }
        Ok(())
    }
}

impl StepHooks for BudgetHooks {
    fn bytes(&self) -> usize {
        4 * (self.scores.len() + self.select.len())
    }

    /// `+= γ/n_mat·∇R` (the orthogonal regularizer) on every budgeted adapter's gradients.
    fn after_backward(&mut self, step: &mut TrainStep, set: &AdapterSet) -> Result<()> {
        let coef = self.cfg.orth_coef(self.layers);
        let mut reg = 0.0;
        for (layer, target, a) in set.iter() {
            if let Some(x) = a.rank_budget() {
                let g = step.grads_mut(layer, target_index(target))?;
                reg += x.orth_regularizer(coef, g)?;
            }
        }
        self.last_reg = reg;
        Ok(())
    }

    /// PEFT's `update_and_allocate(t)` (0-based `t`).
    fn after_update(&mut self, t: u64, step: &mut TrainStep, set: &mut AdapterSet) -> Result<()> {
        self.allocate(t, step, set)?;
        // Its importance scores and masks read and write every adapter: paged weights
        // (`--adapter-weights disk`) go back to their file.
        set.release_all()
    }

    fn last_regularizer(&self) -> f64 {
        self.last_reg
    }
}

/// Layer importance's weights `w` per slot (`layer · 7 + target`, `[n_layer · 7]`; slots
/// without an adapter stay 1) and the EMA factor `τ`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    weights: Vec<f32>,
    tau: f32,
}

impl LayerWeights {
    /// All weights 1 for `set`'s `n_layer · 7` slots.
    pub fn new(set: &AdapterSet, tau: f32) -> LayerWeights {
        LayerWeights {
            weights: vec![1.0; set.n_layer() * Target::ALL.len()],
            tau,
        }
    }
}

impl StepHooks for LayerWeights {
    fn bytes(&self) -> usize {
        4 * self.weights.len()
    }

    /// `w_i ← τ·w_i + (1−τ)·mean|g_i|`, then `g_i ← w_i·g_i`, per adapted linear.
    fn after_backward(&mut self, step: &mut TrainStep, set: &AdapterSet) -> Result<()> {
        let tau = self.tau;
        for (layer, target, _) in set.iter() {
            let slot = layer * Target::ALL.len() + target_index(target);
            let g = step.grads_mut(layer, target_index(target))?;
            let mean_abs = if g.is_empty() {
                0.0
            } else {
                g.iter().map(|v| v.abs() as f64).sum::<f64>() / g.len() as f64
            };
            let w = self.weights.get_mut(slot).ok_or_else(|| {
                Error::Invalid(format!("layer importance: no weight for slot {slot}"))
            })?;
            *w = tau * *w + (1.0 - tau) * mean_abs as f32;
            let f = *w;
            g.iter_mut().for_each(|v| *v *= f);
        }
        Ok(())
    }

    fn checkpoint_state(&self) -> Vec<StateTensor<'_>> {
        vec![StateTensor::f32_vec(
            LAYERIMP,
            self.weights.as_slice().into(),
        )]
    }

    fn restore_state(&mut self, src: &dyn StateSource) -> Result<()> {
        let w = src.f32s(LAYERIMP, self.weights.len())?;
        self.weights.copy_from_slice(&w);
        Ok(())
    }
}
