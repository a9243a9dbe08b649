#!/usr/bin/env bash
# Regenerates the C header from src/ffi/ with cbindgen (pinned; installed from crates.io when
# missing) into a temp file and compares it with the checked-in include/edgetune.h: fails, with
# the diff, when the header is stale.
#
#   scripts/check-header.sh           # CI: check
#   scripts/check-header.sh --write   # after changing src/ffi/: rewrite include/edgetune.h
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.29.4
write=0
case "${1:-}" in
  --write) write=1 ;;
  "") ;;
  *) echo "usage: $0 [--write]" >&2; exit 2 ;;
esac
cbindgen=$(command -v cbindgen || true)
if [ -z "$cbindgen" ] || [ "$("$cbindgen" --version)" != "cbindgen $version" ]; then
  echo "installing cbindgen $version (cargo install, about 2 minutes)"
  cargo install --locked --quiet "cbindgen@$version"
  cbindgen="${CARGO_HOME:-$HOME/.cargo}/bin/cbindgen"
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
# Single-file mode: only src/ffi/ and its submodules are scanned, not the whole crate's
# constants and enums.
"$cbindgen" --quiet --config cbindgen.toml --output "$tmp" src/ffi/mod.rs
if [ "$write" = 1 ]; then
  cp "$tmp" include/edgetune.h
  echo "wrote include/edgetune.h"
elif ! diff -u include/edgetune.h "$tmp"; then
  echo "include/edgetune.h is stale: run scripts/check-header.sh --write and commit it" >&2
  exit 1
else
  echo "include/edgetune.h is current"
fi
