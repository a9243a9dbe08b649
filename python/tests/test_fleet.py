"""The Flower app's aggregations (examples/flower/edgetune_fleet/task.py): FedAvg weights, the
SVD re-factorization is exact when the averaged update fits the rank and the best rank-r
approximation otherwise, and it round-trips through a trainer."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "flower"))
from edgetune_fleet.task import delta_weights, fedavg, from_record, svd_average, to_record  # noqa: E402

M = "base_model.model.model.layers.0.self_attn.q_proj"


def client(rng: np.random.Generator, out: int, inp: int, r: int) -> dict[str, np.ndarray]:
    return {
        f"{M}.lora_A.weight": rng.standard_normal((r, inp)).astype(np.float32),
        f"{M}.lora_B.weight": rng.standard_normal((out, r)).astype(np.float32),
    }


def test_fedavg_is_weighted_by_examples() -> None:
    a = {"x": np.zeros(3, np.float32)}
    b = {"x": np.ones(3, np.float32)}
    np.testing.assert_allclose(fedavg([a, b], [1, 3])["x"], 0.75)


def test_svd_average_is_exact_for_the_product() -> None:
    rng = np.random.default_rng(0)
    # Three clients of rank 2 on a rank-6 adapter: the averaged update (rank ≤ 6) fits.
    cs = [client(rng, 24, 16, 2) for _ in range(3)]
    w = [10, 20, 30]
    got = svd_average(cs, w, rank=6)
    want = sum(wi / 60 * delta_weights(c)[M] for wi, c in zip(w, cs))
    np.testing.assert_allclose(delta_weights(got)[M], want, atol=1e-5)
    a = got[f"{M}.lora_A.weight"].astype(np.float64)
    np.testing.assert_allclose(a @ a.T, np.eye(6), atol=1e-5)  # orthonormal rows
    # FedAvg of the factors is not the average of the products.
    naive = delta_weights(fedavg(cs, w))[M]
    assert np.abs(naive - want).max() > 0.1


def test_svd_average_truncates_to_the_best_rank_r() -> None:
    rng = np.random.default_rng(1)
    cs = [client(rng, 20, 12, 4) for _ in range(3)]
    got = svd_average(cs, [1, 1, 1], rank=4)
    want = sum(delta_weights(c)[M] for c in cs) / 3
    u, s, vt = np.linalg.svd(want)
    best = (u[:, :4] * s[:4]) @ vt[:4]
    np.testing.assert_allclose(delta_weights(got)[M], best, atol=1e-4)
    assert got[f"{M}.lora_B.weight"].shape == (20, 4)


def test_records_round_trip() -> None:
    rng = np.random.default_rng(2)
    c = client(rng, 4, 3, 2)
    back = from_record(to_record(c))
    assert back.keys() == c.keys() and all(np.array_equal(back[k], c[k]) for k in c)
