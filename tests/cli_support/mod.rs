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

/// Runs `edgetune HEAD… FLAGS… TAIL…`, `flags` split at whitespace (fixed flags and values
/// written as one string; paths go in `head` or `tail`).
pub fn edgetune_with(head: &[&str], flags: &str, tail: &[&str]) -> Output {
    let mut args = head.to_vec();
    args.extend(flags.split_whitespace());
    args.extend_from_slice(tail);
    edgetune(&args)
}

/// [`edgetune_with`] that must succeed (the message carries its stderr).
pub fn ok_with(head: &[&str], flags: &str, tail: &[&str]) -> Output {
    let out = edgetune_with(head, flags, tail);
    assert_ok(&out);
    out
}

/// `edgetune testmodel --preset tiny --type TY --out PATH EXTRA…`, which must succeed.
pub fn write_tiny(path: &Path, ty: &str, extra: &[&str]) {
    let head = [
        "testmodel",
        "--preset",
        "tiny",
        "--type",
        ty,
        "--out",
        s(path),
    ];
    ok_with(&head, "", extra);
}

/// Asserts that `out` is a success (the message carries its stderr).
pub fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
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

/// The stderr of `out` as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The stdout of `out` parsed as JSON.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The JSON file at `path`.
pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
