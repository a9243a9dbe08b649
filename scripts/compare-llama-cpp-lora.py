#!/usr/bin/env python3
"""Compares edgetune's logits with llama.cpp's (through llama-cpp-python) for a base model plus a
LoRA adapter that edgetune exported as GGUF, at adapter scale 1.0 and 0.5.

Not part of CI (llama-cpp-python compiles llama.cpp). Usage:

    python3 -m venv .venv-llama && .venv-llama/bin/pip install llama-cpp-python numpy
    cargo build --release
    .venv-llama/bin/python scripts/compare-llama-cpp-lora.py [--types f32,q8_0,q4_k_m] [--exe PATH]

For each base type it writes the `tiny` preset (synthetic vocabulary), and for each adapter case
a PEFT directory with seeded random A and B (written here, laid out as PEFT saves one), which
`edgetune export --format gguf` turns into a llama.cpp adapter. The same token ids then run
through `edgetune perplexity --adapter A.gguf --adapter-scale S --dump-logits` and through
llama.cpp with `lora_path=A.gguf, lora_scale=S`, an F32 KV cache and no flash attention. It prints
max |Δ| over all logits, max |logit|, how much the adapter moves the logits (so the comparison
means something), and whether the argmax agrees at every position; for f32 adapters also the
difference between loading the PEFT directory and the GGUF on our side; for f16/q8_0 adapters
also max |Δ| against llama.cpp running the same values re-exported as f32 ("f32 copy": llama.cpp
rounds the activations to f16/q8_0 when it multiplies by f16/q8_0 adapter tensors, we do not).
"""
import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import llama_cpp
from llama_cpp import Llama

# Silence llama.cpp's log (the CPU_REPACK notes for every adapted tensor drown the table).
_quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
llama_cpp.llama_log_set(_quiet, None)

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ap = argparse.ArgumentParser()
ap.add_argument("--types", default="f32,q8_0,q4_k_m")
ap.add_argument("--tokens", type=int, default=32)
ap.add_argument("--exe", default=None, help="edgetune binary (default: target/release, else target/debug)")
args = ap.parse_args()
exe = args.exe
if exe is None:
    exe = os.path.join(root, "target", "release", "edgetune")
    if not os.path.exists(exe):
        exe = os.path.join(root, "target", "debug", "edgetune")

# tiny preset: dim 256, 4 heads / 2 KV heads of 64, FFN 512, 2 layers.
DIM, Q, KV, FFN, LAYERS = 256, 256, 128, 512, 2
MODS = {"q_proj": ("self_attn", DIM, Q), "k_proj": ("self_attn", DIM, KV), "v_proj": ("self_attn", DIM, KV),
        "o_proj": ("self_attn", Q, DIM), "gate_proj": ("mlp", DIM, FFN), "up_proj": ("mlp", DIM, FFN),
        "down_proj": ("mlp", FFN, DIM)}

# name, rank, alpha, rsLoRA, per-module ranks, exported dtype
CASES = [
    ("r8 f32", 8, 16, False, {}, "f32"),
    ("r8 f16", 8, 16, False, {}, "f16"),
    ("r32 rsLoRA q8_0", 32, 16, True, {}, "q8_0"),
    ("r8 + r4 module rsLoRA f32", 8, 8, True, {"model.layers.0.self_attn.v_proj": 4}, "f32"),
]


def save_safetensors(path, tensors, metadata):
    """The safetensors layout: u64 header length, JSON header, then the data."""
    header, blobs, off = {"__metadata__": metadata}, [], 0
    for name in sorted(tensors):
        b = np.ascontiguousarray(tensors[name], dtype=np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_peft(d, rank, alpha, rslora, rank_pattern, seed):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(LAYERS):
        for proj, (par, i, o) in MODS.items():
            key = f"model.layers.{layer}.{par}.{proj}"
            r = rank_pattern.get(key, rank)
            tensors[f"base_model.model.{key}.lora_A.weight"] = rng.uniform(-1, 1, (r, i)) / np.sqrt(i)
            tensors[f"base_model.model.{key}.lora_B.weight"] = rng.uniform(-1, 1, (o, r)) * 0.2
    save_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors, {"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
           "lora_dropout": 0.0, "bias": "none", "use_rslora": rslora, "use_dora": False,
           "fan_in_fan_out": False, "target_modules": sorted(MODS), "rank_pattern": rank_pattern,
           "alpha_pattern": {}, "base_model_name_or_path": None}
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)


def ours(model, tokens, d, adapter=None, scale=1.0):
    dump = os.path.join(d, "ours.npy")
    cmd = [exe, "perplexity", "--model", model, "--tokens", ",".join(map(str, tokens)), "--dump-logits", dump]
    if adapter:
        cmd += ["--adapter", adapter, "--adapter-scale", str(scale)]
    subprocess.run(cmd, check=True, capture_output=True)
    return np.load(dump).astype(np.float64)


def theirs(model, tokens, adapter=None, scale=1.0):
    kw = dict(lora_path=adapter, lora_scale=scale) if adapter else {}
    llm = Llama(model_path=model, n_ctx=len(tokens), n_batch=len(tokens), logits_all=True,
                type_k=0, type_v=0, flash_attn=False, n_threads=2, verbose=False, **kw)
    llm.eval(tokens)
    out = np.array(llm.scores[: len(tokens)], dtype=np.float64)
    llm.close()
    return out


rng = np.random.default_rng(7)
tokens = [256] + [int(t) for t in rng.integers(0, 256, args.tokens - 1)]
print(f"{'base':<7} {'adapter':<27} {'scale':>5} {'max |Δ|':>10} {'max |logit|':>11} "
      f"{'adapter moves':>13} {'argmax':>7} {'PEFT vs GGUF':>12} {'f32 copy':>12}")
worst = 0.0  # over the F32 base with f32 adapter values
with tempfile.TemporaryDirectory() as d:
    for ty in args.types.split(","):
        model = os.path.join(d, f"tiny-{ty}.gguf")
        subprocess.run([exe, "testmodel", "--preset", "tiny", "--type", ty, "--out", model, "--seed", "3"],
                       check=True, capture_output=True)
        base = ours(model, tokens, d)
        ref = theirs(model, tokens)
        diff = np.abs(base - ref).max()
        print(f"{ty:<7} {'(none: base model only)':<27} {'-':>5} {diff:>10.3e} {np.abs(ref).max():>11.3e} "
              f"{0:>13.3e} {(base.argmax(-1) == ref.argmax(-1)).mean():>7.0%} {'-':>12} {'-':>12}")
        for ci, (name, rank, alpha, rslora, pattern, dtype) in enumerate(CASES):
            peft = os.path.join(d, f"peft-{ci}")
            write_peft(peft, rank, alpha, rslora, pattern, seed=100 + ci)
            gguf = os.path.join(d, f"adapter-{ci}-{dtype}.gguf")
            subprocess.run([exe, "export", "--model", model, "--adapter", peft, "--format", "gguf",
                            "--dtype", dtype, "--out", gguf], check=True, capture_output=True)
            for scale in (1.0, 0.5):
                a = ours(model, tokens, d, gguf, scale)
                b = theirs(model, tokens, gguf, scale)
                diff = np.abs(a - b).max()
                peak = np.abs(b).max()
                moves = np.abs(a - base).max()
                agree = (a.argmax(-1) == b.argmax(-1)).mean()
                via_peft = "-"
                if dtype == "f32":
                    via_peft = f"{np.abs(ours(model, tokens, d, peft, scale) - a).max():.1e}"
                else:
                    # llama.cpp multiplies f16/q8_0 adapters with activations rounded to f16/q8_0;
                    # the same values as an f32 adapter show what our import itself does.
                    copy = os.path.join(d, f"adapter-{ci}-as-f32.gguf")
                    subprocess.run([exe, "export", "--model", model, "--adapter", gguf, "--format", "gguf",
                                    "--dtype", "f32", "--out", copy], check=True, capture_output=True)
                    f32_copy = np.abs(a - theirs(model, tokens, copy, scale)).max()
                if ty == "f32":
                    # With an F32 base nothing is rounded on either side but f32 sums: these must agree.
                    exact = diff if dtype == "f32" else f32_copy
                    worst = max(worst, exact / peak)
                print(f"{ty:<7} {name:<27} {scale:>5} {diff:>10.3e} {peak:>11.3e} {moves:>13.3e} "
                      f"{agree:>7.0%} {via_peft:>12} {'-' if dtype == 'f32' else f'{f32_copy:.3e}':>12}")
print(f"F32 base, f32 adapter values: worst max |Δ| / max |logit| {worst:.2e} (must be < 1e-5)")
sys.exit(0 if worst < 1e-5 else 1)
