//! The backend_grad integration tests in one binary (one module per former test file: fewer
//! binaries to link). Run one with `cargo test --test backend_grad MODULE::`.

#[path = "../backend_grad_fd/mod.rs"]
mod backend_grad_fd;

mod attention;
mod cross_entropy;
mod ops;
