"""Writes a GGUF file with gguf-py (a tool edgetune did not write) for tests/gguf/gguf_py.rs.

Usage: gguf_py_write.py OUT_DIR

OUT_DIR/pywritten.gguf holds one metadata key of every value type and, for every type gguf-py can
quantize, a tensor quantized by gguf-py from seeded random data. Beside it:
  <type>.src.npy   the f32 source values,
  <type>.deq.npy   gguf-py's dequantization of its own quantized bytes,
  <type>.q.bin     gguf-py's quantized bytes.
"""
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

out_dir = sys.argv[1]
rng = np.random.default_rng(1234)
w = gguf.GGUFWriter(os.path.join(out_dir, "pywritten.gguf"), "llama")
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 60000)
w.add_int16("test.i16", -30000)
w.add_uint32("test.u32", 4000000000)
w.add_int32("test.i32", -2000000000)
w.add_float32("test.f32", 0.15625)
w.add_bool("test.bool", True)
w.add_string("test.string", "héllo, 世界 🦙")
w.add_uint64("test.u64", 2**63 + 5)
w.add_int64("test.i64", -(2**62))
w.add_float64("test.f64", 1.0 / 3.0)
w.add_array("test.array.i32", [1, -2, 3])
w.add_array("test.array.str", ["a", "", "ccc"])
w.add_array("test.array.nested", [[1, 2], [3]])

types = {"F32": T.F32, "F16": T.F16, "BF16": T.BF16, "Q8_0": T.Q8_0, "Q4_0": T.Q4_0,
         "Q4_1": T.Q4_1, "Q5_0": T.Q5_0, "Q5_1": T.Q5_1}
for name, qt in types.items():
    # 6 rows of 256: includes blocks with a large outlier and an all-zero block.
    src = rng.standard_normal((6, 256)).astype(np.float32)
    src[1, 5] = 40.0
    src[2, 32:64] = 0.0
    src[3] *= 1e-6
    q = gguf.quants.quantize(src, qt)
    deq = gguf.quants.dequantize(q, qt)
    np.save(os.path.join(out_dir, f"{name}.src.npy"), src)
    np.save(os.path.join(out_dir, f"{name}.deq.npy"), deq.astype(np.float32))
    np.asarray(q).tofile(os.path.join(out_dir, f"{name}.q.bin"))
    w.add_tensor(f"t.{name}", q, raw_dtype=qt)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
