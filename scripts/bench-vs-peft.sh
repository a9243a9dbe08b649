#!/usr/bin/env bash
# Makes .venv-peft (torch 2.5.1, transformers, peft, safetensors, numpy, gguf; about 5 GB: PyPI's
# Linux torch wheel is the CUDA build and pulls its nvidia-* libraries, which it needs even on
# the CPU) and runs scripts/bench-vs-peft.py with it; arguments pass through. Not part of CI.
# Needs `cargo build --release` first. See the docstring of scripts/bench-vs-peft.py.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-peft
if ! "$venv/bin/python" -c 'import torch, transformers, peft, safetensors, numpy, gguf' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.5.1 \
    'transformers>=4.45,<5' 'peft>=0.13,<0.18' 'accelerate>=1.0,<1.11' safetensors \
    'numpy>=1.26,<3' gguf==0.19.0
fi
exec "$venv/bin/python" scripts/bench-vs-peft.py "$@"
