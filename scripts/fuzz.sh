#!/usr/bin/env bash
# Fuzzes the GGUF reader for a bounded time (default 60 s): builds fuzz/'s libFuzzer target with
# the flags cargo-fuzz uses (nightly toolchain, sanitizer coverage), then runs it from the seeds.
# Usage: scripts/fuzz.sh [SECONDS]. Without a nightly toolchain it replays the seeds on stable.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs=${1:-60}
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "no nightly toolchain: replaying the seed corpus on stable instead of fuzzing"
  cargo run --release --bin replay -- seeds
  exit 0
fi
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cargo +nightly build --release --target x86_64-unknown-linux-gnu --bin gguf_reader
mkdir -p corpus
cp -n seeds/* corpus/ 2>/dev/null || true
target/x86_64-unknown-linux-gnu/release/gguf_reader corpus -max_len=65536 -max_total_time="$secs" -print_final_stats=1 2>&1 | tail -15
