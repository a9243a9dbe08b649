//! AdaLoRA's hyperparameters and its rank allocator (docs/METHODS.md#rank-allocation): the cubic
//! budget schedule and the global masking of the least important rank components across all AdaLoRA
//! layers, as PEFT's `RankAllocator` + `AdaLoraModel.update_and_allocate`. Also AdaLoRA's
//! [`RankBudget`] implementation (what the trainer's budget hooks call through
//! `Adapter::rank_budget`) and its importance state in checkpoints.
//!
//! # Call order (each optimizer step `t`)
//!
//! `backward` (every layer) → [`AdaLora::orth_regularizer`] (adds `γ/n_mat`·∇R) → optimizer
//! step → [`RankAllocator::update_and_allocate`]`(t, layers, grads)` → zero the gradients.
//! Importance thus uses the parameters after the update with this step's gradient, and a mask
//! set at `t` is what the forwards of `t + 1` see. (It is not [`super::Adapter::on_step`]: the
//! threshold is a `k`-th smallest score over every layer, and the scores need the gradients.)
//!
//! # Schedule (`b` counts rank components over all layers)
//!
//! ```text
//! b_init = L·init_r,  b_target = L·target_r,  T = total_step
//! t ≤ tinit            : b = b_init, no masking
//! t > T − tfinal       : b = b_target, the final keep flags re-applied every step
//! otherwise            : ρ = 1 − (t − tinit)/(T − tfinal − tinit)
//!                        b = floor((b_init − b_target)·ρ³ + b_target), mask when t mod ΔT = 0
//! mask to b            : thr = (b_init − b)-th smallest triplet score (1-based; none if 0);
//!                        e_i ← 0 for every S_i ≤ thr (ties can prune more)
//! t = T − tfinal       : mask to b_target without an importance update, freeze the flags,
//!                        clear the importance buffers
//! t < T − tfinal       : update importance first
//! ```

use std::borrow::Cow;

use super::adalora::AdaLora;
use super::{Adapter, RankBudget, StateSource, StateTensor};
use crate::{Error, Result};

/// AdaLoRA's importance state in a checkpoint (per slot): `Ī`, `Ū` (params layout,
/// `[n_params]`) and the keep flags `[r0]` (1.0 = kept).
const IPT: &str = "adalora_ipt";
const UNC: &str = "adalora_unc";
const KEEP: &str = "adalora_keep";

/// AdaLoRA hyperparameters; the defaults are PEFT's `AdaLoraConfig`
/// (docs/METHODS.md#rank-allocation) except `total_step`, which has none and must be set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AdaloraConfig {
    /// `r0`: components per layer at the start.
    pub init_r: usize,
    /// Average components per layer at the end.
    pub target_r: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub tinit: u64,
    pub tfinal: u64,
    /// Mask every `delta_t` steps while the budget shrinks.
    pub delta_t: u64,
    pub total_step: u64,
    pub beta1: f32,
    pub beta2: f32,
    /// `γ` of `L_task + γ·R` (PEFT 0.5; the original AdaLoRA 0.1).
    pub orth_reg_weight: f32,
}

impl Default for AdaloraConfig {
    fn default() -> Self {
        AdaloraConfig {
            init_r: 12,
            target_r: 8,
            alpha: 8.0,
            dropout: 0.0,
            tinit: 0,
            tfinal: 0,
            delta_t: 1,
            total_step: 0,
            beta1: 0.85,
            beta2: 0.85,
            orth_reg_weight: 0.5,
        }
    }
}

impl AdaloraConfig {
    /// Checks ranks, steps, betas, weights and dropout, naming the bad value.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Invalid(format!("AdaLoRA: {what}")));
        if self.init_r == 0 || self.target_r > self.init_r {
            return bad(format!(
                "needs 1 ≤ init_r and target_r ≤ init_r, got init_r {} target_r {}",
                self.init_r, self.target_r
            ));
        }
        if self.total_step == 0
            || self.tfinal >= self.total_step
            || self.tinit >= self.total_step - self.tfinal
        {
            return bad(format!(
                "needs total_step > 0 and tinit < total_step − tfinal, got total_step {} \
                 tinit {} tfinal {}",
                self.total_step, self.tinit, self.tfinal
            ));
        }
        if self.delta_t == 0 {
            return bad("delta_t must be at least 1".into());
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} {b} is outside [0, 1)"));
            }
        }
        if !(self.orth_reg_weight >= 0.0 && self.orth_reg_weight.is_finite()) {
            return bad(format!(
                "orth_reg_weight {} must be finite and ≥ 0",
                self.orth_reg_weight
            ));
        }
        if !self.alpha.is_finite() {
            return bad(format!("alpha {} is not finite", self.alpha));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is outside [0, 1)", self.dropout));
        }
        Ok(())
    }

    /// `k = alpha/(r0 + 1e-5)`, or `r0/(r0 + 1e-5)` when `alpha ≤ 0` (PEFT's `scaling /
    /// (ranknum + 1e-5)` with `ranknum = r0`).
    pub fn scale(&self) -> f32 {
        let r = self.init_r as f64;
        let scaling = if self.alpha > 0.0 {
            self.alpha as f64
        } else {
            r
        };
        (scaling / (r + 1e-5)) as f32
    }

    /// The budget `b` of step `t` for `layers` AdaLoRA layers, and whether `t` masks.
    pub fn budget(&self, t: u64, layers: usize) -> (usize, bool) {
        let (b_init, b_target) = (layers * self.init_r, layers * self.target_r);
        let tf = self.total_step.saturating_sub(self.tfinal);
        if t <= self.tinit {
            (b_init, false)
        } else if t > tf {
            (b_target, true)
        } else {
            let span = (tf - self.tinit) as f64;
            let rho = 1.0 - (t - self.tinit) as f64 / span;
            let b = ((b_init - b_target) as f64 * rho.powi(3) + b_target as f64).floor();
            (b as usize, t.is_multiple_of(self.delta_t))
        }
    }

    /// `γ/n_mat` with `n_mat = 2·layers`: the coefficient each layer's regularizer gets.
    pub fn orth_coef(&self, layers: usize) -> f32 {
        if layers == 0 {
            0.0
        } else {
            self.orth_reg_weight / (2 * layers) as f32
        }
    }
}

/// What [`RankAllocator::update_and_allocate`] did at one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allocation {
    /// The step's budget (components over all layers).
    pub budget: usize,
    /// The threshold used, when components were masked by score.
    pub threshold: Option<f32>,
    /// Whether importance was updated.
    pub updated: bool,
}

/// The global allocator over all AdaLoRA layers of a model.
#[derive(Clone, Debug)]
pub struct RankAllocator {
    cfg: AdaloraConfig,
    layers: usize,
    /// All triplet scores, layer after layer `[layers·init_r]`.
    scores: Vec<f32>,
    /// A copy for the `k`-th selection.
    select: Vec<f32>,
}

impl RankAllocator {
    /// For `layers` AdaLoRA layers (all built with `cfg`).
    pub fn new(cfg: &AdaloraConfig, layers: usize) -> Result<RankAllocator> {
        cfg.validate()?;
        let n = layers * cfg.init_r;
        Ok(RankAllocator {
            cfg: cfg.clone(),
            layers,
            scores: vec![0.0; n],
            select: vec![0.0; n],
        })
    }

    pub fn config(&self) -> &AdaloraConfig {
        &self.cfg
    }

    /// Bytes of the score buffers.
    pub fn bytes(&self) -> usize {
        4 * (self.scores.len() + self.select.len())
    }

    /// One step of the rank allocation (docs/METHODS.md#rank-allocation) after the optimizer
    /// update: `layers[l]` with its gradient `grads[l]` (the total loss's, in
    /// [`super::Adapter::params`] layout).
    pub fn update_and_allocate(
        &mut self,
        t: u64,
        layers: &mut [&mut AdaLora],
        grads: &[&[f32]],
    ) -> Result<Allocation> {
        if layers.len() != self.layers || grads.len() != self.layers {
            return Err(Error::Invalid(format!(
                "AdaLoRA allocator built for {} layers, given {} layers and {} gradients",
                self.layers,
                layers.len(),
                grads.len()
            )));
        }
        if let Some(l) = layers.iter().position(|a| a.init_rank() != self.cfg.init_r) {
            return Err(Error::Invalid(format!(
                "AdaLoRA layer {l} has init_r {}, the allocator {}",
                layers[l].init_rank(),
                self.cfg.init_r
            )));
        }
        let tf = self.cfg.total_step - self.cfg.tfinal;
        let (budget, mask) = self.cfg.budget(t, self.layers);
        if t > tf {
            for a in layers.iter_mut() {
                a.apply_keep();
            }
            return Ok(Allocation {
                budget,
                threshold: None,
                updated: false,
            });
        }
        let updated = t < tf;
        if updated {
            for (a, g) in layers.iter_mut().zip(grads) {
                a.update_importance(g)?;
            }
        }
        let threshold = if t == tf || mask {
            self.mask_to_budget(layers, budget)?
        } else {
            None
        };
        if t == tf {
            for a in layers.iter_mut() {
                a.reset_importance();
            }
        }
        Ok(Allocation {
            budget,
            threshold,
            updated,
        })
    }

    /// Masks the `b_init − budget` least important components (ties: every `S_i ≤ thr`).
    fn mask_to_budget(
        &mut self,
        layers: &mut [&mut AdaLora],
        budget: usize,
    ) -> Result<Option<f32>> {
        let r = self.cfg.init_r;
        let k = (self.layers * r).saturating_sub(budget);
        if k == 0 {
            return Ok(None);
        }
        for (a, s) in layers.iter().zip(self.scores.chunks_mut(r)) {
            a.triplet_scores(s)?;
        }
        self.select.copy_from_slice(&self.scores);
        let (_, &mut thr, _) = self.select.select_nth_unstable_by(k - 1, f32::total_cmp);
        for (a, s) in layers.iter_mut().zip(self.scores.chunks(r)) {
            a.mask_scores(s, thr)?;
        }
        Ok(Some(thr))
    }
}

/// The budget hooks' view of one AdaLoRA layer: the inherent methods, through the trait.
impl RankBudget for AdaLora {
    fn budget_config(&self) -> &AdaloraConfig {
        AdaLora::config(self)
    }
    fn init_rank(&self) -> usize {
        AdaLora::init_rank(self)
    }
    fn active_rank(&self) -> usize {
        AdaLora::active_rank(self)
    }
    fn orth_regularizer(&self, coef: f32, grads: &mut [f32]) -> Result<f64> {
        AdaLora::orth_regularizer(self, coef, grads)
    }
    fn update_importance(&mut self, grads: &[f32]) -> Result<()> {
        AdaLora::update_importance(self, grads)
    }
    fn reset_importance(&mut self) {
        AdaLora::reset_importance(self)
    }
    fn triplet_scores(&self, out: &mut [f32]) -> Result<()> {
        AdaLora::triplet_scores(self, out)
    }
    fn mask_scores(&mut self, scores: &[f32], threshold: f32) -> Result<()> {
        AdaLora::mask_scores(self, scores, threshold)
    }
    fn apply_keep(&mut self) {
        AdaLora::apply_keep(self)
    }
}

impl AdaLora {
    /// [`AdaLora::importance_state`] as checkpoint tensors (`Adapter::extra_state`).
    pub(super) fn importance_tensors(&self) -> Vec<StateTensor<'_>> {
        let (ipt, unc, keep) = self.importance_state();
        let keep: Vec<f32> = keep.iter().map(|&k| if k { 1.0 } else { 0.0 }).collect();
        vec![
            StateTensor::f32_vec(IPT, Cow::Borrowed(ipt)),
            StateTensor::f32_vec(UNC, Cow::Borrowed(unc)),
            StateTensor::f32_vec(KEEP, Cow::Owned(keep)),
        ]
    }

    /// Restores [`AdaLora::importance_tensors`] (`Adapter::load_extra_state`).
    pub(super) fn load_importance_tensors(&mut self, src: &dyn StateSource) -> Result<()> {
        let n = self.n_params();
        let ipt = src.f32s(IPT, n)?;
        let unc = src.f32s(UNC, n)?;
        let keep: Vec<bool> = src
            .f32s(KEEP, self.init_rank())?
            .into_iter()
            .map(|k| k != 0.0)
            .collect();
        self.set_importance_state(&ipt, &unc, &keep)
    }
}
