#!/usr/bin/env bash
# Builds edgetune for Jetson (aarch64-unknown-linux-gnu) with Debian's rustc 1.96 and its arm64
# std (Debian's rustc-web/libstd-rust-dev:arm64), installing the toolchain from Debian when missing.
#
#   scripts/cross-build.sh                 # JetPack 6 (glibc ≤ 2.35): release binary (+ the cuda
#                                          # build when that feature exists)
#   scripts/cross-build.sh --glibc 2.31    # JetPack 5 / Xavier: links against glibc 2.31 through
#                                          # cargo-zigbuild + ziglang from PyPI
#   scripts/cross-build.sh --lib [--out DIR] [--profile P]
#                                          # the C libraries instead (feature ffi, cdylib +
#                                          # staticlib): DIR/include/edgetune.h, DIR/lib/libedgetune.{a,so}
#                                          # (DIR/cuda/lib/ for the cuda build); DIR defaults to
#                                          # target/aarch64-unknown-linux-gnu/edgetune-c; P to
#                                          # release (examples/c/run.sh uses `test`, whose
#                                          # dependencies scripts/test-aarch64.sh already built)
#
# Prints each artefact and the highest GLIBC symbol version it needs, and fails when that is
# newer than the target's glibc (2.35 for JetPack 6, or the --glibc value).
set -euo pipefail
cd "$(dirname "$0")/.."
glibc=""
lib=0
dist=""
profile=release
while [ $# -gt 0 ]; do
  case "$1" in
    --glibc) glibc="$2"; shift 2 ;;
    --lib) lib=1; shift ;;
    --out) dist="$2"; shift 2 ;;
    --profile) profile="$2"; shift 2 ;;
    *) echo "usage: $0 [--glibc 2.31] [--lib [--out DIR] [--profile P]]" >&2; exit 2 ;;
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
  # cargo-zigbuild runs `$CARGO` (else `cargo` from PATH, rustup's): use Debian's, whose
  # rustc has the arm64 std.
  export CARGO=/usr/bin/cargo
  # cargo-zigbuild needs the zig it wraps on PATH under that name.
  ln -sf "$($venv/bin/python -c 'import ziglang, os; print(os.path.dirname(ziglang.__file__))')/zig" $venv/bin/zig
fi

features=$(sed -n '/^\[features\]/,/^\[/p' Cargo.toml)
variants=("")
grep -q '^cuda *=' <<<"$features" && variants+=("cuda")
if [ ${#variants[@]} -gt 1 ]; then
  echo "building the default and the cuda variants (Cargo.toml has a cuda feature)"
else
  echo "building the default variant only (Cargo.toml has no cuda feature)"
fi

# The newest glibc the artefacts may need: JetPack 6 ships 2.35, JetPack 5 2.31.
max_glibc=${glibc:-2.35}
built=()
too_new=()
report() {
  local f=$1
  [ -f "$f" ] || return 0
  local v
  v=$(aarch64-linux-gnu-objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  printf '%-70s %8s KiB  needs %s\n' "$f" "$(( $(stat -c %s "$f") / 1024 ))" "${v:-no GLIBC symbols}"
  built+=("$f (${v:-no GLIBC symbols})")
  if [ -n "$v" ] && [ "$(printf '%s\n%s\n' "${v#GLIBC_}" "$max_glibc" | sort -V | tail -1)" != "$max_glibc" ]; then
    too_new+=("$f needs $v > GLIBC_$max_glibc")
  fi
}
# Lists what was built; fails when an artefact needs a newer glibc than the target has.
summary() {
  echo "built (target glibc $max_glibc):"
  printf '  %s\n' "${built[@]}"
  if [ ${#too_new[@]} -gt 0 ]; then
    printf 'error: %s\n' "${too_new[@]}" >&2
    exit 1
  fi
}

out=target/$target/release
if [ "$lib" = 1 ]; then
  # The C libraries: `cargo rustc --crate-type` so that the crate's normal build stays rlib-only.
  dist=${dist:-target/$target/edgetune-c}
  case "$profile" in
    dev | test) out=target/$target/debug ;;
    *) out=target/$target/$profile ;;
  esac
  mkdir -p "$dist/include"
  cp include/edgetune.h "$dist/include/"
  for feat in "${variants[@]}"; do
    args=(rustc -p edgetune --profile "$profile" --locked --target "$build_target" --lib --features "${feat:+$feat,}ffi"
      --crate-type cdylib,staticlib)
    echo "== $cargo ${args[*]}"
    $cargo "${args[@]}"
    dest=$dist/${feat:+$feat/}lib
    mkdir -p "$dest"
    cp "$out/libedgetune.a" "$out/libedgetune.so" "$dest/"
    report "$dest/libedgetune.so"
    # A static archive's symbols carry no GLIBC versions until the final link.
    printf '%-70s %8s KiB\n' "$dest/libedgetune.a" "$(( $(stat -c %s "$dest/libedgetune.a") / 1024 ))"
  done
  echo "header and libraries in $dist"
  summary
  exit 0
fi

for feat in "${variants[@]}"; do
  args=(build --release --locked --target "$build_target" --bin edgetune)
  [ -n "$feat" ] && args+=(--features "$feat")
  echo "== $cargo ${args[*]}"
  $cargo "${args[@]}"
  if [ -n "$feat" ]; then
    mkdir -p "$out/$feat" && cp "$out/edgetune" "$out/$feat/edgetune"
    report "$out/$feat/edgetune"
  else
    report "$out/edgetune"
  fi
done
summary
