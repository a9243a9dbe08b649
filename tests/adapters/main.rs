//! The adapters integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test adapters MODULE::`.

#[path = "../adapters_support/mod.rs"]
mod adapters_support;
#[path = "../backend_grad_fd/mod.rs"]
mod backend_grad_fd;

mod adalora;
mod dora;
mod dylora;
mod hira;
mod iec;
mod linalg;
mod lora;
mod mtlora;
mod olora_pissa;
mod reslora;
