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
//! [`MethodHooks`] is what the trainer calls; it names no method. The method's part is a
//! [`StepHooks`] object its [`MethodImpl::hooks`](super::methods::MethodImpl::hooks) builds
//! (AdaLoRA's budget and layer importance's weights in `methods/hooks.rs`, MT-LoRA's
//! `MtTasks` in `method_tasks.rs`); methods without one have none. The hooks' state that a
//! checkpoint keeps goes through [`StepHooks::checkpoint_state`] /
//! [`StepHooks::restore_state`].

use super::adapter_set::AdapterSet;
use super::method::{Method, MethodOptions};
use super::method_tasks::MtTasks;
use super::optimizer::Optimizer;
use super::step::TrainStep;
use edgetune_core::Result;
use edgetune_core::adapters::{StateSource, StateTensor};
use edgetune_core::data::Batch;

/// One method's part in the step, called at the points of the module doc's table. Every call
/// but [`StepHooks::bytes`] does nothing by default. Nothing here may allocate per step (the
/// buffers are sized when the hooks are built).
pub trait StepHooks: std::fmt::Debug + Send + Sync {
    /// Bytes of the hooks' own buffers (the plan counts them with the adapters' extras; the
    /// method's `MethodImpl::method_wide_bytes` must agree).
    fn bytes(&self) -> usize;

    /// Before the micro-batches of a step, with all of them (MT-LoRA's row weights).
    fn weigh_tasks(&mut self, _batches: &[Batch], _step: &mut TrainStep) -> Result<()> {
        Ok(())
    }

    /// Before micro-batch `batch` (MT-LoRA's routing of rows to tasks).
    fn route(&mut self, _set: &mut AdapterSet, _batch: &Batch) -> Result<()> {
        Ok(())
    }

    /// After each micro-batch's backward.
    fn after_micro_batch(&mut self, _step: &TrainStep) {}

    /// After the backward of every micro-batch, before clipping and the update: may change
    /// the step's gradients.
    fn after_backward(&mut self, _step: &mut TrainStep, _set: &AdapterSet) -> Result<()> {
        Ok(())
    }

    /// Just before the optimizer update (MT-LoRA's skip mask).
    fn before_update(&mut self, _set: &AdapterSet, _opt: &mut Optimizer) -> Result<()> {
        Ok(())
    }

    /// After the optimizer update of step `t` (0-based: steps completed before it).
    fn after_update(
        &mut self,
        _t: u64,
        _step: &mut TrainStep,
        _set: &mut AdapterSet,
    ) -> Result<()> {
        Ok(())
    }

    /// The last step's regularizer value added to the loss's gradient (AdaLoRA's `γ·R`).
    fn last_regularizer(&self) -> f64 {
        0.0
    }

    /// MT-LoRA's task state (per-task losses and weights, for the metrics).
    fn tasks(&self) -> Option<&MtTasks> {
        None
    }

    /// The tensors a checkpoint keeps, by their name in the file (`layerimp.weights`).
    fn checkpoint_state(&self) -> Vec<StateTensor<'_>> {
        Vec::new()
    }

    /// Restores [`StepHooks::checkpoint_state`].
    fn restore_state(&mut self, _src: &dyn StateSource) -> Result<()> {
        Ok(())
    }
}

/// The method's per-step hooks and their state.
#[derive(Debug)]
pub struct MethodHooks {
    method: Method,
    hooks: Option<Box<dyn StepHooks>>,
}

impl MethodHooks {
    /// The hooks of `method` for `set` with the default options but layer importance's `τ`.
    pub fn new(method: Method, set: &AdapterSet, layerimp_tau: f32) -> Result<MethodHooks> {
        let opts = MethodOptions {
            layerimp_tau,
            ..MethodOptions::default()
        };
        MethodHooks::with_options(method, set, &opts)
    }

    /// The hooks of `method` for `set` with all of the run's method options, built by the
    /// method's [`MethodImpl::hooks`](super::methods::MethodImpl::hooks).
    pub fn with_options(
        method: Method,
        set: &AdapterSet,
        opts: &MethodOptions,
    ) -> Result<MethodHooks> {
        Ok(MethodHooks {
            method,
            hooks: method.spec().imp.hooks(set, opts)?,
        })
    }

    pub fn method(&self) -> Method {
        self.method
    }

    /// Bytes of the hooks' own buffers (the plan counts them with the adapters' extras).
    pub fn bytes(&self) -> usize {
        self.hooks.as_ref().map_or(0, |h| h.bytes())
    }

    /// MT-LoRA's task state (`None` for other methods).
    pub fn tasks(&self) -> Option<&MtTasks> {
        self.hooks.as_ref()?.tasks()
    }

    /// `γ·R` of the last step (AdaLoRA; 0 otherwise).
    pub fn last_regularizer(&self) -> f64 {
        self.hooks.as_ref().map_or(0.0, |h| h.last_regularizer())
    }

    /// The tensors of the hooks' state a checkpoint keeps.
    pub fn checkpoint_state(&self) -> Vec<StateTensor<'_>> {
        self.hooks
            .as_ref()
            .map_or_else(Vec::new, |h| h.checkpoint_state())
    }

    /// Restores [`MethodHooks::checkpoint_state`] from `src`.
    pub fn restore_state(&mut self, src: &dyn StateSource) -> Result<()> {
        match &mut self.hooks {
            Some(h) => h.restore_state(src),
            None => Ok(()),
        }
    }

    /// Before the micro-batches of optimizer step `step` (1-based): every adapter's schedule
    /// hook.
    pub fn before_step(&mut self, set: &mut AdapterSet, step: u64) {
        for (_, _, a) in set.iter_mut() {
            a.on_step(step);
        }
    }

    /// Before the micro-batches of a step: the step's row weights from `batches` (MT-LoRA).
    pub fn weigh_tasks(&mut self, batches: &[Batch], step: &mut TrainStep) -> Result<()> {
        match &mut self.hooks {
            Some(h) => h.weigh_tasks(batches, step),
            None => Ok(()),
        }
    }

    /// Before micro-batch `batch`: routes its rows to their tasks (MT-LoRA).
    pub fn route(&mut self, set: &mut AdapterSet, batch: &Batch) -> Result<()> {
        match &mut self.hooks {
            Some(h) => h.route(set, batch),
            None => Ok(()),
        }
    }

    /// After each micro-batch.
    pub fn after_micro_batch(&mut self, step: &TrainStep) {
        if let Some(h) = &mut self.hooks {
            h.after_micro_batch(step);
        }
    }

    /// After the backward of every micro-batch, before clipping and the update.
    pub fn after_backward(&mut self, step: &mut TrainStep, set: &AdapterSet) -> Result<()> {
        match &mut self.hooks {
            Some(h) => h.after_backward(step, set),
            None => Ok(()),
        }
    }

    /// Just before the optimizer update.
    pub fn before_update(&mut self, set: &AdapterSet, opt: &mut Optimizer) -> Result<()> {
        match &mut self.hooks {
            Some(h) => h.before_update(set, opt),
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
        match &mut self.hooks {
            Some(h) => h.after_update(t, step, set),
            None => Ok(()),
        }
    }
}
