"""The ServerApp: round 0 evaluates the starting adapter on every site's held-out data; each
round after sends the global adapter to every site, aggregates what comes back (FedAvg
weighted by example counts, or the SVD of the averaged low-rank updates), saves the global
adapter as PEFT and GGUF with edgetune's exporters, and evaluates it on every site.
`out-dir/fleet.json` holds `{"rounds": [{"round": r, "heldout_loss": {site: loss}}, ...]}`,
rewritten after every round."""

from __future__ import annotations

import json
import time
from pathlib import Path

import edgetune
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from .task import edgetune_config, fedavg, from_record, svd_average, to_record

app = ServerApp()


def _nodes(grid: Grid, want: int, wait_s: float) -> list[int]:
    deadline = time.monotonic() + wait_s
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want or time.monotonic() > deadline:
            if len(nodes) < want:
                raise RuntimeError(f"only {len(nodes)} of {want} SuperNodes connected in {wait_s} s")
            return nodes
        time.sleep(0.5)


def _ask(grid: Grid, nodes: list[int], kind: str, rnd: int, arrays: dict) -> list[Message]:
    content = lambda: RecordDict({"arrays": to_record(arrays), "config": ConfigRecord({"round": rnd})})  # noqa: E731
    msgs = [Message(content=content(), dst_node_id=n, message_type=kind) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=600))
    bad = [r for r in replies if r.has_error()]
    if bad or len(replies) != len(nodes):
        errs = "; ".join(str(r.error.reason) for r in bad)
        raise RuntimeError(f"round {rnd} {kind}: {len(replies)} of {len(nodes)} replies; errors: {errs}")
    return replies


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    rounds = int(rc["num-server-rounds"])
    out = Path(str(rc["out-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    mode = str(rc.get("aggregation", "fedavg"))
    if mode not in ("fedavg", "svd"):
        raise ValueError(f"aggregation {mode!r}: expected fedavg or svd")
    cfg = edgetune_config(rc)
    arrays = edgetune.init_adapter(cfg)
    nodes = _nodes(grid, int(rc.get("min-nodes", 1)), float(rc.get("wait-nodes-s", 120)))
    history: list[dict] = []
    for rnd in range(rounds + 1):
        t0 = time.monotonic()
        entry: dict = {"round": rnd}
        if rnd > 0:
            replies = _ask(grid, nodes, MessageType.TRAIN, rnd, arrays)
            clients = [from_record(r.content["arrays"]) for r in replies]
            weights = [float(r.content["metrics"]["num-examples"]) for r in replies]
            if mode == "svd":
                arrays = svd_average(clients, weights, int(rc["rank"]))
            else:
                arrays = fedavg(clients, weights)
            entry["train_loss_last"] = {
                str(r.content["site"]["name"]): float(r.content["metrics"]["train-loss-last"]) for r in replies
            }
            entry["examples"] = {str(r.content["site"]["name"]): int(w) for r, w in zip(replies, weights)}
            d = out / f"round-{rnd:02d}"
            edgetune.export_adapter(cfg, arrays, "peft", d / "adapter-peft")
            edgetune.export_adapter(cfg, arrays, "gguf", d / "adapter.gguf")
        replies = _ask(grid, nodes, MessageType.EVALUATE, rnd, arrays)
        entry["heldout_loss"] = {
            str(r.content["site"]["name"]): float(r.content["metrics"]["heldout-loss"])
            for r in sorted(replies, key=lambda r: str(r.content["site"]["name"]))
        }
        entry["seconds"] = round(time.monotonic() - t0, 2)
        history.append(entry)
        losses = "  ".join(f"{s}={v:.4f}" for s, v in entry["heldout_loss"].items())
        print(f"[edgetune-fleet] round {rnd} ({mode}): held-out loss {losses}", flush=True)
        doc = {"aggregation": mode, "model": str(rc["model"]), "rounds": history}
        tmp = out / "fleet.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(out / "fleet.json")
