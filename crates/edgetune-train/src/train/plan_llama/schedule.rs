//! The step numbers of one Llama training step's schedule: `embed`, per layer the forward
//! sub-steps ([`Fwd`]), the loss ([`Loss`]), per layer from the top the recompute (a copy of
//! [`Fwd`]) and the backward ([`Bwd`]), then the optimizer. A buffer's lifetime in the plan is
//! a range of these numbers, so two buffers whose ranges do not meet share memory.

use edgetune_core::{Error, Result};

/// Forward sub-steps of one layer (and of its recompute), in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fwd {
    AttnNorm = 0,
    Qkv,
    Attention,
    OutProj,
    FfnNorm,
    GateUp,
    Swiglu,
    Down,
}

/// Loss sub-steps, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    FinalNorm = 0,
    CrossEntropy,
    FinalNormBackward,
}

/// Backward sub-steps of one layer, in order (the reverse of [`Fwd`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bwd {
    Down = 0,
    Swiglu,
    GateUp,
    FfnNorm,
    OutProj,
    Attention,
    Qkv,
    AttnNorm,
}

const FWD_STEPS: u32 = 8;
const LOSS_STEPS: u32 = 3;
/// Recompute (8) then backward (8).
const BWD_STEPS: u32 = 16;

/// Step numbers of a training step's schedule (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LlamaSchedule {
    n_layer: u32,
}

impl LlamaSchedule {
    /// A schedule for `n_layer` layers; an error when its steps do not fit in `u32`.
    pub fn new(n_layer: usize) -> Result<LlamaSchedule> {
        let steps = u32::try_from(n_layer)
            .ok()
            .and_then(|l| l.checked_mul(FWD_STEPS + BWD_STEPS))
            .and_then(|s| s.checked_add(2 + LOSS_STEPS));
        match steps {
            Some(_) => Ok(LlamaSchedule {
                n_layer: n_layer as u32,
            }),
            None => Err(Error::Invalid(format!(
                "plan: {n_layer} layers make more schedule steps than fit in u32"
            ))),
        }
    }

    pub fn embed(&self) -> u32 {
        0
    }

    /// Sub-step `sub` of layer `layer`'s forward (`layer < n_layer`).
    pub fn fwd(&self, layer: usize, sub: Fwd) -> u32 {
        debug_assert!(layer < self.n_layer as usize);
        1 + layer as u32 * FWD_STEPS + sub as u32
    }

    pub fn loss(&self, sub: Loss) -> u32 {
        1 + self.n_layer * FWD_STEPS + sub as u32
    }

    fn bwd_base(&self, layer: usize) -> u32 {
        debug_assert!(layer < self.n_layer as usize);
        1 + self.n_layer * FWD_STEPS + LOSS_STEPS + (self.n_layer - 1 - layer as u32) * BWD_STEPS
    }

    /// Sub-step `sub` of the recompute of layer `layer` at the start of its backward.
    pub fn recompute(&self, layer: usize, sub: Fwd) -> u32 {
        self.bwd_base(layer) + sub as u32
    }

    /// Sub-step `sub` of layer `layer`'s backward (after its recompute).
    pub fn bwd(&self, layer: usize, sub: Bwd) -> u32 {
        self.bwd_base(layer) + FWD_STEPS + sub as u32
    }

    /// The first step of the backward (the top layer's recompute).
    pub fn backward_start(&self) -> u32 {
        1 + self.n_layer * FWD_STEPS + LOSS_STEPS
    }

    pub fn optimizer(&self) -> u32 {
        1 + self.n_layer * (FWD_STEPS + BWD_STEPS) + LOSS_STEPS
    }

    /// Number of steps (`optimizer() + 1`).
    pub fn n_steps(&self) -> u32 {
        self.optimizer() + 1
    }
}

/// The adaptable projections, in the order `n_targets` counts them.
pub const TARGETS: [&str; 7] = ["q", "k", "v", "o", "gate", "up", "down"];
