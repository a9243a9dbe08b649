"""edgetune.Trainer: steps, records in memory, progress and cancellation, checkpoints,
held-out evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgetune


def test_steps_return_losses_until_the_run_ends(config: dict) -> None:
    with edgetune.Trainer(config) as t:
        assert t.total_steps == 4 and t.completed == 0
        a = t.step(2)
        assert len(a) == 2 and all(x > 0 for x in a)
        b = t.step(5)
        assert len(b) == 2 and t.completed == 4
        assert t.step(1) == []
        assert t.planned_bytes > 0
        assert t.config["lora"]["rank"] == 4
    lines = (Path(config["out"]) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["loss"] for x in lines] == a + b


def test_records_in_memory_train_as_the_file_does(config: dict, records: list[dict], tmp_path: Path) -> None:
    with edgetune.Trainer(config) as t:
        from_file = t.step(3)
    cfg = dict(config, out=str(tmp_path / "run2"))
    del cfg["data"]
    cfg["data_records"] = records
    with edgetune.Trainer(cfg) as t:
        assert t.step(3) == from_file
    with pytest.raises(edgetune.EdgetuneError, match="not both"):
        edgetune.Trainer(dict(cfg, data=config["data"]))


def test_progress_callback_and_cancel(config: dict) -> None:
    seen: list[dict] = []

    def progress(p: dict) -> bool:
        seen.append(p)
        return p["step"] < 2

    t = edgetune.Trainer(config, progress=progress)
    losses = t.step(4)
    assert len(losses) == 2 and t.cancelled
    assert [p["step"] for p in seen] == [1, 2]
    assert seen[0]["total_steps"] == 4 and seen[0]["loss"] == losses[0]
    assert {"lr", "grad_norm", "tok_per_s", "targets", "elapsed_s"} <= set(seen[0])
    # A callback given to step() wins; None returned means go on.
    assert len(t.step(2, progress=lambda p: None)) == 2 and not t.cancelled
    t.close()
    with pytest.raises(edgetune.EdgetuneError, match="closed"):
        t.step(1)


def test_callback_exception_propagates(config: dict) -> None:
    def boom(p: dict) -> bool:
        raise ValueError("from the callback")

    with edgetune.Trainer(config) as t:
        with pytest.raises(ValueError, match="from the callback"):
            t.step(2, progress=boom)
        assert t.completed == 1


def test_checkpoint_and_resume(config: dict) -> None:
    with edgetune.Trainer(config) as t:
        t.step(2)
        d = Path(t.checkpoint())
        assert d.is_dir() and d.name == "step-00000002"
        rest = t.step(2)
    # The run directory is unlocked after close: resume continues from step 2.
    cfg = dict(config, resume=True)
    with edgetune.Trainer(cfg) as t:
        assert t.completed == 2
        assert t.step(2) == rest


def test_fresh_run_rule_and_overwrite(config: dict) -> None:
    with edgetune.Trainer(config) as t:
        t.step(1)
    with pytest.raises(edgetune.EdgetuneError, match="overwrite"):
        edgetune.Trainer(config)
    with edgetune.Trainer(dict(config, overwrite=True)) as t:
        assert t.completed == 0


def test_typed_errors(config: dict, tmp_path: Path) -> None:
    # Each is an EdgetuneError too, so code catching the base class keeps working.
    with pytest.raises(edgetune.OverBudget, match="over budget"):
        edgetune.Trainer(dict(config, budget="1MiB"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(edgetune.BadInput, match="bad.jsonl:2"):
        edgetune.Trainer(dict(config, data=str(bad)))
    assert issubclass(edgetune.NonFinite, edgetune.EdgetuneError)
    assert issubclass(edgetune.Unsupported, edgetune.EdgetuneError)


def test_evaluate_heldout(config: dict, records: list[dict], data_file: Path) -> None:
    with edgetune.Trainer(dict(config, steps=12)) as t:
        before = t.evaluate(data_records=records[:8])
        assert before == t.evaluate(data_records=records[:8])
        assert before > 0
        t.step(12)
        after = t.evaluate(data_records=records[:8])
        assert after < before
        assert t.evaluate(data=data_file) > 0
        with pytest.raises(edgetune.EdgetuneError):
            t.evaluate()
        with pytest.raises(edgetune.EdgetuneError):
            t.evaluate(data="/nonexistent.jsonl")
