//! The training progress record of the C ABI and its callback type, for `et_train` and
//! `et_trainer_step`.
//!
//! `et_train` (train.rs) and `et_trainer_step` (trainer.rs) call the callback after every
//! optimizer step.

use std::ffi::{c_int, c_void};

use crate::train::Progress;

/// One training progress report, passed to an `EtProgressFn` after each optimizer step. The
/// pointer is valid only during the callback.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EtProgress {
    /// Optimizer steps done (1 after the first).
    pub step: u64,
    /// Optimizer steps the run will make.
    pub total_steps: u64,
    /// Mean training loss (nats per predicted token) of the last step.
    pub loss: f32,
    /// Learning rate used by the last step.
    pub lr: f32,
    /// Training throughput of the last step (tokens of its micro-batches per second).
    pub tokens_per_s: f64,
    /// Seconds since training started.
    pub elapsed_s: f64,
}

impl From<&Progress> for EtProgress {
    fn from(p: &Progress) -> EtProgress {
        EtProgress {
            step: p.step,
            total_steps: p.total_steps,
            loss: p.loss as f32,
            lr: p.lr,
            tokens_per_s: p.tok_per_s,
            elapsed_s: p.elapsed_s,
        }
    }
}

/// Progress callback: receives the report and the caller's `user_data`; returns 0 to go on, any
/// other value to stop after the current step.
pub type EtProgressFn =
    Option<unsafe extern "C" fn(progress: *const EtProgress, user_data: *mut c_void) -> c_int>;
