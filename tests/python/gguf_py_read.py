"""Reads a GGUF file written by edgetune with gguf-py, for tests/gguf/gguf_py.rs.

Usage: gguf_py_read.py FILE OUT_DIR

Writes OUT_DIR/meta.json (every key with its gguf-py value type and value; every tensor's name,
shape, type and byte count) and, for every tensor gguf-py can dequantize, OUT_DIR/<name>.npy with
gguf-py's dequantization (f32). Tensors it cannot dequantize are listed under "unsupported".
"""
import json
import os
import sys

import numpy as np
import gguf

path, out_dir = sys.argv[1], sys.argv[2]
r = gguf.GGUFReader(path)


def value(field):
    types = [t.name for t in field.types]
    v = field.contents()
    if isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
        v = repr(v)
    return {"types": types, "value": v}


meta = {"fields": {}, "tensors": [], "unsupported": []}
for name, field in r.fields.items():
    if name.startswith("GGUF."):
        continue
    meta["fields"][name] = value(field)
for t in r.tensors:
    meta["tensors"].append({
        "name": t.name,
        "shape": [int(x) for x in t.shape],
        "type": t.tensor_type.name,
        "n_bytes": int(t.n_bytes),
        "data_offset": int(t.data_offset),
    })
    try:
        deq = gguf.quants.dequantize(t.data, t.tensor_type)
    except NotImplementedError:
        meta["unsupported"].append(t.name)
        continue
    np.save(os.path.join(out_dir, t.name + ".npy"), np.ascontiguousarray(deq, dtype=np.float32))
with open(os.path.join(out_dir, "meta.json"), "w") as f:
    json.dump(meta, f)
