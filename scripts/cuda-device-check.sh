#!/usr/bin/env bash
# The CUDA checks for a machine with an NVIDIA GPU (the `run` device tool, or a Jetson): builds
# with --features cuda, runs the backend's unit tests and the CPU-vs-CUDA parity tests (they are
# #[ignore = "needs a CUDA device"] elsewhere; --include-ignored runs them, and they fail without
# a usable device) with their output shown, then the kernel benchmarks. Logs go to ${OUT:-target/cuda-check}/. Exit status: that of the tests.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-target/cuda-check}
mkdir -p "$out"
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
cargo build --features cuda --tests 2>&1 | tail -5 > "$out/build.txt"
cargo test --features cuda --lib -- backend::cuda backend::choice > "$out/unit.txt" 2>&1
unit=$?
cargo test --features cuda --test cuda_parity -- --include-ignored --nocapture --test-threads 1 \
  > "$out/parity.txt" 2>&1
parity=$?
# `--backend cpu|cuda|auto` through the CLI: the `cuda_backend` module of the `cli` test binary.
cargo test --features cuda --test cli -- cuda_backend:: --include-ignored --nocapture \
  --test-threads 1 >> "$out/parity.txt" 2>&1
cli=$?
timeout 300 cargo bench --features cuda --bench cuda > "$out/bench.txt" 2>&1 || true
grep -E "test result|panicked|ignored" "$out/unit.txt" "$out/parity.txt"
grep -E "^cuda_|rslora=|trainer losses" "$out/parity.txt"
grep -E "^cuda_|time:|thrpt:" "$out/bench.txt" | head -80
exit $(( unit || parity || cli ))
