#!/usr/bin/env bash
# Fuzzes the GGUF reader for a bounded time (default 60 s): builds fuzz/'s libFuzzer target with
# the flags cargo-fuzz uses (sanitizer coverage: every one of them a stable `-C` option), then runs
# it from the seeds. Uses the nightly toolchain where one is installed, else the default (stable)
# one; it fails when it cannot build or run the fuzzer (it never falls back to only replaying the
# seeds and calling that fuzzing).
# Usage: scripts/fuzz.sh [SECONDS].
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=(+nightly)
fi
echo "fuzzing with $(rustc "${toolchain[@]}" --version) for ${secs} s"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo "${toolchain[@]}" build --release --target x86_64-unknown-linux-gnu --bin gguf_reader
mkdir -p corpus
cp -n seeds/* corpus/ 2>/dev/null || true
target/x86_64-unknown-linux-gnu/release/gguf_reader corpus -max_len=65536 -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -15
