#!/usr/bin/env bash
# Tests every CUDA kernel in kernels/*.cu on the CPU, without a GPU: g++ compiles the kernel
# sources against kernels/test/emu.h (a fiber-based emulation of blocks, warps, shuffles,
# barriers and the bf16 mma) and kernels/test/kernels_test.cpp compares each kernel with
# independent references (gguf-py's dequantized weights from kernels/test/gen_weights.py,
# double-precision loops). The PTX itself is checked by scripts/build-ptx.sh --check; on a
# machine with a GPU the Rust parity tests run the real PTX.
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/kernel-test
mkdir -p "$out"
python=${EDGETUNE_PYTHON:-$(scripts/setup-python.sh)}
"$python" kernels/test/gen_weights.py "$out/weights"
g++ -std=c++20 -O2 -ffp-contract=off -Wall -Wno-unknown-pragmas -Wno-unused-function \
  -o "$out/kernels_test" kernels/test/kernels_test.cpp
"$out/kernels_test" "$out/weights"
