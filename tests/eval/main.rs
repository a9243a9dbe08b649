//! The eval integration tests in one binary: checks, suites, the guard, the charts, the
//! comparison run as a library, and `edgetune eval`, one module per concern, so fewer binaries
//! link. Run one with `cargo test --test eval MODULE::`.

#[path = "../cli_support/mod.rs"]
mod cli_support;
#[path = "../train_support/mod.rs"]
mod train_support;

mod checks;
mod cli;
mod compare_run;
mod guard;
mod plot;
mod suite;
