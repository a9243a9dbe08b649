//! Running the binary under test (`CARGO_BIN_EXE_edgetune`, which cargo builds for every
//! integration test binary): shared by the tests that drive `edgetune` commands.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// Runs `edgetune ARGS` and returns its output, whatever its exit status.
pub fn edgetune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(args)
        .output()
        .expect("run edgetune")
}

/// [`edgetune`] that must succeed (the message carries its stderr).
pub fn ok(args: &[&str]) -> Output {
    let out = edgetune(args);
    assert!(
        out.status.success(),
        "edgetune {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
