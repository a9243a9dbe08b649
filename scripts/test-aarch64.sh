#!/usr/bin/env bash
# Cross-compiles the library's unit tests for aarch64 (Jetson) and runs them under qemu, so the
# NEON kernels are checked against their scalar references. Installs Debian's rustc 1.96 with the
# arm64 std, the cross linker and qemu-user when missing (the route of scripts/cross-build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for tool in /usr/bin/rustc /usr/bin/cargo /usr/bin/aarch64-linux-gnu-gcc /usr/bin/qemu-aarch64; do
  [ -x "$tool" ] || need+=("$tool")
done
if [ ! -d /usr/lib/rustlib/aarch64-unknown-linux-gnu ]; then need+=(arm64-std); fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing the aarch64 toolchain (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
fi
# Debian's cargo with its own rustc (the rustup toolchain here has no aarch64 std).
RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc \
  /usr/bin/cargo test --locked --target aarch64-unknown-linux-gnu --lib "$@"
