#!/usr/bin/env python3
"""Compares edgetune's logits with llama.cpp's (through llama-cpp-python) on generated models.

Not part of CI: llama-cpp-python compiles llama.cpp (about 15 minutes on 2 cores). Usage:

    python3 -m venv .venv-llama && .venv-llama/bin/pip install llama-cpp-python numpy
    cargo build --release
    scripts/fetch-llama3-tokenizer.sh
    .venv-llama/bin/python scripts/compare-llama-cpp.py [--types f32,q8_0,q4_0,q4_k_m]

For each weight type it writes the `tiny` preset with the real Llama 3.1 vocabulary, runs the
same token ids through `edgetune perplexity --dump-logits` and through llama.cpp with an F32 KV
cache (type_k = type_v = 0) and no flash attention, and prints max |Δ| over all logits, relative
to max |logit|, and whether the argmax agrees at every position.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
from llama_cpp import Llama

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
exe = os.path.join(root, "target", "release", "edgetune")

ap = argparse.ArgumentParser()
ap.add_argument("--types", default="f32,q8_0,q4_0,q4_k_m")
ap.add_argument("--tokens", type=int, default=48)
args = ap.parse_args()

tok_json = subprocess.check_output([os.path.join(root, "scripts", "fetch-llama3-tokenizer.sh")], text=True).strip()
rng = np.random.default_rng(7)
tokens = [128000] + [int(t) for t in rng.integers(0, 128000, args.tokens - 1)]

print(f"{'type':<8} {'max |Δ|':>12} {'max |logit|':>12} {'relative':>10} {'argmax agree':>13}")
worst = 0.0
with tempfile.TemporaryDirectory() as d:
    for ty in args.types.split(","):
        model = os.path.join(d, f"tiny-{ty}.gguf")
        subprocess.run([exe, "testmodel", "--preset", "tiny", "--type", ty, "--out", model,
                        "--tokenizer", tok_json, "--seed", "3"], check=True, capture_output=True)
        dump = os.path.join(d, f"ours-{ty}.npy")
        subprocess.run([exe, "perplexity", "--model", model, "--tokens", ",".join(map(str, tokens)),
                        "--dump-logits", dump], check=True, capture_output=True)
        ours = np.load(dump).astype(np.float64)
        llm = Llama(model_path=model, n_ctx=len(tokens), n_batch=len(tokens), logits_all=True,
                    type_k=0, type_v=0, flash_attn=False, n_threads=2, verbose=False)
        llm.eval(tokens)
        theirs = np.array(llm.scores[: len(tokens)], dtype=np.float64)
        diff = np.abs(ours - theirs).max()
        scale = np.abs(theirs).max()
        agree = (ours.argmax(-1) == theirs.argmax(-1)).mean()
        worst = max(worst, diff / scale)
        print(f"{ty:<8} {diff:>12.3e} {scale:>12.3e} {diff / scale:>10.2e} {agree:>13.0%}")
sys.exit(0 if worst < 1e-2 else 1)
