//! The eval integration tests in one binary: checks, suites, the guard, the charts and `edgetune
//! eval`, one module per former `tests/eval_*.rs` file, so fewer binaries link. Run one with
//! `cargo test --test eval MODULE::`.

#[path = "../train_support/mod.rs"]
mod train_support;

mod checks;
mod cli;
mod guard;
mod plot;
mod suite;
