"""Writes gguf_py_small.gguf with gguf-py (the reference writer) for tests/gguf/roundtrip.rs.

Run: /work/venv-ref/bin/python tests/gguf_data/make_gguf_py_fixture.py tests/gguf_data/gguf_py_small.gguf
The expected values in the Rust test are the literals below, not anything our reader printed.
"""
import sys

import numpy as np
import gguf

w = gguf.GGUFWriter(sys.argv[1], arch="llama")
w.add_custom_alignment(64)
w.add_uint32("llama.context_length", 131072)
w.add_uint64("test.u64", 2**40 + 7)
w.add_int32("test.i32", -5)
w.add_float32("llama.rope.freq_base", 500000.0)
w.add_float64("test.f64", 0.125)
w.add_bool("test.bool", True)
w.add_uint8("test.u8", 200)
w.add_int8("test.i8", -100)
w.add_uint16("test.u16", 65535)
w.add_int16("test.i16", -32768)
w.add_int64("test.i64", -(2**40))
w.add_string("tokenizer.chat_template", "{{ héllo }} ✓")
w.add_array("tokenizer.ggml.tokens", ["<s>", "a", "Ġb", "é"])
w.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25, 3.0])
w.add_array("tokenizer.ggml.token_type", [3, 1, 1, 1])
w.add_array("test.nested", [[1, 2], [3]])
w.add_tensor("f32.weight", np.arange(12, dtype=np.float32).reshape(3, 4))
w.add_tensor("f16.weight", np.arange(8, dtype=np.float16))
q8 = gguf.quants.quantize(np.linspace(-1, 1, 128, dtype=np.float32).reshape(2, 64), gguf.GGMLQuantizationType.Q8_0)
w.add_tensor("q8.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.add_tensor("q4k.weight", np.arange(144, dtype=np.uint8).reshape(1, 144), raw_dtype=gguf.GGMLQuantizationType.Q4_K)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
