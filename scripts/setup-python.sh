#!/usr/bin/env bash
# Creates .venv-ref: the Python tools the test suite checks edgetune against (gguf-py, numpy,
# safetensors, and jinja2 for the chat templates, rendered as Hugging Face's transformers does).
# Idempotent; prints the interpreter path. Used by scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-ref
if ! "$venv/bin/python" -c 'import gguf, numpy, safetensors, jinja2' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check gguf==0.19.0 'numpy>=1.26,<3' 'safetensors>=0.4,<1' jinja2==3.1.6
fi
echo "$PWD/$venv/bin/python"
