"""Reads a PEFT directory written by edgetune with Python safetensors + numpy, as PEFT would.

Usage: peft_check.py PEFT_DIR DIMS.json BASE.gguf OUT_DIR

DIMS.json: {"n_layer", "dim", "n_head", "n_head_kv", "head_dim", "ffn"}. Checks the config keys,
the safetensors metadata (format = pt), every name against PEFT's pattern, every shape
(A [r, in], B [out, r], r from r / rank_pattern), and that README.md names the base file and
hashlib's SHA-256 of it. Writes OUT_DIR/peft_meta.json and, for every lora_B of q_proj/k_proj,
OUT_DIR/<name>.gguf_order.npy: the tensor moved to GGUF row order with the converter's permute.
"""
import hashlib
import json
import os
import re
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

from peft_permute import permute

peft_dir, dims_path, base_path, out_dir = sys.argv[1:5]
dims = json.load(open(dims_path))
cfg = json.load(open(os.path.join(peft_dir, "adapter_config.json")))


def fail(msg):
    sys.exit(f"{peft_dir}: {msg}")


for k, v in {"peft_type": "LORA", "task_type": "CAUSAL_LM", "bias": "none", "use_dora": False,
             "fan_in_fan_out": False}.items():
    if cfg.get(k) != v:
        fail(f"adapter_config.json {k} = {cfg.get(k)!r}, expected {v!r}")
for k in ("r", "lora_alpha", "target_modules", "use_rslora", "rank_pattern", "alpha_pattern",
          "lora_dropout", "base_model_name_or_path"):
    if k not in cfg:
        fail(f"adapter_config.json lacks {k}")

st_path = os.path.join(peft_dir, "adapter_model.safetensors")
with safe_open(st_path, framework="np") as f:
    if (f.metadata() or {}).get("format") != "pt":
        fail(f"safetensors metadata {f.metadata()}")
tensors = load_file(st_path)

pat = re.compile(r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj\.lora_(A|B)\.weight$")
d, q, kv, ffn = dims["dim"], dims["n_head"] * dims["head_dim"], dims["n_head_kv"] * dims["head_dim"], dims["ffn"]
in_out = {"q": (d, q), "k": (d, kv), "v": (d, kv), "o": (q, d), "gate": (d, ffn), "up": (d, ffn), "down": (ffn, d)}
parent = {"q": "self_attn", "k": "self_attn", "v": "self_attn", "o": "self_attn", "gate": "mlp", "up": "mlp", "down": "mlp"}
meta = {"tensors": {}, "targets": sorted(set())}
targets = set()
for name, t in tensors.items():
    m = pat.match(name)
    if not m:
        fail(f"unexpected tensor name {name}")
    layer, par, proj, half = int(m.group(1)), m.group(2), m.group(3), m.group(4)
    if par != parent[proj] or layer >= dims["n_layer"]:
        fail(f"{name}: wrong parent or layer")
    if t.dtype not in (np.float32, np.float16):
        fail(f"{name}: dtype {t.dtype}")
    key = f"model.layers.{layer}.{par}.{proj}_proj"
    r = cfg["rank_pattern"].get(key, cfg["r"])
    i, o = in_out[proj]
    want = [r, i] if half == "A" else [o, r]
    if list(t.shape) != want:
        fail(f"{name}: shape {list(t.shape)}, PEFT expects {want}")
    targets.add(f"{proj}_proj")
    meta["tensors"][name] = {"shape": list(t.shape), "dtype": str(t.dtype)}
    if half == "B" and proj in ("q", "k"):
        n_kv = dims["n_head_kv"] if proj == "k" else None
        g = permute(t.astype(np.float32), dims["n_head"], n_kv)
        np.save(os.path.join(out_dir, name + ".gguf_order.npy"), np.ascontiguousarray(g))
if sorted(targets) != sorted(cfg["target_modules"]):
    fail(f"target_modules {cfg['target_modules']} but tensors for {sorted(targets)}")

sha = hashlib.sha256(open(base_path, "rb").read()).hexdigest()
readme = open(os.path.join(peft_dir, "README.md")).read()
if sha not in readme or os.path.basename(base_path) not in readme:
    fail("README.md does not name the base file and its SHA-256")
meta["sha256"] = sha
meta["config"] = cfg
with open(os.path.join(out_dir, "peft_meta.json"), "w") as f:
    json.dump(meta, f)
