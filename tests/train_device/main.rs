//! The train_device integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test train_device MODULE::`.

#[path = "../device_step_support/mod.rs"]
mod device_step_support;
#[path = "../train_support/mod.rs"]
mod train_support;

mod plan;
mod step;
