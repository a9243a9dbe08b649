//! What some adapters can do beyond [`Adapter`]'s forward and backward, as capability traits
//! reached through `Adapter`'s accessors (`None` by default), and the state an adapter keeps
//! in a checkpoint besides its parameters ([`StateTensor`], [`StateSource`]).
//!
//! # Why accessors and not downcasts
//!
//! The trainer's per-step hooks, the checkpoint code and the export ask "does this adapter
//! take part in a rank budget / route rows by task / read the previous layer's input?", never
//! "is it an `AdaLora`?". A new method that shares a capability implements the trait and
//! returns `Some(self)` from the accessor; nothing in `crates/edgetune-train/src/train` changes. The capabilities:
//!
//! | trait | accessor | implemented by | used by |
//! |---|---|---|---|
//! | [`RankBudget`] | [`Adapter::rank_budget`] | AdaLoRA | the budget hooks (orthogonal regularizer, importance, masking) |
//! | [`TaskRouted`] | [`Adapter::task_routed`] | MT-LoRA | row routing, the skip mask, `--task` export |
//! | [`PrevLayerInput`] | [`Adapter::prev_layer_input`] | ResLoRA | the step's cross-layer input store |
//! | [`NestedRanks`] | [`Adapter::nested_ranks`] | DyLoRA, QDyLoRA | choosing the evaluation rank |
//!
//! plus [`Adapter::as_lora`] (the device step runs plain LoRA pairs only) and
//! [`Adapter::extra_state`] / [`Adapter::load_extra_state`] (OLoRA/PiSSA's frozen factors,
//! AdaLoRA's importance, ResLoRA's norm window).
//!
//! # State in a checkpoint
//!
//! [`Adapter::extra_state`] lists tensors by their name within the adapter's slot
//! (`lora_A0`); the checkpoint writes them as `blk.{l}.{stem}.{name}` beside the parameters.
//! [`Adapter::load_extra_state`] reads them back through a [`StateSource`] scoped to the same
//! slot, which checks dtype and length and names the file in its errors. f32 tensors keep a
//! shape; F64 and U64 ones (sums and seeds that must come back bit for bit) are 1-D.
//!
//! [`Adapter`]: super::Adapter
//! [`Adapter::as_lora`]: super::Adapter::as_lora
//! [`Adapter::extra_state`]: super::Adapter::extra_state
//! [`Adapter::load_extra_state`]: super::Adapter::load_extra_state
//! [`Adapter::nested_ranks`]: super::Adapter::nested_ranks
//! [`Adapter::prev_layer_input`]: super::Adapter::prev_layer_input
//! [`Adapter::rank_budget`]: super::Adapter::rank_budget
//! [`Adapter::task_routed`]: super::Adapter::task_routed

use std::borrow::Cow;

use super::Pass;
use super::adalora_alloc::AdaloraConfig;
use crate::{Error, Result};

/// The values of one stored tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum StateValues<'a> {
    F32(Cow<'a, [f32]>),
    F64(Vec<f64>),
    U64(Vec<u64>),
}

/// One tensor of an adapter's (or the method hooks') checkpoint state.
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor<'a> {
    /// The name within the slot (`lora_A0`) or, for the hooks, in the file (`mtlora.gamma`).
    pub name: &'static str,
    /// Row-major shape; F64 and U64 tensors are `[len]`.
    pub shape: Vec<usize>,
    pub values: StateValues<'a>,
}

impl<'a> StateTensor<'a> {
    /// An f32 tensor of `shape`.
    pub fn f32(name: &'static str, shape: Vec<usize>, values: Cow<'a, [f32]>) -> Self {
        StateTensor {
            name,
            shape,
            values: StateValues::F32(values),
        }
    }

    /// A 1-D f32 tensor.
    pub fn f32_vec(name: &'static str, values: Cow<'a, [f32]>) -> Self {
        StateTensor::f32(name, vec![values.len()], values)
    }

    /// A 1-D F64 tensor.
    pub fn f64_vec(name: &'static str, values: Vec<f64>) -> Self {
        StateTensor {
            name,
            shape: vec![values.len()],
            values: StateValues::F64(values),
        }
    }

    /// A 1-D U64 tensor.
    pub fn u64_vec(name: &'static str, values: Vec<u64>) -> Self {
        StateTensor {
            name,
            shape: vec![values.len()],
            values: StateValues::U64(values),
        }
    }
}

/// Where [`Adapter::load_extra_state`](super::Adapter::load_extra_state) (and the method
/// hooks) read their tensors from: a checkpoint file, scoped to one adapter's slot. Every
/// read checks the dtype and, where given, the count; a missing tensor is an error.
pub trait StateSource {
    /// f32 tensor `name` of exactly `n` values.
    fn f32s(&self, name: &str, n: usize) -> Result<Vec<f32>>;
    /// F64 tensor `name` of `n` values (any count when `None`).
    fn f64s(&self, name: &str, n: Option<usize>) -> Result<Vec<f64>>;
    /// U64 tensor `name` of `n` values (any count when `None`).
    fn u64s(&self, name: &str, n: Option<usize>) -> Result<Vec<u64>>;
    /// An error about tensor `name` of the source (with its file and full name).
    fn invalid(&self, name: &str, what: String) -> Error;
}

/// A branch whose rank components are scored and masked against one budget shared by all
/// the adapters of the run (AdaLoRA, docs/METHODS.md#rank-allocation). The trainer's budget
/// hooks (`BudgetHooks`, `crates/edgetune-train/src/train/methods/hooks.rs`) drive it: the orthogonal regularizer
/// after the backward, then importance and masking after the update.
pub trait RankBudget {
    /// The schedule and regularizer settings (every adapter of a run has the same).
    fn budget_config(&self) -> &AdaloraConfig;
    /// `r0`: components before any masking.
    fn init_rank(&self) -> usize;
    /// Components still live.
    fn active_rank(&self) -> usize;
    /// Adds `coef·∇R` to `grads` (params layout); returns `coef·R`.
    fn orth_regularizer(&self, coef: f32, grads: &mut [f32]) -> Result<f64>;
    /// Updates the importance EMAs with the step's (clipped) gradients (params layout).
    fn update_importance(&mut self, grads: &[f32]) -> Result<()>;
    /// Clears the importance EMAs (once the final pattern is fixed).
    fn reset_importance(&mut self);
    /// One score per component into `out` `[r0]`.
    fn triplet_scores(&self, out: &mut [f32]) -> Result<()>;
    /// Masks every component whose score is `≤ threshold`.
    fn mask_scores(&mut self, scores: &[f32], threshold: f32) -> Result<()>;
    /// Zeroes again every component the last masking dropped.
    fn apply_keep(&mut self);
}

/// A branch with one part per data task, each batch row using its task's (MT-LoRA,
/// docs/METHODS.md#mt-lora).
pub trait TaskRouted {
    /// The task names, index = task id.
    fn task_names(&self) -> &[String];
    /// Routes the next micro-batch: row `i` (`seq_len` tokens) uses task `tasks[i]`.
    fn set_row_tasks(&mut self, tasks: &[u32], seq_len: usize) -> Result<()>;
    /// The task the export (and serving) uses.
    fn set_export_task(&mut self, task: usize) -> Result<()>;
    /// The task parameter tensor `param` (an index into `params()`) belongs to; `None` for a
    /// shared tensor (the optimizer skips absent tasks' tensors).
    fn task_of_param(&self, param: usize) -> Option<usize>;
}

/// A branch that also reads the same target's module input of the previous layer (ResLoRA's
/// res_is shortcut, docs/METHODS.md#reslora). The step keeps every layer's inputs for it
/// (`crates/edgetune-train/src/train/step_reslora.rs`); plain [`Adapter::forward`](super::Adapter::forward) and
/// `backward` are the layer-0 rule. Shapes: `x`, `x_prev`, `dx`, `dx_prev` `[n, in]`, `y`,
/// `g` `[n, out]`.
pub trait PrevLayerInput {
    /// `y += branch(x, x_prev)` (`x_prev`: `None` in layer 0); fills `saved`.
    fn forward_res(
        &self,
        pass: Pass,
        x: &[f32],
        x_prev: Option<&[f32]>,
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()>;

    /// The backward of [`PrevLayerInput::forward_res`]: `dx` and `dx_prev` (the previous
    /// layer's pending input gradient) get their parts, `grads` is overwritten.
    #[allow(clippy::too_many_arguments)]
    fn backward_res(
        &self,
        pass: Pass,
        x: &[f32],
        x_prev: Option<&[f32]>,
        g: &[f32],
        saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        dx_prev: Option<&mut [f32]>,
        grads: &mut [f32],
    ) -> Result<()>;
}

/// A branch trained at every rank `1..=r_max` at once, so any prefix rank is a valid adapter
/// (DyLoRA, docs/METHODS.md#dylora-and-qdylora).
pub trait NestedRanks {
    /// The rank evaluation and export use.
    fn eval_rank(&self) -> usize;
    /// Sets [`NestedRanks::eval_rank`] (`1..=r_max`).
    fn set_eval_rank(&mut self, rank: usize) -> Result<()>;
}
