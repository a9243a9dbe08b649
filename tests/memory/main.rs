//! The memory planner's integration tests in one binary: the arena, the packing, the budget and
//! the budget holding in a real run (the child's own peak), one module per former
//! `tests/memory_*.rs` file, so fewer binaries link. Run one with `cargo test --test memory
//! MODULE::`. `tests/memory_rss.rs` stays alone: it measures this process's own RSS.

#[path = "../cli_support/mod.rs"]
mod cli_support;
#[path = "../train_support/mod.rs"]
mod train_support;

mod arena;
mod budget;
mod budget_holds;
mod llama;
mod plan;
