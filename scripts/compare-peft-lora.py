#!/usr/bin/env python3
"""Compares edgetune's logits with PyTorch + Hugging Face PEFT's for a base model plus a LoRA
adapter that edgetune exported as a PEFT directory.

Not part of CI (PyTorch is several GB). Usage, with the venv scripts/bench-vs-peft.sh makes:

    cargo build --release
    .venv-peft/bin/python scripts/compare-peft-lora.py [--types f32,q8_0] [--exe PATH]

For each base type it writes the `tiny` preset and, per adapter case, a seed PEFT directory with
random A and B (written here). edgetune imports it and exports a llama.cpp GGUF
(`export --format gguf`), then exports that GGUF again as PEFT (`export --format peft`): the
directory PEFT loads is entirely edgetune's (its q/k lora_B rows un-permuted by our exporter from
the GGUF order). The base becomes a Hugging Face LlamaForCausalLM in f32 (scripts/hf_from_gguf.py:
gguf-py dequantization, Q/K rows un-permuted, the GGUF's RoPE frequencies) and
`PeftModel.from_pretrained` applies our directory; its logits are compared with
`edgetune perplexity --adapter A.gguf --dump-logits` on the same tokens.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from peft import PeftModel
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_from_gguf import GgufLlama  # noqa: E402

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ap = argparse.ArgumentParser()
ap.add_argument("--types", default="f32,q8_0")
ap.add_argument("--tokens", type=int, default=32)
ap.add_argument("--exe", default=None, help="edgetune binary (default: target/release, else target/debug)")
args = ap.parse_args()
exe = args.exe or os.path.join(root, "target", "release", "edgetune")
if not os.path.exists(exe):
    exe = os.path.join(root, "target", "debug", "edgetune")

DIM, Q, KV, FFN, LAYERS = 256, 256, 128, 512, 2  # the tiny preset
MODS = {"q_proj": ("self_attn", DIM, Q), "k_proj": ("self_attn", DIM, KV), "v_proj": ("self_attn", DIM, KV),
        "o_proj": ("self_attn", Q, DIM), "gate_proj": ("mlp", DIM, FFN), "up_proj": ("mlp", DIM, FFN),
        "down_proj": ("mlp", FFN, DIM)}
CASES = [("r8 alpha16", 8, 16, False, {}), ("r8 rsLoRA + r4 module", 8, 8, True, {"model.layers.0.self_attn.v_proj": 4})]


def write_seed_peft(d, rank, alpha, rslora, rank_pattern, seed):
    os.makedirs(d, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = {}
    for layer in range(LAYERS):
        for proj, (par, i, o) in MODS.items():
            key = f"model.layers.{layer}.{par}.{proj}"
            r = rank_pattern.get(key, rank)
            t[f"base_model.model.{key}.lora_A.weight"] = (rng.uniform(-1, 1, (r, i)) / np.sqrt(i)).astype(np.float32)
            t[f"base_model.model.{key}.lora_B.weight"] = (rng.uniform(-1, 1, (o, r)) * 0.2).astype(np.float32)
    save_file(t, os.path.join(d, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha,
                   "use_rslora": rslora, "rank_pattern": rank_pattern, "target_modules": sorted(MODS),
                   "bias": "none", "lora_dropout": 0.0}, f)


def edgetune(*a):
    subprocess.run([exe, *a], check=True, capture_output=True)


def ours(d, model, tokens, adapter=None):
    dump = os.path.join(d, "ours.npy")
    extra = ["--adapter", adapter] if adapter else []
    edgetune("perplexity", "--model", model, "--tokens", ",".join(map(str, tokens)), "--dump-logits", dump, *extra)
    return np.load(dump).astype(np.float64)


def hf_logits(model_path, tokens, peft_dir=None):
    model = GgufLlama(model_path).hf_model(attn_implementation="eager")
    if peft_dir:
        model = PeftModel.from_pretrained(model, peft_dir).eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].double().numpy()


torch.set_num_threads(2)
rng = np.random.default_rng(7)
tokens = [256] + [int(t) for t in rng.integers(0, 256, args.tokens - 1)]
print(f"{'base':<7} {'adapter':<24} {'max |Δ|':>10} {'max |logit|':>11} {'adapter moves':>13} {'argmax':>7}")
worst = 0.0
with tempfile.TemporaryDirectory() as d:
    for ty in args.types.split(","):
        model = os.path.join(d, f"tiny-{ty}.gguf")
        edgetune("testmodel", "--preset", "tiny", "--type", ty, "--out", model, "--seed", "3")
        base = ours(d, model, tokens)
        ref = hf_logits(model, tokens)
        print(f"{ty:<7} {'(none: base model only)':<24} {np.abs(base - ref).max():>10.3e} "
              f"{np.abs(ref).max():>11.3e} {0:>13.3e} {(base.argmax(-1) == ref.argmax(-1)).mean():>7.0%}")
        for ci, (name, rank, alpha, rslora, pattern) in enumerate(CASES):
            seed_dir, gguf_path, peft_dir = (os.path.join(d, f"{x}-{ty}-{ci}") for x in ("seed", "a.gguf", "peft"))
            write_seed_peft(seed_dir, rank, alpha, rslora, pattern, seed=200 + ci)
            edgetune("export", "--model", model, "--adapter", seed_dir, "--format", "gguf", "--out", gguf_path)
            edgetune("export", "--model", model, "--adapter", gguf_path, "--format", "peft", "--out", peft_dir)
            a = ours(d, model, tokens, gguf_path)
            b = hf_logits(model, tokens, peft_dir)
            diff, peak = np.abs(a - b).max(), np.abs(b).max()
            worst = max(worst, diff / peak)
            print(f"{ty:<7} {name:<24} {diff:>10.3e} {peak:>11.3e} {np.abs(a - base).max():>13.3e} "
                  f"{(a.argmax(-1) == b.argmax(-1)).mean():>7.0%}")
print(f"worst max |Δ| / max |logit|: {worst:.2e} (must be < 1e-5)")
sys.exit(0 if worst < 1e-5 else 1)
