//! The reference Python the cross-check tests run (gguf-py, safetensors, jinja2, numpy): the
//! interpreter of `scripts/setup-python.sh`'s `.venv-ref` or `$EDGETUNE_PYTHON`, running the
//! scripts under `tests/python/`.

use std::path::Path;
use std::process::Command;

/// Runs `tests/python/NAME ARGS`; it must succeed (the message carries its stderr). `needs`
/// names what the calling test needs from the interpreter, for the message when the
/// environment is missing: the test fails, it never passes without checking.
pub fn run_script(needs: &str, name: &str, args: &[&Path]) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = match std::env::var_os("EDGETUNE_PYTHON") {
        Some(p) => p.into(),
        None => {
            let venv = root.join(".venv-ref/bin/python");
            assert!(
                venv.exists(),
                "{needs} needed for this test: run scripts/setup-python.sh (or set \
                 EDGETUNE_PYTHON)"
            );
            venv
        }
    };
    let out = Command::new(python)
        .arg(root.join("tests/python").join(name))
        .args(args)
        .output()
        .expect("start python");
    assert!(
        out.status.success(),
        "{name} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
