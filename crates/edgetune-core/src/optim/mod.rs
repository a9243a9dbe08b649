//! Optimizers for the trainable f32 master tensors: AdamW (f32 or 8-bit blockwise state, kept in
//! RAM or in a file-backed map), SGD, learning-rate schedules, gradient clipping and accumulation.
//!
//! Shared conventions (docs/ARCHITECTURE.md#no-allocation-during-a-step, #memory-levers):
//! * A trainable tensor is named by its [`ParamId`], the index into the [`ParamSpec`] list given
//!   at construction. Every tensor belongs to one [`ParamGroup`] (LoRA+ uses two,
//!   docs/METHODS.md#lora-plus: group A at `lr`, group B at `lr·λ`).
//! * All optimizer state is allocated when the optimizer is built; a step allocates nothing
//!   (tests/optim_alloc.rs counts).
//! * A step is `begin_step()` then `update(id, param, grad, lr)` for every tensor, in any order,
//!   one tensor at a time — which is what lets the state be paged in per tensor (paged.rs) and
//!   lets a backend stream tensors. `step(params, grads, lr)` does both for a full list.
//! * The `lr` handed to a step is the schedule's value ([`schedule::Schedule::lr_at`]); the
//!   tensor's group multiplies it by `lr_scale`.

pub mod accum;
pub mod adamw;
pub mod clip;
pub mod paged;
pub mod schedule;
pub mod sgd;
pub mod state8bit;

pub use adamw::{AdamW, AdamWConfig};
pub use clip::{clip_by_global_norm, global_norm};
pub use paged::StateStorage;
pub use schedule::Schedule;
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, Result};

/// Index of a trainable tensor in the optimizer's [`ParamSpec`] list.
pub type ParamId = usize;

/// Per-group hyperparameters: the step's `lr` is multiplied by `lr_scale`, and `weight_decay` is
/// the decoupled (AdamW) or L2 (SGD) coefficient.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamGroup {
    pub lr_scale: f32,
    pub weight_decay: f32,
}

impl ParamGroup {
    /// A group at the base learning rate.
    pub fn new(weight_decay: f32) -> Self {
        Self {
            lr_scale: 1.0,
            weight_decay,
        }
    }
}

/// Index of LoRA+ group A (every non-`B` matrix, at `lr`) in [`lora_plus_groups`].
pub const LORA_PLUS_GROUP_A: usize = 0;
/// Index of LoRA+ group B (`lora_B` and every 1-D trainable tensor, at `lr·λ`).
pub const LORA_PLUS_GROUP_B: usize = 1;

/// The two LoRA+ groups of docs/METHODS.md#lora-plus (PEFT `create_loraplus_optimizer`): A at `lr`,
/// B at `lr·ratio`, both with `weight_decay` (PEFT's `loraplus_weight_decay`, default 0).
pub fn lora_plus_groups(ratio: f32, weight_decay: f32) -> [ParamGroup; 2] {
    [
        ParamGroup {
            lr_scale: 1.0,
            weight_decay,
        },
        ParamGroup {
            lr_scale: ratio,
            weight_decay,
        },
    ]
}

/// One trainable tensor: its element count and the index of its group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub numel: usize,
    pub group: usize,
}

/// Width of the AdamW moment state (`--optimizer-state-bits 32|8`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StateBits {
    /// f32 `m` and `v`: 8 bytes per parameter.
    #[default]
    F32,
    /// 8-bit blockwise `m` and `v` (docs/METHODS.md#8-bit-adamw-state) for tensors of at least
    /// [`state8bit::MIN_8BIT_NUMEL`] elements; f32 for smaller ones.
    Eight,
}

impl StateBits {
    /// Parses the CLI value: `32` or `8`.
    pub fn from_bits(bits: u32) -> Result<Self> {
        match bits {
            32 => Ok(StateBits::F32),
            8 => Ok(StateBits::Eight),
            other => Err(Error::Invalid(format!(
                "optimizer state bits must be 32 or 8, got {other}"
            ))),
        }
    }
}

/// Checks the group indices of `specs` against `groups`.
fn validate_specs(groups: &[ParamGroup], specs: &[ParamSpec]) -> Result<()> {
    for (id, spec) in specs.iter().enumerate() {
        if spec.group >= groups.len() {
            return Err(Error::Invalid(format!(
                "optimizer: tensor {id} is in group {} but only {} groups exist",
                spec.group,
                groups.len()
            )));
        }
    }
    Ok(())
}

/// Checks that a tensor's parameter and gradient have the length its spec says.
fn check_tensor(specs: &[ParamSpec], id: ParamId, param: usize, grad: usize) -> Result<ParamSpec> {
    let Some(spec) = specs.get(id) else {
        return Err(Error::Invalid(format!(
            "optimizer: tensor id {id} out of range ({} tensors)",
            specs.len()
        )));
    };
    if param != spec.numel || grad != spec.numel {
        return Err(Error::Invalid(format!(
            "optimizer: tensor {id} has {} elements but got a parameter of {param} and a gradient of {grad}",
            spec.numel
        )));
    }
    Ok(*spec)
}

/// Checks the counts for a whole-list `step`.
fn check_list(n_specs: usize, params: usize, grads: usize) -> Result<()> {
    if params != n_specs || grads != n_specs {
        return Err(Error::Invalid(format!(
            "optimizer: built for {n_specs} tensors, step got {params} parameters and {grads} gradients"
        )));
    }
    Ok(())
}
