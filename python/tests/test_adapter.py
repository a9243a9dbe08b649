"""get_adapter / set_adapter (NumPy arrays by PEFT tensor name), init_adapter, the exports."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import edgetune

PREFIX = "base_model.model.model.layers."


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "F32"
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype="<f4").reshape(h["shape"])
    return out


def test_names_shapes_and_fresh_init(config: dict, tiny: Path) -> None:
    info = edgetune.Model(tiny).info
    with edgetune.Trainer(config) as t:
        arrays = t.get_adapter()
    n_layer = info["n_layer"]
    assert len(arrays) == n_layer * 7 * 2
    q_a = arrays[f"{PREFIX}0.self_attn.q_proj.lora_A.weight"]
    q_b = arrays[f"{PREFIX}0.self_attn.q_proj.lora_B.weight"]
    assert q_a.dtype == np.float32 and q_a.shape == (4, info["dim"])
    assert q_b.shape == (info["n_head"] * info["head_dim"], 4)
    assert not q_b.any() and q_a.any()  # PEFT's init: B = 0
    assert f"{PREFIX}{n_layer - 1}.mlp.down_proj.lora_B.weight" in arrays
    fresh = edgetune.init_adapter(config)
    assert fresh.keys() == arrays.keys()
    assert all(np.array_equal(fresh[k], arrays[k]) for k in arrays)


def test_get_is_a_snapshot_and_matches_the_peft_export(config: dict, tmp_path: Path) -> None:
    with edgetune.Trainer(config) as t:
        t.step(2)
        arrays = t.get_adapter()
        t.export("peft", tmp_path / "peft")
        t.step(1)
        assert not np.array_equal(
            t.get_adapter()[f"{PREFIX}0.self_attn.q_proj.lora_B.weight"],
            arrays[f"{PREFIX}0.self_attn.q_proj.lora_B.weight"],
        )
    exported = read_safetensors(tmp_path / "peft" / "adapter_model.safetensors")
    assert exported.keys() == arrays.keys()
    for k in arrays:  # q_proj/k_proj B in HF row order, as the export writes them
        np.testing.assert_array_equal(exported[k], arrays[k], err_msg=k)


def test_set_adapter_round_trip_and_training_from_it(config: dict, tmp_path: Path) -> None:
    with edgetune.Trainer(dict(config, steps=6)) as a:
        a.step(3)
        mid = a.get_adapter()
        loss_a = a.evaluate(data=config["data"])
        next_a = a.step(1)
    cfg_b = dict(config, steps=6, out=str(tmp_path / "b"))
    with edgetune.Trainer(cfg_b) as b:
        b.set_adapter(mid)
        got = b.get_adapter()
        assert all(np.array_equal(got[k], mid[k]) for k in mid)
        assert b.evaluate(data=config["data"]) == pytest.approx(loss_a, rel=0, abs=0)
        # b's first step sees a's first batch with fresh optimizer state: another step than
        # a's fourth, but from a's parameters (its loss is a's parameters' loss on that batch).
        assert b.step(1)[0] != next_a[0]


def test_set_adapter_accepts_float64_and_rejects_bad_input(config: dict) -> None:
    with edgetune.Trainer(config) as t:
        arrays = t.get_adapter()
        key = f"{PREFIX}1.mlp.up_proj.lora_B.weight"
        changed = {k: v.astype(np.float64) for k, v in arrays.items()}
        changed[key] = np.full_like(changed[key], 0.01)
        t.set_adapter(changed)
        assert np.all(t.get_adapter()[key] == np.float32(0.01))
        before = t.get_adapter()

        def unchanged() -> None:
            now = t.get_adapter()
            assert all(np.array_equal(now[k], before[k]) for k in before)

        bad = dict(before)
        bad[key] = np.zeros((3, 3), np.float32)
        with pytest.raises(edgetune.EdgetuneError, match="shape"):
            t.set_adapter(bad)
        unchanged()
        missing = {k: v for k, v in before.items() if k != key}
        with pytest.raises(edgetune.EdgetuneError, match="missing tensor"):
            t.set_adapter(missing)
        unchanged()
        extra = dict(before, **{"base_model.model.lm_head.lora_A.weight": np.zeros(2, np.float32)})
        with pytest.raises(edgetune.EdgetuneError, match="does not have"):
            t.set_adapter(extra)
        nan = dict(before)
        nan[key] = before[key].copy()
        nan[key][0, 0] = np.nan
        with pytest.raises(edgetune.EdgetuneError, match="non-finite"):
            t.set_adapter(nan)
        unchanged()


def test_export_adapter_and_generate_with_it(config: dict, tiny: Path, tmp_path: Path) -> None:
    with edgetune.Trainer(config) as t:
        t.step(4)
        arrays = t.get_adapter()
        t.export("gguf", tmp_path / "trainer.gguf")
        with pytest.raises(edgetune.EdgetuneError, match="format"):
            t.export("onnx", tmp_path / "x")
    edgetune.export_adapter(config, arrays, "gguf", tmp_path / "a.gguf")
    edgetune.export_adapter(config, arrays, "peft", tmp_path / "peft")
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "trainer.gguf").read_bytes()
    m = edgetune.Model(tiny)
    base = m.perplexity("The Kestrel KX-40 port")["mean_nll"]
    m.set_adapter(tmp_path / "peft")
    adapted = m.perplexity("The Kestrel KX-40 port")["mean_nll"]
    m.set_adapter(tmp_path / "a.gguf")
    assert m.perplexity("The Kestrel KX-40 port")["mean_nll"] == pytest.approx(adapted, rel=1e-4)
    m.set_adapter(None)
    assert m.perplexity("The Kestrel KX-40 port")["mean_nll"] == base
    assert adapted != base


def test_other_methods_are_refused_by_name(config: dict) -> None:
    with edgetune.Trainer(dict(config, method="dora")) as t:
        with pytest.raises(edgetune.EdgetuneError, match="dora"):
            t.get_adapter()
