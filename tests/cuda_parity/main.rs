//! The cuda_parity integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test cuda_parity MODULE::`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../cuda_support/mod.rs"]
mod cuda_support;
#[path = "../device_step_support/mod.rs"]
mod device_step_support;
#[path = "../train_support/mod.rs"]
mod train_support;

mod model;
mod ops;
mod optim;
mod step;
