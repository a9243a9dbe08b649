#!/usr/bin/env python3
"""Writes random weight matrices of every ggml type edgetune decodes, with their dequantized
values computed by gguf-py (the independent reference), for kernels/test/kernels_test.cpp.

Usage: gen_weights.py OUT_DIR. For each type id T: OUT_DIR/T.raw (rows × row_bytes GGUF
bytes) and OUT_DIR/T.f32 (rows × cols little-endian f32), and one line "T rows cols
row_bytes" in OUT_DIR/cases.txt. Random bytes, with every f16/f32 scale field overwritten by a
modest positive or negative value (random bytes there would give inf/NaN scales).
"""

import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

ROWS = 72  # not a multiple of the 64-row mma tile
# type id, elements per block, bytes per block, byte offsets of f16 scale fields
TYPES = [
    (Q.F32, 1, 4, None),
    (Q.F16, 1, 2, None),
    (Q.BF16, 1, 2, None),
    (Q.Q4_0, 32, 18, [0]),
    (Q.Q4_1, 32, 20, [0, 2]),
    (Q.Q5_0, 32, 22, [0]),
    (Q.Q5_1, 32, 24, [0, 2]),
    (Q.Q8_0, 32, 34, [0]),
    (Q.Q8_1, 32, 36, [0, 2]),
    (Q.Q2_K, 256, 84, [80, 82]),
    (Q.Q3_K, 256, 110, [108]),
    (Q.Q4_K, 256, 144, [0, 2]),
    (Q.Q5_K, 256, 176, [0, 2]),
    (Q.Q6_K, 256, 210, [208]),
    (Q.Q8_K, 256, 292, []),
    (Q.IQ4_NL, 32, 18, [0]),
]


def main(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    lines = []
    for ty, be, bb, f16_fields in TYPES:
        # Float matrices: 48 columns (a multiple of 16, not of 32: the kernels' edge path).
        cols = 48 if be == 1 else 512
        row_bytes = cols // be * bb
        if ty == Q.F32:
            vals = rng.uniform(-1, 1, (ROWS, cols)).astype("<f4")
            raw = vals.tobytes()
        elif ty == Q.F16:
            vals = rng.uniform(-1, 1, (ROWS, cols)).astype("<f2")
            raw = vals.tobytes()
        elif ty == Q.BF16:
            f = rng.uniform(-1, 1, (ROWS, cols)).astype("<f4")
            raw = (f.view("<u4") >> 16).astype("<u2").tobytes()
        else:
            blocks = rng.integers(0, 256, (ROWS * cols // be, bb), dtype=np.uint8)
            for off in f16_fields:
                d = rng.uniform(0.002, 0.05, blocks.shape[0]) * rng.choice([-1, 1], blocks.shape[0])
                blocks[:, off : off + 2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
            if ty == Q.Q8_K:
                d = rng.uniform(0.002, 0.05, blocks.shape[0]).astype("<f4")
                blocks[:, 0:4] = d.view(np.uint8).reshape(-1, 4)
            raw = blocks.tobytes()
        data = np.frombuffer(raw, dtype=np.uint8).reshape(ROWS, row_bytes)
        if ty == Q.Q8_1:
            # gguf-py has no Q8_1 decoder: x = d · q (the sum field s is not used to decode).
            b = data.reshape(-1, 36)
            d = b[:, 0:2].copy().view("<f2").astype(np.float32)
            expect = (d * b[:, 4:].view(np.int8).astype(np.float32)).reshape(ROWS, cols)
        elif ty == Q.Q8_K:
            b = data.reshape(-1, 292)
            d = b[:, 0:4].copy().view("<f4")
            expect = (d * b[:, 4:260].view(np.int8).astype(np.float32)).reshape(ROWS, cols)
        else:
            expect = dequantize(data, ty).astype(np.float32).reshape(ROWS, cols)
        with open(os.path.join(out, f"{int(ty)}.raw"), "wb") as f:
            f.write(raw)
        with open(os.path.join(out, f"{int(ty)}.f32"), "wb") as f:
            f.write(expect.astype("<f4").tobytes())
        lines.append(f"{int(ty)} {ROWS} {cols} {row_bytes}\n")
    with open(os.path.join(out, "cases.txt"), "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main(sys.argv[1])
