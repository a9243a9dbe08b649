"""What the ServerApp and the ClientApp share: the edgetune configuration of a run, the
adapter <-> Flower record conversion, and the two aggregations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

# Run-config keys passed to edgetune as training settings (flag names).
TRAIN_KEYS = ("rank", "alpha", "targets", "lr", "seq-len", "batch", "pack", "seed", "threads")


def edgetune_config(run_config: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
    """The edgetune configuration of this run: the base model and the adapter's and the local
    training's settings from the run config, plus `extra` (data, out, steps, ...)."""
    cfg: dict[str, Any] = {"model": str(run_config["model"])}
    for k in TRAIN_KEYS:
        if k in run_config:
            cfg[k] = run_config[k]
    cfg.update(extra)
    return cfg


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array.from_numpy_ndarray(np.asarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def fedavg(clients: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """FedAvg: every tensor (lora_A and lora_B separately) averaged, weighted by `weights`."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return {
        k: sum(wi * c[k].astype(np.float64) for wi, c in zip(w, clients)).astype(np.float32)
        for k in clients[0]
    }


def _modules(names: Sequence[str]) -> list[str]:
    return sorted({n.rsplit(".lora_", 1)[0] for n in names if ".lora_A." in n})


def svd_average(
    clients: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float], rank: int
) -> dict[str, np.ndarray]:
    """The exact average of the low-rank updates, re-factorized: per module,
    ΔW = Σ_k w_k·B_k·A_k (the LoRA scale is the same on every site and factors out), then
    its best rank-`rank` approximation (truncated SVD, Eckart–Young) as B = U_r·Σ_r,
    A = V_rᵀ. Computed without forming ΔW: QR of [w_1 B_1 | … | w_K B_K] and of
    [A_1; …; A_K]ᵀ, then the SVD of the small (K·r)×(K·r) product of their R factors.

    A keeps orthonormal rows, so no direction of A vanishes (a zero A would stop B's
    gradient), and B carries the singular values."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    out: dict[str, np.ndarray] = {}
    for m in _modules(list(clients[0])):
        a_key, b_key = f"{m}.lora_A.weight", f"{m}.lora_B.weight"
        b_cat = np.concatenate([wi * c[b_key].astype(np.float64) for wi, c in zip(w, clients)], axis=1)
        a_cat = np.concatenate([c[a_key].astype(np.float64) for c in clients], axis=0)
        qb, rb = np.linalg.qr(b_cat)
        qa, ra = np.linalg.qr(a_cat.T)
        u, s, vt = np.linalg.svd(rb @ ra.T)
        r = min(rank, s.shape[0])
        out[b_key] = ((qb @ u[:, :r]) * s[:r]).astype(np.float32)
        out[a_key] = (qa @ vt[:r].T).T.astype(np.float32)
    return out


def delta_weights(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """B·A per module (for checks)."""
    return {
        m: arrays[f"{m}.lora_B.weight"].astype(np.float64) @ arrays[f"{m}.lora_A.weight"].astype(np.float64)
        for m in _modules(list(arrays))
    }
