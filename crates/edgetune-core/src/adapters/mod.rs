//! Adapters as plug-ins: the [`Adapter`] trait is one adapted linear layer's trainable branch;
//! each method (LoRA, DoRA, AdaLoRA, PiSSA/OLoRA, HiRA, DyLoRA, MT-LoRA, ResLoRA, …) implements
//! it, so the step never names a method. The `A`/`B` pair they all train, with its init and
//! GEMMs, is one type (`pair::LoraPair`) each of them embeds.
//!
//! # Why a trait object over host f32 slices
//!
//! The trait is object-safe: the trainer keeps a `Vec<Box<dyn Adapter>>` (one per adapted
//! linear), so one model can mix methods and the method is picked from the config at run time
//! without monomorphising the trainer per method. A virtual call per layer per pass is nothing
//! next to the GEMMs inside it. The views are CPU slices (the CPU backend's `View`s); a device
//! backend will get the same trait with its view types when it exists.
//!
//! # Contract
//!
//! Shapes: `x` `[n, in]`, `y` and `g` `[n, out]`, one token per row. A [`Pass`] carries `n` and
//! the dropout stream, so the forward and the backward of the same micro-batch (and a
//! recomputed forward under gradient checkpointing) see the same mask.
//! - [`Adapter::forward`] adds the branch output to the base output `y` and writes what the
//!   backward needs into `saved` ([`Adapter::saved_len`] values), using `scratch`
//!   ([`Adapter::scratch_len`] values, dead after the call).
//! - [`Adapter::backward`] adds the branch's input gradient to `dx` (the base's `G·Ŵ` is the
//!   trainer's) and OVERWRITES `grads`, the parameter gradients concatenated in the order of
//!   [`Adapter::params`].
//! - Workspace sizes are linear in `n` ([`Workspace`] per token), so the memory planner sizes
//!   them before step 1 and nothing is allocated during a step.

pub mod adalora;
pub mod adalora_alloc;
pub mod base;
pub mod capability;
pub mod dora;
pub mod dylora;
pub mod hira;
pub mod iec;
pub mod linalg;
pub mod lora;
pub mod mtlora;
mod mtlora_config;
pub mod olora_pissa;
mod pair;
pub mod param_buf;
pub mod reslora;
pub mod set;

pub use capability::{
    NestedRanks, PrevLayerInput, RankBudget, StateSource, StateTensor, StateValues, TaskRouted,
};
pub use lora::{LayerRange, Lora, LoraConfig, Target};
pub use param_buf::ParamBuf;
pub use set::{AdapterSet, LinearShapes};

use std::borrow::Cow;

use crate::Result;

/// One forward/backward pass over a micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Tokens (rows of `x`).
    pub n: usize,
    /// Training (dropout active) or inference (dropout is the identity).
    pub training: bool,
    /// The dropout stream of this micro-batch (the trainer derives it from step and micro-batch
    /// index; each adapter mixes in its own seed, so layers get different masks).
    pub seed: u64,
}

/// Which optimizer group a tensor belongs to (LoRA+, docs/METHODS.md#lora-plus): `A` maps to
/// [`crate::optim::LORA_PLUS_GROUP_A`], `B` to [`crate::optim::LORA_PLUS_GROUP_B`]. Without
/// LoRA+ both groups have the same learning rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Every non-`B` matrix, at `lr`.
    A,
    /// `lora_B` and every 1-D trainable tensor, at `lr·λ`.
    B,
}

impl Group {
    /// The index into [`crate::optim::lora_plus_groups`].
    pub fn index(self) -> usize {
        match self {
            Group::A => crate::optim::LORA_PLUS_GROUP_A,
            Group::B => crate::optim::LORA_PLUS_GROUP_B,
        }
    }
}

/// A trainable tensor of an adapter (f32 master weights).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamInfo {
    /// PEFT name (`lora_A`, `lora_B`).
    pub name: &'static str,
    /// Row-major shape.
    pub shape: Vec<usize>,
    pub group: Group,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The optimizer's view of this tensor.
    pub fn spec(&self) -> crate::optim::ParamSpec {
        crate::optim::ParamSpec {
            numel: self.numel(),
            group: self.group.index(),
        }
    }
}

/// Workspace an adapter needs, in f32 values per token of the micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Workspace {
    /// Written by the forward, read by the backward (lives across the layer's interval).
    pub saved_per_token: usize,
    /// Temporary inside one forward or one backward call.
    pub scratch_per_token: usize,
}

impl Workspace {
    /// Bytes of (saved, scratch) for `n` tokens.
    pub fn bytes(&self, n: usize) -> (usize, usize) {
        (4 * n * self.saved_per_token, 4 * n * self.scratch_per_token)
    }
}

/// How an adapter is exported.
#[derive(Clone, Debug, PartialEq)]
pub enum Export<'a> {
    /// A plain `ΔW = scale · B·A` (GGUF/PEFT LoRA): `b` `[out, rank]`, `a` `[rank, in]`.
    /// Owned when the method has to fold or concatenate tensors first (AdaLoRA's `B·diag(e)`,
    /// OLoRA/PiSSA's rank-2r `[B | −B0]·[A; A0]`, DyLoRA's `B[:, :b*]`).
    LowRank {
        a: Cow<'a, [f32]>,
        b: Cow<'a, [f32]>,
        rank: usize,
        scale: f32,
    },
    /// Not expressible as a plain `B·A`; only merging into a new base works.
    MergeOnly,
}

/// One adapted linear layer's trainable branch. See the module docs for the contract.
///
/// What only some methods can do (AdaLoRA's rank budget, MT-LoRA's task routing, ResLoRA's
/// previous-layer input, DyLoRA's nested ranks, extra checkpoint state) is reached through
/// the accessors at the end of the trait, `None` or nothing by default (the [`capability`]
/// module), so the trainer never asks which concrete type an adapter is. `Any` stays a
/// supertrait only for tests and tools that inspect one concrete adapter
/// (`downcast_ref` / `downcast_mut` on `dyn Adapter`).
pub trait Adapter: std::any::Any + Send + Sync {
    /// Short method name (`lora`).
    fn method(&self) -> &'static str;
    /// Input features of the adapted linear.
    fn in_features(&self) -> usize;
    /// Output features of the adapted linear.
    fn out_features(&self) -> usize;

    /// The trainable tensors, in the order of `grads` and [`Adapter::param`].
    fn params(&self) -> Vec<ParamInfo>;
    /// Tensor `i` of [`Adapter::params`] as held (in RAM or paged, [`ParamBuf`]); `None` out
    /// of range.
    fn param_buf(&self, i: usize) -> Option<&ParamBuf>;
    /// [`Adapter::param_buf`], writable (to page it, or to update it in place).
    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf>;
    /// Tensor `i`'s values (`None` out of range).
    fn param(&self, i: usize) -> Option<&[f32]> {
        self.param_buf(i).map(|b| &b[..])
    }
    /// Tensor `i`, writable (the optimizer updates it in place).
    fn param_mut(&mut self, i: usize) -> Option<&mut [f32]> {
        self.param_buf_mut(i).map(|b| &mut b[..])
    }
    /// Done with the parameters for now: paged ones are written back and dropped from memory
    /// ([`ParamBuf::release`]); in RAM nothing happens. Allocates nothing (the training step
    /// calls it per layer).
    fn release_params(&self) -> Result<()> {
        let mut i = 0;
        while let Some(b) = self.param_buf(i) {
            b.release()?;
            i += 1;
        }
        Ok(())
    }
    /// Σ numel over [`Adapter::params`]: the length of `grads`.
    fn n_params(&self) -> usize {
        self.params().iter().map(ParamInfo::numel).sum()
    }

    /// (Re-)initialises the parameters from `seed` (deterministic).
    fn init(&mut self, seed: u64);
    /// The branch's output scaling `s`.
    fn scale(&self) -> f32;

    /// Workspace per token.
    fn workspace(&self) -> Workspace;
    /// `saved` length for `n` tokens.
    fn saved_len(&self, n: usize) -> usize {
        n * self.workspace().saved_per_token
    }
    /// `scratch` length for `n` tokens.
    fn scratch_len(&self, n: usize) -> usize {
        n * self.workspace().scratch_per_token
    }

    /// `y += branch(x)`; fills `saved` for the backward.
    fn forward(
        &self,
        pass: Pass,
        x: &[f32],
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()>;

    /// Given `g = ∂L/∂y`: `dx += ∂(branch)/∂x ᵀ g`, `grads` = the parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        pass: Pass,
        x: &[f32],
        g: &[f32],
        saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        grads: &mut [f32],
    ) -> Result<()>;

    /// Writes the dense `ΔW` `[out, in]` the branch adds to the base weight (for merging).
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()>;
    /// How the adapter exports (plain low-rank, or merge-only).
    fn export(&self) -> Export<'_>;

    /// Schedule hook, called by the trainer before each optimizer step (AdaLoRA budget, DyLoRA
    /// rank sampling). Default: nothing.
    fn on_step(&mut self, _step: u64) {}

    /// Bytes the adapter holds besides its parameters and the per-token workspace: frozen
    /// copies of the base or frozen factors, importance buffers, fixed-size transients (for
    /// the memory plan). Default: none.
    fn extra_bytes(&self) -> usize {
        0
    }

    /// Whether [`Adapter::forward`] reads `y` on entry as the base output `X·Ŵᵀ` (DoRA
    /// without dropout reuses it). The training step's recompute skips base products nobody
    /// reads, and keeps them for such adapters. Default: no (the branch only adds to `y`).
    fn reads_base_output(&self) -> bool {
        false
    }

    /// The rank-budget side of the adapter (AdaLoRA), or `None`.
    fn rank_budget(&self) -> Option<&dyn RankBudget> {
        None
    }
    /// [`Adapter::rank_budget`], writable.
    fn rank_budget_mut(&mut self) -> Option<&mut dyn RankBudget> {
        None
    }
    /// The per-task routing of the adapter (MT-LoRA), or `None`.
    fn task_routed(&self) -> Option<&dyn TaskRouted> {
        None
    }
    /// [`Adapter::task_routed`], writable.
    fn task_routed_mut(&mut self) -> Option<&mut dyn TaskRouted> {
        None
    }
    /// The previous-layer-input passes of the adapter (ResLoRA), or `None`.
    fn prev_layer_input(&self) -> Option<&dyn PrevLayerInput> {
        None
    }
    /// The nested ranks of the adapter (DyLoRA), or `None`.
    fn nested_ranks(&self) -> Option<&dyn NestedRanks> {
        None
    }
    /// [`Adapter::nested_ranks`], writable.
    fn nested_ranks_mut(&mut self) -> Option<&mut dyn NestedRanks> {
        None
    }
    /// The adapter as a plain [`Lora`] pair (what the device step runs), or `None`.
    fn as_lora(&self) -> Option<&Lora> {
        None
    }

    /// The state a checkpoint keeps besides [`Adapter::params`] (frozen factors, importance
    /// EMAs, statistics), by name within the adapter's slot ([`capability`] module doc).
    /// Default: none.
    fn extra_state(&self) -> Vec<StateTensor<'_>> {
        Vec::new()
    }
    /// Restores [`Adapter::extra_state`] from `src` (after the parameters). Default: nothing.
    fn load_extra_state(&mut self, _src: &dyn StateSource) -> Result<()> {
        Ok(())
    }
}

impl dyn Adapter {
    /// The concrete adapter, if it is a `T` (for tests and inspection; the library goes
    /// through the capability accessors).
    pub fn downcast_ref<T: Adapter>(&self) -> Option<&T> {
        (self as &dyn std::any::Any).downcast_ref::<T>()
    }

    /// The concrete adapter, writable, if it is a `T`.
    pub fn downcast_mut<T: Adapter>(&mut self) -> Option<&mut T> {
        (self as &mut dyn std::any::Any).downcast_mut::<T>()
    }
}
