#!/usr/bin/env bash
# Builds edgetune for Jetson (aarch64-unknown-linux-gnu) with Debian's rustc 1.96 and its arm64
# std (../shared/specs/toolchain.md §1), installing the toolchain from Debian when missing.
#
#   scripts/cross-build.sh                 # JetPack 6 (glibc ≤ 2.35): release binary (+ libraries
#                                          # and the cuda build when those features exist)
#   scripts/cross-build.sh --glibc 2.31    # JetPack 5 / Xavier: links against glibc 2.31 through
#                                          # cargo-zigbuild + ziglang from PyPI
#
# Prints each artefact and the highest GLIBC symbol version it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
glibc=""
while [ $# -gt 0 ]; do
  case "$1" in
    --glibc) glibc="$2"; shift 2 ;;
    *) echo "usage: $0 [--glibc 2.31]" >&2; exit 2 ;;
  esac
done

target=aarch64-unknown-linux-gnu
if ! [ -x /usr/bin/rustc ] || ! [ -d /usr/lib/rustlib/$target ] || ! [ -x /usr/bin/aarch64-linux-gnu-gcc ]; then
  echo "installing Debian's rustc-web with the arm64 std and the cross linker"
  export DEBIAN_FRONTEND=noninteractive
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    rustc-web cargo-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user binutils-aarch64-linux-gnu >/dev/null
fi
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
cargo=/usr/bin/cargo
build_target=$target
if [ -n "$glibc" ]; then
  # Zig is only the linker here; the std still comes from Debian's arm64 package.
  venv=.venv-zig
  [ -x $venv/bin/cargo-zigbuild ] || { python3 -m venv $venv && $venv/bin/pip install -q ziglang cargo-zigbuild; }
  export PATH="$PWD/$venv/bin:$PATH"
  cargo="cargo-zigbuild"
  build_target="$target.$glibc"
  # cargo-zigbuild needs the zig it wraps on PATH under that name.
  ln -sf "$($venv/bin/python -c 'import ziglang, os; print(os.path.dirname(ziglang.__file__))')/zig" $venv/bin/zig
fi

features=$(sed -n '/^\[features\]/,/^\[/p' Cargo.toml)
variants=("")
grep -q '^cuda *=' <<<"$features" && variants+=("cuda")

report() {
  local f=$1
  [ -f "$f" ] || return 0
  local v
  v=$(aarch64-linux-gnu-objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  printf '%-70s %8s KiB  needs %s\n' "$f" "$(( $(stat -c %s "$f") / 1024 ))" "${v:-no GLIBC symbols}"
}

for feat in "${variants[@]}"; do
  args=(build --release --locked --target "$build_target")
  [ -n "$feat" ] && args+=(--features "$feat")
  grep -q '^ffi *=' <<<"$features" && args+=(--features "${feat:+$feat,}ffi")
  echo "== $cargo ${args[*]}"
  $cargo "${args[@]}"
  out=target/$target/release
  if [ -n "$feat" ]; then
    mkdir -p "$out/$feat" && cp "$out/edgetune" "$out/$feat/edgetune"
    report "$out/$feat/edgetune"
  else
    report "$out/edgetune"
  fi
  report "$out/libedgetune.so"
  report "$out/libedgetune.a"
done
