//! The trainer's optimizer: AdamW or SGD over every adapter tensor of an [`AdapterSet`], in the
//! set's parameter order (slot order, then each adapter's `params()` order), with the
//! learning-rate schedule and global-norm clipping applied across all of them — in one update
//! after the backward, or fused: layer by layer as the backward reaches each
//! ([`Optimizer::begin_fused`]).

use std::io::{Read, Write};

use super::adapter_set::{AdapterSet, target_index};
use super::config::{Decay, OptimizerKind, StatePlace, TrainConfig};
use super::engine::GradSlots;
use edgetune_core::adapters::Target;
use edgetune_core::optim::adamw::{AdamW, AdamWConfig};
use edgetune_core::optim::clip::{clip_scale, sum_squares};
use edgetune_core::optim::paged::StateStorage;
use edgetune_core::optim::schedule::Schedule;
use edgetune_core::optim::sgd::{Sgd, SgdConfig};
use edgetune_core::optim::{ParamSpec, StateBits, lora_plus_groups};
use edgetune_core::{Error, Result};

enum Inner {
    AdamW(AdamW),
    Sgd(Sgd),
}

/// AdamW or SGD with the run's schedule and clipping.
pub struct Optimizer {
    inner: Inner,
    schedule: Schedule,
    base_lr: f32,
    max_grad_norm: f64,
    /// Parameter ids (the set's parameter order) the next update leaves alone, tensor and
    /// state ([`Optimizer::set_skip`]); empty: every one is updated. Capacity for every
    /// parameter from the start, so setting it allocates nothing.
    skip: Vec<bool>,
    /// Number of parameter tensors (the length a skip mask must have).
    n_params: usize,
    /// Per layer: the id of its first parameter tensor (the fused update's numbering).
    layer_first_id: Vec<usize>,
    /// Σ g² per adapter slot (`layer · 7 + target`) of the fused step, summed in slot order at
    /// its end so the norm is bit-identical to the unfused one.
    slot_squares: Vec<f64>,
    /// The fused step under way ([`Optimizer::begin_fused`]).
    fused: Option<FusedStep>,
}

/// A fused step between [`Optimizer::begin_fused`] and [`Optimizer::finish_fused`].
#[derive(Clone, Copy, Debug)]
struct FusedStep {
    t: u64,
    lr: f32,
    /// The clipping factor (1 without clipping).
    scale: f32,
    /// The global norm measured by the norm-only pass, when clipping.
    norm: Option<f64>,
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateStats {
    /// The 1-based step number.
    pub step: u64,
    pub lr: f32,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Optimizer {
    /// The optimizer of `cfg` for `set`'s tensors, over `total_steps` steps (for the decay);
    /// AdamW state goes to RAM or to a file in `state_dir`.
    pub fn new(
        cfg: &TrainConfig,
        set: &AdapterSet,
        total_steps: u64,
        state_dir: &std::path::Path,
    ) -> Result<Optimizer> {
        // LoRA+ (docs/METHODS.md#lora-plus): group B (`lora_B`, 1-D tensors) at `lr·λ`; every other
        // method trains both groups at `lr`.
        let ratio = if cfg.method.spec().behaviour.scaled_b_lr {
            cfg.method_opts.loraplus_ratio
        } else {
            1.0
        };
        let groups = lora_plus_groups(ratio, cfg.weight_decay);
        let specs: Vec<ParamSpec> = set.param_infos().iter().map(|(_, p)| p.spec()).collect();
        let inner = match cfg.optimizer {
            OptimizerKind::AdamW => {
                let bits = StateBits::from_bits(cfg.optimizer_state_bits)?;
                let storage = match cfg.optimizer_state {
                    StatePlace::Ram => StateStorage::Ram,
                    StatePlace::Disk => StateStorage::Disk(state_dir.to_path_buf()),
                };
                Inner::AdamW(AdamW::new(
                    AdamWConfig::default(),
                    &groups,
                    &specs,
                    bits,
                    &storage,
                )?)
            }
            OptimizerKind::Sgd => {
                let sgd = SgdConfig {
                    momentum: cfg.momentum as f64,
                    ..SgdConfig::default()
                };
                Inner::Sgd(Sgd::new(sgd, &groups, &specs)?)
            }
        };
        let warmup = cfg.warmup_steps;
        let schedule = match cfg.decay {
            Decay::Constant if warmup == 0 => Schedule::Constant,
            Decay::Constant => Schedule::WarmupLinear {
                warmup,
                total: u64::MAX,
            },
            Decay::Linear => Schedule::WarmupLinear {
                warmup,
                total: total_steps,
            },
            Decay::Cosine => Schedule::WarmupCosine {
                warmup,
                total: total_steps,
                min_lr_ratio: 0.0,
            },
        };
        let mut layer_first_id = vec![0; set.n_layer() + 1];
        for (layer, _, a) in set.iter() {
            layer_first_id[layer + 1] += a.params().len();
        }
        for l in 0..set.n_layer() {
            layer_first_id[l + 1] += layer_first_id[l];
        }
        Ok(Optimizer {
            inner,
            schedule,
            base_lr: cfg.lr,
            max_grad_norm: cfg.max_grad_norm as f64,
            skip: Vec::with_capacity(specs.len()),
            n_params: specs.len(),
            layer_first_id,
            slot_squares: vec![0.0; set.n_layer() * Target::ALL.len()],
            fused: None,
        })
    }

    /// Completed steps.
    pub fn step_count(&self) -> u64 {
        match &self.inner {
            Inner::AdamW(o) => o.step_count(),
            Inner::Sgd(o) => o.step_count(),
        }
    }

    /// Makes the next updates skip the parameters `skip[id]` is true for (id: the set's
    /// parameter order): neither the tensor nor its optimizer state changes (MT-LoRA's absent
    /// tasks). AdamW's bias correction stays the global step's. `None`: update every one.
    pub fn set_skip(&mut self, skip: Option<&[bool]>) -> Result<()> {
        self.skip.clear();
        if let Some(s) = skip {
            if s.len() != self.n_params {
                return Err(Error::Invalid(format!(
                    "optimizer: a skip mask of {} parameters for {}",
                    s.len(),
                    self.n_params
                )));
            }
            self.skip.extend_from_slice(s);
        }
        Ok(())
    }

    /// The AdamW state bytes of parameter `id` (its moments; `None` for SGD or an unknown id),
    /// for checks that a skipped parameter's state did not move.
    pub fn tensor_state(&self, id: usize) -> Option<&[u8]> {
        match &self.inner {
            Inner::AdamW(o) => o.tensor_state(id),
            Inner::Sgd(_) => None,
        }
    }

    /// Bytes of optimizer state (AdamW moments; SGD momentum).
    pub fn state_bytes(&self) -> usize {
        match &self.inner {
            Inner::AdamW(o) => o.store_bytes(),
            Inner::Sgd(_) => 0,
        }
    }

    /// Clips the gradients left in `step`'s arena by their global norm, then updates every
    /// tensor of `set`. A non-finite norm is an error (nothing is updated). No allocation.
    pub fn update(
        &mut self,
        step: &mut impl GradSlots,
        set: &mut AdapterSet,
    ) -> Result<UpdateStats> {
        let n_layer = set.n_layer();
        let mut sq = 0f64;
        // The first adapter (in layer, then target order) with a non-finite gradient: the
        // squares of f32 values cannot overflow an f64, so a non-finite norm always has one.
        let mut first_bad = None;
        for layer in 0..n_layer {
            for target in Target::ALL {
                if set.get(layer, target).is_some() {
                    let g = step.grads(layer, target_index(target))?;
                    let s = sum_squares(g);
                    if !s.is_finite() && first_bad.is_none() {
                        let i = g.iter().position(|v| !v.is_finite()).unwrap_or(0);
                        first_bad = Some((layer, target, i, g.get(i).copied().unwrap_or(s as f32)));
                    }
                    sq += s;
                }
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            return Err(self.non_finite_gradient(norm, first_bad));
        }
        let scale = if self.max_grad_norm > 0.0 {
            clip_scale(norm, self.max_grad_norm)
        } else {
            1.0
        };
        let t = match &mut self.inner {
            Inner::AdamW(o) => o.begin_step(),
            Inner::Sgd(o) => o.begin_step(),
        };
        let lr = self.schedule.lr_at(self.base_lr, t);
        let mut id = 0;
        for (layer, target, a) in set.iter_mut() {
            let grads = step.grads_mut(layer, target_index(target))?;
            id = self.update_adapter(id, layer, target, a, grads, scale, lr)?;
            // Paged adapter weights (`--adapter-weights disk`): the update is this adapter's
            // last touch in the step (a fused step's layers are released by the step).
            a.release_params()?;
        }
        Ok(UpdateStats {
            step: t,
            lr,
            grad_norm: norm,
        })
    }

    /// Scales `grads` by `scale` and updates `a`'s tensors from them, the first being parameter
    /// `id`; returns the id after its last.
    #[allow(clippy::too_many_arguments)]
    fn update_adapter(
        &mut self,
        mut id: usize,
        layer: usize,
        target: Target,
        a: &mut dyn edgetune_core::adapters::Adapter,
        grads: &mut [f32],
        scale: f32,
        lr: f32,
    ) -> Result<usize> {
        if scale != 1.0 {
            grads.iter_mut().for_each(|g| *g *= scale);
        }
        let mut off = 0;
        let mut p = 0;
        while let Some(param) = a.param_mut(p) {
            let n = param.len();
            let g = grads.get(off..off + n).ok_or_else(|| {
                Error::Invalid(format!(
                    "optimizer: adapter blk.{layer}.{} has more parameters than gradients",
                    target.gguf_stem()
                ))
            })?;
            let skipped = self.skip.get(id) == Some(&true);
            match &mut self.inner {
                _ if skipped => {}
                Inner::AdamW(o) => o.update(id, param, g, lr)?,
                Inner::Sgd(o) => o.update(id, param, g, lr)?,
            }
            off += n;
            p += 1;
            id += 1;
        }
        Ok(id)
    }

    /// Adds `layer`'s Σ g² per adapter to the fused step's slot sums; the first non-finite
    /// gradient, if any, as `(target, element, value)`.
    fn measure_slots(
        &mut self,
        layer: usize,
        step: &mut impl GradSlots,
        set: &AdapterSet,
    ) -> Result<Option<(Target, usize, f32)>> {
        let mut bad = None;
        for target in Target::ALL {
            if set.get(layer, target).is_none() {
                continue;
            }
            let g = step.grads(layer, target_index(target))?;
            let s = sum_squares(g);
            if !s.is_finite() && bad.is_none() {
                let i = g.iter().position(|v| !v.is_finite()).unwrap_or(0);
                bad = Some((target, i, g.get(i).copied().unwrap_or(s as f32)));
            }
            let slot = layer * Target::ALL.len() + target_index(target);
            if let Some(sq) = self.slot_squares.get_mut(slot) {
                *sq = s;
            }
        }
        Ok(bad)
    }

    /// The global norm of the slot sums, added in slot order (as [`Optimizer::update`] does).
    fn slot_norm(&self) -> f64 {
        self.slot_squares
            .iter()
            .fold(0f64, |acc, &s| acc + s)
            .sqrt()
    }

    /// The norm-only pass of a clipped fused step: records `layer`'s gradient norms (call it
    /// for every layer the backward reaches, after [`Optimizer::clear_norm`]). Updates nothing.
    pub fn measure_layer(
        &mut self,
        layer: usize,
        step: &mut impl GradSlots,
        set: &AdapterSet,
    ) -> Result<()> {
        self.measure_slots(layer, step, set).map(|_| ())
    }

    /// Forgets the recorded gradient norms (before a norm-only pass).
    pub fn clear_norm(&mut self) {
        self.slot_squares.fill(0.0);
    }

    /// Starts a fused step (`--fused-update`): the step count and learning rate advance once,
    /// then [`Optimizer::update_layer`] runs for each layer as its backward ends. With
    /// clipping, `measured` is the norm-only pass's result ([`Optimizer::measure_layer`] over
    /// every layer); a non-finite one is an error and nothing is updated. Without clipping the
    /// norm is only reported, and a non-finite gradient is found layer by layer.
    pub fn begin_fused(&mut self, measured: bool) -> Result<()> {
        let (norm, scale) = if self.max_grad_norm > 0.0 {
            if !measured {
                return Err(Error::Invalid(
                    "optimizer: clipping in a fused step needs the norm-only pass first".into(),
                ));
            }
            let norm = self.slot_norm();
            if !norm.is_finite() {
                let bad = self.first_non_finite_slot();
                return Err(self.non_finite_gradient(norm, bad));
            }
            (Some(norm), clip_scale(norm, self.max_grad_norm))
        } else {
            (None, 1.0)
        };
        let t = match &mut self.inner {
            Inner::AdamW(o) => o.begin_step(),
            Inner::Sgd(o) => o.begin_step(),
        };
        let lr = self.schedule.lr_at(self.base_lr, t);
        self.clear_norm();
        self.fused = Some(FusedStep { t, lr, scale, norm });
        Ok(())
    }

    /// The slot with the first non-finite sum, as the error wants it (the element is not known
    /// after the norm-only pass: reported as element 0 with the sum).
    fn first_non_finite_slot(&self) -> Option<(usize, Target, usize, f32)> {
        let n = Target::ALL.len();
        self.slot_squares
            .iter()
            .position(|s| !s.is_finite())
            .map(|i| (i / n, Target::ALL[i % n], 0, self.slot_squares[i] as f32))
    }

    /// Updates `layer`'s adapters from its gradients in `step` (clipped by the fused step's
    /// factor). A non-finite gradient is an error; the layers above were already updated in
    /// memory, and no checkpoint is written for the step.
    pub fn update_layer(
        &mut self,
        layer: usize,
        step: &mut impl GradSlots,
        set: &mut AdapterSet,
    ) -> Result<()> {
        let Some(f) = self.fused else {
            return Err(Error::Invalid(
                "optimizer: update_layer outside a fused step (begin_fused first)".into(),
            ));
        };
        // With clipping the norm-only pass measured these very gradients (and found them
        // finite); without it, this is where the norm and a non-finite value are found.
        let bad = match f.norm {
            Some(_) => None,
            None => self.measure_slots(layer, step, set)?,
        };
        if let Some((target, i, v)) = bad {
            let e = self.non_finite_gradient(f64::NAN, Some((layer, target, i, v)));
            return Err(Error::NonFinite(format!(
                "{e} (fused update: the layers above blk.{layer} were already updated in memory; \
                 resume from the last checkpoint)"
            )));
        }
        let mut id = self.layer_first_id.get(layer).copied().unwrap_or(0);
        for target in Target::ALL {
            let Some(a) = set.get_mut(layer, target) else {
                continue;
            };
            let grads = step.grads_mut(layer, target_index(target))?;
            id = self.update_adapter(id, layer, target, a, grads, f.scale, f.lr)?;
        }
        Ok(())
    }

    /// Whether a fused step has begun and not finished (it stopped on an error part-way: the
    /// state is not one to save).
    pub fn fused_in_flight(&self) -> bool {
        self.fused.is_some()
    }

    /// Ends the fused step: its number, learning rate and the global gradient norm before
    /// clipping (the norm-only pass's, or the sum of the layers' as they were updated).
    pub fn finish_fused(&mut self) -> Result<UpdateStats> {
        let Some(f) = self.fused.take() else {
            return Err(Error::Invalid(
                "optimizer: finish_fused outside a fused step".into(),
            ));
        };
        Ok(UpdateStats {
            step: f.t,
            lr: f.lr,
            grad_norm: f.norm.unwrap_or_else(|| self.slot_norm()),
        })
    }

    /// The error for a non-finite gradient norm at the coming step, naming the first adapter
    /// whose gradient is not finite, with advice that fits the settings (clipping cannot help:
    /// it rescales by the norm, which is not finite).
    fn non_finite_gradient(&self, norm: f64, bad: Option<(usize, Target, usize, f32)>) -> Error {
        // Steps completed before this one (a fused step has already counted itself).
        let done = self.step_count() - u64::from(self.fused.is_some());
        let step = done + 1;
        let place = match bad {
            Some((layer, target, i, v)) => format!(
                "first in blk.{layer}.{} (its gradient holds {v} at element {i})",
                target.gguf_stem()
            ),
            None => "in no single adapter".into(),
        };
        let advice = if done == 0 {
            "no update has been made yet, so the learning rate is not the cause: the backward \
             overflows on this data or on the initial adapter (try a shorter --seq-len or another \
             --init-adapter)"
                .to_string()
        } else if self.max_grad_norm > 0.0 {
            format!(
                "clipping (--max-grad-norm {}) rescales by the norm and cannot repair a \
                 non-finite gradient: the updates so far made the adapter diverge; lower --lr \
                 (now {:e}) or add --warmup-steps",
                self.max_grad_norm, self.base_lr
            )
        } else {
            format!(
                "the updates so far made the adapter diverge: lower --lr (now {:e}), or clip the \
                 gradient with --max-grad-norm 1 so that large gradients are scaled down",
                self.base_lr
            )
        };
        Error::NonFinite(format!(
            "training stopped at step {step}: the gradient norm is {norm}, {place}; {advice}. \
             Nothing was updated and no checkpoint was written for this step"
        ))
    }

    pub fn save(&self, w: &mut impl Write) -> Result<()> {
        match &self.inner {
            Inner::AdamW(o) => o.save(w),
            Inner::Sgd(o) => o.save(w),
        }
    }

    pub fn load(&mut self, r: &mut impl Read) -> Result<()> {
        match &mut self.inner {
            Inner::AdamW(o) => o.load(r),
            Inner::Sgd(o) => o.load(r),
        }
    }
}

#[cfg(test)]
#[path = "optimizer_tests.rs"]
mod tests;
