"""Checks an adapter GGUF written by edgetune the way llama.cpp's loader does, reading both files
with gguf-py (llama_adapter_lora_init_impl in llama.cpp's src/llama-adapter.cpp: general.type,
architecture, adapter.type, an f32 adapter.lora.alpha, only .lora_a/.lora_b (and ignored
*_norm.weight) tensors, both halves of each pair, the base tensor present, and the shape rules
base.ne[0] == a.ne[0], base.ne[1] == b.ne[1], a.ne[1] == b.ne[0]).

Usage: lora_gguf_check.py ADAPTER.gguf BASE.gguf OUT_DIR

Exits non-zero with a message on the first violation. Writes OUT_DIR/lora_meta.json (alpha, and
per tensor its name, ne shape and type) and OUT_DIR/<tensor>.npy (gguf-py's dequantization).
"""
import json
import os
import sys

import numpy as np
import gguf

adapter_path, base_path, out_dir = sys.argv[1:4]
a = gguf.GGUFReader(adapter_path)
base = gguf.GGUFReader(base_path)


def fail(msg):
    sys.exit(f"llama.cpp would refuse {adapter_path}: {msg}")


def string(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return ""
    if f.types != [gguf.GGUFValueType.STRING]:
        fail(f"{key} is not a string")
    return f.contents()


if string(a, "general.type") != "adapter":
    fail("general.type is not 'adapter'")
if string(a, "general.architecture") != string(base, "general.architecture"):
    fail("model arch and LoRA arch mismatch")
if string(a, "adapter.type") != "lora":
    fail("adapter.type is not 'lora'")
alpha_field = a.fields.get("adapter.lora.alpha")
alpha = 0.0
if alpha_field is not None:
    # gguf_get_val_f32 asserts the type.
    if alpha_field.types != [gguf.GGUFValueType.FLOAT32]:
        fail(f"adapter.lora.alpha has type {alpha_field.types}, not FLOAT32")
    alpha = float(alpha_field.contents())

base_tensors = {t.name: t for t in base.tensors}
pairs = {}
meta = {"alpha": alpha, "tensors": []}
for t in a.tensors:
    name = t.name
    if name.endswith(".lora_a"):
        pairs.setdefault(name[: -len(".lora_a")], {})["a"] = t
    elif name.endswith(".lora_b"):
        pairs.setdefault(name[: -len(".lora_b")], {})["b"] = t
    elif name.endswith("_norm.weight"):
        continue
    else:
        fail(f"LoRA tensor '{name}' has unexpected suffix")
    if t.tensor_type.name not in ("F32", "F16", "BF16", "Q8_0"):
        fail(f"{name}: type {t.tensor_type.name}")
    meta["tensors"].append({"name": name, "shape": [int(x) for x in t.shape], "type": t.tensor_type.name})
    deq = gguf.quants.dequantize(t.data, t.tensor_type)
    np.save(os.path.join(out_dir, name + ".npy"), np.ascontiguousarray(deq, dtype=np.float32))

for name, p in pairs.items():
    if "a" not in p or "b" not in p:
        fail(f"LoRA tensor pair for '{name}' is missing one component")
    if name not in base_tensors:
        fail(f"LoRA tensor '{name}' does not exist in base model")
    w = [int(x) for x in base_tensors[name].shape]
    ta = [int(x) for x in p["a"].shape]
    tb = [int(x) for x in p["b"].shape]
    if w[0] != ta[0] or w[1] != tb[1]:
        fail(f"tensor '{name}' has incorrect shape: base {w}, a {ta}, b {tb}")
    if ta[1] != tb[0]:
        fail(f"lora_a tensor is not transposed: a {ta}, b {tb}")

meta["pairs"] = len(pairs)
with open(os.path.join(out_dir, "lora_meta.json"), "w") as f:
    json.dump(meta, f)
