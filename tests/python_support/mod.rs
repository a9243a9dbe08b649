//! The reference Python the cross-check tests run (gguf-py, safetensors, jinja2, numpy): the
//! interpreter of `scripts/setup-python.sh`'s `.venv-ref` or `$EDGETUNE_PYTHON`, and the scripts
//! under `tests/python/`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The interpreter; `needs` names what the calling test needs from it (for the message when
/// the environment is missing: the test fails, it never passes without checking).
pub fn python(needs: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("EDGETUNE_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-ref/bin/python");
    assert!(
        venv.exists(),
        "{needs} needed for this test: run scripts/setup-python.sh (or set EDGETUNE_PYTHON)"
    );
    venv
}

/// The path of `tests/python/NAME`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// Runs `tests/python/SCRIPT ARGS` with [`python`]; it must succeed (the message carries its
/// stderr).
pub fn run_script(needs: &str, name: &str, args: &[&Path]) {
    let out = Command::new(python(needs))
        .arg(script(name))
        .args(args)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
