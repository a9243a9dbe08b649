//! The training progress record of the C ABI and its callback type, for `et_train`.
//!
//! `et_train` (train.rs) calls the callback after every optimizer step.

use std::ffi::{c_int, c_void};

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
    /// Training throughput over the run so far.
    pub tokens_per_s: f64,
    /// Seconds since training started.
    pub elapsed_s: f64,
}

/// Progress callback: receives the report and the caller's `user_data`; returns 0 to go on, any
/// other value to stop after the current step.
pub type EtProgressFn =
    Option<unsafe extern "C" fn(progress: *const EtProgress, user_data: *mut c_void) -> c_int>;
