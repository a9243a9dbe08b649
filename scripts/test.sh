#!/usr/bin/env bash
# The test suite: sets up the reference Python tools (gguf-py, numpy) in .venv-ref, then runs
# every Rust test on this machine. scripts/test-aarch64.sh runs the aarch64 subset under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGETUNE_PYTHON=$(scripts/setup-python.sh)
export EDGETUNE_PYTHON
cargo test --locked "$@"
