"""Writes a PEFT LoRA directory with Python safetensors, laid out as PEFT saves one for a
Hugging Face Llama (q/k lora_B rows in HF order), for tests/export/python.rs to import.

Usage: peft_write.py OUT_DIR DIMS.json NPY_DIR

Adapts q, k, v and down_proj of every layer at rank 4 (layer 0's v_proj at rank 2 through
rank_pattern), lora_alpha 8. Writes to NPY_DIR the same tensors in edgetune's convention:
blk.N.<stem>.lora_A.npy / lora_B.npy, with q/k lora_B moved to GGUF row order by the
converter's permute.
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

from peft_permute import permute

out_dir, dims_path, npy_dir = sys.argv[1:4]
dims = json.load(open(dims_path))
os.makedirs(out_dir, exist_ok=True)
rng = np.random.default_rng(1234)
d, q, kv, ffn = dims["dim"], dims["n_head"] * dims["head_dim"], dims["n_head_kv"] * dims["head_dim"], dims["ffn"]
mods = {"q_proj": ("self_attn", "attn_q", d, q), "k_proj": ("self_attn", "attn_k", d, kv),
        "v_proj": ("self_attn", "attn_v", d, kv), "down_proj": ("mlp", "ffn_down", ffn, d)}
rank_pattern = {"model.layers.0.self_attn.v_proj": 2}
tensors = {}
for layer in range(dims["n_layer"]):
    for proj, (par, stem, i, o) in mods.items():
        key = f"model.layers.{layer}.{par}.{proj}"
        r = rank_pattern.get(key, 4)
        a = rng.uniform(-0.1, 0.1, (r, i)).astype(np.float32)
        b = rng.uniform(-0.1, 0.1, (o, r)).astype(np.float32)
        tensors[f"base_model.model.{key}.lora_A.weight"] = a
        tensors[f"base_model.model.{key}.lora_B.weight"] = b
        if proj in ("q_proj", "k_proj"):
            b = permute(b, dims["n_head"], dims["n_head_kv"] if proj == "k_proj" else None)
        np.save(os.path.join(npy_dir, f"blk.{layer}.{stem}.lora_A.npy"), a)
        np.save(os.path.join(npy_dir, f"blk.{layer}.{stem}.lora_B.npy"), np.ascontiguousarray(b))
save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
config = {
    "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "meta-llama/Llama-3.2-1B",
    "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
    "layers_pattern": None, "layers_to_transform": None, "lora_alpha": 8, "lora_dropout": 0.0,
    "modules_to_save": None, "peft_type": "LORA", "r": 4, "rank_pattern": rank_pattern,
    "revision": None, "target_modules": sorted(mods), "task_type": "CAUSAL_LM", "use_dora": False,
    "use_rslora": False,
}
with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
