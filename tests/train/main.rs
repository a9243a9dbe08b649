//! The training integration tests in one binary: the step against the f64 reference, every
//! method, multi-task LoRA, resume, streamed weights, paged adapter weights and the run
//! directory, one module per former `tests/train_*.rs` file, so fewer binaries link. Run one
//! with `cargo test --test train MODULE::`. Alone in their own binaries: `tests/train_alloc.rs`
//! and `tests/train_device_alloc.rs` (a counting global allocator), `tests/train_kill.rs` (its
//! random kill delays are timed against the child's progress, so no other test may take the
//! cores).

#[path = "../cli_support/mod.rs"]
mod cli_support;
#[path = "../reference/mod.rs"]
mod reference;
#[path = "../train_support/mod.rs"]
mod train_support;

mod adapter_paging;
mod deriv_methods;
mod grad;
mod infer_consistency;
mod memory_levers;
mod methods;
mod mtlora;
mod mtlora_skip;
mod replace_params;
mod resume;
mod run_dir;
mod stream;
