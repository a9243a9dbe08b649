"""edgetune.Model, the configuration mapping, the plan and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest

import edgetune


def test_model_tokenize_generate_perplexity(tiny: Path) -> None:
    m = edgetune.Model(tiny)
    assert m.info["n_vocab"] == 261 and m.info["n_layer"] >= 1
    ids = m.tokenize("Kestrel KX-40 port?", add_bos=False)
    assert ids and all(isinstance(i, int) for i in ids)
    assert m.detokenize(ids) == "Kestrel KX-40 port?"
    text = m.generate("Hello", max_tokens=8)
    assert isinstance(text, str)
    p = m.perplexity(ids)
    assert p["predicted"] == len(ids) - 1 and p["mean_nll"] > 0 and p["perplexity"] > 1
    assert m.perplexity("abc abc")["tokens"] >= 2


def test_streamed_weights_generate_the_same_text(tiny: Path) -> None:
    want = edgetune.Model(tiny).generate("Hello", max_tokens=8)
    for head in (False, True):
        m = edgetune.Model(tiny)
        assert m.stream_stats is None
        m.stream_weights(stream_head=head)
        assert m.generate("Hello", max_tokens=8) == want
        st = m.stream_stats
        assert st is not None and st["layer_reads"] > 0
        assert (st["head_chunk_reads"] > 0) == head


def test_generate_is_greedy_by_default(tiny: Path) -> None:
    m = edgetune.Model(tiny)
    assert m.generate("Hi", max_tokens=6) == m.generate("Hi", max_tokens=6)


def test_errors_carry_the_library_message(tmp_path: Path, tiny: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(edgetune.EdgetuneError, match="missing.gguf"):
        edgetune.Model(missing)
    m = edgetune.Model(tiny)
    with pytest.raises(edgetune.EdgetuneError, match="template"):
        m.generate("x", template="jinja")
    with pytest.raises(edgetune.EdgetuneError, match="at least 2 tokens"):
        m.perplexity([1])
    with pytest.raises(edgetune.EdgetuneError, match="unknown key"):
        edgetune.resolve_config({"model": str(tiny), "sequence_length": 3})
    with pytest.raises(edgetune.EdgetuneError, match="unknown LoRA target"):
        edgetune.resolve_config({"targets": "attn_x"})
    assert issubclass(edgetune.Cancelled, edgetune.EdgetuneError)


def test_config_maps_cli_flag_names() -> None:
    c = edgetune.resolve_config(
        {
            "seq-len": 128,
            "rank": 4,
            "alpha": 8,
            "targets": "q_proj,attn_v",
            "layers": "0-1",
            "budget": "1GiB",
            "no-checkpointing": True,
            "optimizer-state-bits": 8,
            "replay": "self",
            "replay-prompts": 3,
            "loraplus_ratio": 4.0,
        }
    )
    assert c["seq_len"] == 128 and c["checkpointing"] is False
    assert c["lora"]["rank"] == 4 and c["lora"]["alpha"] == 8
    assert c["lora"]["targets"] == ["attn_q", "attn_v"]
    assert c["lora"]["layers"] == {"first": 0, "last": 1}
    assert c["budget_bytes"] == 1 << 30
    assert c["optimizer_state_bits"] == 8
    assert c["replay"] == {"self": {"prompts": 3, "max_tokens": 64}}
    assert c["method_opts"]["loraplus_ratio"] == 4.0
    # QLoRA's preset as the CLI applies it: given settings win.
    q = edgetune.resolve_config({"method": "qlora", "rank": 8})
    assert q["lora"]["rank"] == 8 and q["lora"]["alpha"] == 16.0


def test_plan(tiny: Path) -> None:
    p = edgetune.plan({"model": str(tiny), "seq-len": 64, "rank": 4, "budget": "1GiB"})
    assert p["total_bytes"] > p["weight_bytes"] > 0
    assert p["fits"] is True and p["headroom_bytes"] > 0
    small = edgetune.plan({"seq-len": 64, "budget": 1000}, model=tiny)
    assert small["fits"] is False
    # The streaming levers by their flag names: streamed layers and head, the fused per-layer
    # update, bf16 layer checkpoints in a spill file, adapter weights paged from a file.
    base = {"seq-len": 64, "rank": 4, "max-grad-norm": 0}
    plain = edgetune.plan(base, model=tiny)
    lev = edgetune.plan(
        {
            **base,
            "weights": "stream",
            "stream-head": "on",
            "fused-update": "on",
            "checkpoint-dtype": "bf16",
            "checkpoints-on": "disk",
            "adapter-weights": "disk",
        },
        model=tiny,
    )
    b = lev["breakdown"]
    assert lev["adapter_weights_place"] == "disk"
    assert lev["adapter_ram_bytes"] < lev["adapter_bytes"] == plain["adapter_bytes"]
    assert b["adapters"]["disk_bytes"] >= lev["adapter_bytes"]
    assert b["weights"]["streamed"]["reads_per_step"] > 0
    assert b["weights"]["streamed"]["head_chunks"] > 0
    assert b["fused_update"] == "--fused-update on"
    assert b["checkpoint_spill_bytes"] > 0
    assert lev["arena_bytes"] < plain["arena_bytes"]
    assert lev["total_bytes"] < plain["total_bytes"]
