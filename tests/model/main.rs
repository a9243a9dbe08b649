//! The model integration tests in one binary, the forward against the independent f64
//! reference and the real SmolLM2-135M-Instruct end to end included (one module per former test
//! file: fewer binaries to link). Run one with `cargo test --test model MODULE::`;
//! `real_smollm2::` needs the real model (`EDGETUNE_SMOLLM2`, or it is fetched).

#[path = "../model_support/mod.rs"]
mod model_support;
#[path = "../real_model/mod.rs"]
mod real_model;
#[path = "../reference/mod.rs"]
mod reference;

mod config;
mod decode_batch;
mod forward;
mod real_smollm2;
mod reference_forward;
mod stream;
