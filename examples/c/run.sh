#!/usr/bin/env bash
# Builds the C libraries (feature `ffi`), compiles examples/c/main.c against include/edgetune.h,
# writes a tiny test model and runs the program (which also trains a LoRA adapter for a few
# steps into target/c-example/ARCH/run-*, generates with it and exports it as a GGUF).
#
#   examples/c/run.sh            # host: links libedgetune.a, then libedgetune.so, runs both
#   examples/c/run.sh --aarch64  # cross: scripts/cross-build.sh --lib, aarch64-linux-gnu-gcc,
#                                # runs under qemu-aarch64 (installs the toolchain when missing)
#
# The libraries come from `cargo rustc --crate-type cdylib,staticlib` so the normal build of the
# crate (rlib + CLI) never pays for them.
set -euo pipefail
cd "$(dirname "$0")/../.."
arch=host
case "${1:-}" in
  --aarch64) arch=aarch64 ;;
  "") ;;
  *) echo "usage: $0 [--aarch64]" >&2; exit 2 ;;
esac
out=target/c-example/$arch
mkdir -p "$out"
# Libraries a Rust staticlib needs from the C side on Linux (rustc --print native-static-libs).
native_libs=(-lgcc_s -lutil -lrt -lpthread -lm -ldl -lc)
cflags=(-std=c11 -O2 -Wall -Wextra -Werror)

# The model: written by the host CLI (GGUF is the same file on every architecture).
cargo build --locked --release --quiet --bin edgetune
model=$out/tiny-q4km.gguf
target/release/edgetune testmodel --preset tiny --type q4_k_m --seed 3 --out "$model" >/dev/null
# Training runs start fresh: no checkpoints of an earlier run in the way.
rm -rf "$out"/run-static "$out"/run-dynamic "$out"/run-*.jsonl

if [ "$arch" = host ]; then
  cargo rustc -p edgetune --locked --release --quiet --lib --features ffi --crate-type cdylib,staticlib
  lib=target/release
  cc "${cflags[@]}" -I include examples/c/main.c "$lib/libedgetune.a" "${native_libs[@]}" -o "$out/main-static"
  cc "${cflags[@]}" -I include examples/c/main.c -L "$lib" -ledgetune -Wl,-rpath,"$PWD/$lib" -o "$out/main-dynamic"
  if command -v c++ >/dev/null; then
    # The header is C++-clean too (extern "C", cpp_compat).
    echo '#include "edgetune.h"' | c++ -std=c++17 -Wall -Werror -I include -fsyntax-only -x c++ -
  fi
  echo "== static: $out/main-static"
  "$out/main-static" "$model" "Sensor 3 reads" "$out/run-static"
  echo "== dynamic: $out/main-dynamic"
  "$out/main-dynamic" "$model" "Sensor 3 reads" "$out/run-dynamic" >/dev/null
  echo "dynamic run ok"
else
  dist=target/c-example/aarch64-dist
  # The dev profile with the test profile's opt-level and debug info (Cargo.toml) hashes like the
  # test profile, so it reuses the dependencies scripts/test-aarch64.sh built (CI runs it first).
  # (`cargo rustc --profile test` itself would build the test harness, not the libraries.)
  # Deployments use scripts/cross-build.sh --lib (release).
  CARGO_PROFILE_DEV_OPT_LEVEL=2 CARGO_PROFILE_DEV_DEBUG=line-tables-only \
    scripts/cross-build.sh --lib --profile dev --out "$dist"
  aarch64-linux-gnu-gcc "${cflags[@]}" -I "$dist/include" examples/c/main.c "$dist/lib/libedgetune.a" \
    "${native_libs[@]}" -o "$out/main-static"
  # Same runner as .cargo/config.toml: without LD_LIBRARY_PATH qemu hangs at the first thread
  # spawn once libc6:arm64 is installed (docs/ARCHITECTURE.md#aarch64-cross-build).
  echo "== qemu-aarch64: $out/main-static"
  qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib \
    "$out/main-static" "$model" "Sensor 3 reads" "$out/run-static"
fi
