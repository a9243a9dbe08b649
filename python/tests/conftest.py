"""Fixtures: the seeded `tiny` test model and a slice of the synthetic IoT assistant set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edgetune


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.gguf"
    edgetune.testmodel(path, "tiny", "q4_0", 0)
    return path


@pytest.fixture(scope="session")
def records() -> list[dict]:
    return edgetune.synth_assistant(0)["train"][:48]


@pytest.fixture()
def data_file(tmp_path: Path, records: list[dict]) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture()
def config(tiny: Path, data_file: Path, tmp_path: Path) -> dict:
    return {
        "model": str(tiny),
        "data": str(data_file),
        "out": str(tmp_path / "run"),
        "steps": 4,
        "seq-len": 128,
        "rank": 4,
        "alpha": 8,
        "lr": 2e-3,
        "threads": 1,
    }
