"""The ClientApp: one site. `train` starts from the global adapter, trains it for
`local-steps` steps on the site's own data with edgetune and returns the adapter's arrays with
the site's example count; `evaluate` returns the global adapter's loss on the site's held-out
data. The site's data never leaves it.

Node config (`flower-supernode --node-config`): `site` (its name), `data-dir` (holding
`train.jsonl` and `heldout.jsonl`), `work-dir` (run directories; default: data-dir/work).
"""

from __future__ import annotations

from pathlib import Path

import edgetune
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .task import edgetune_config, from_record, to_record

app = ClientApp()


def _site(context: Context) -> tuple[str, Path, Path]:
    nc = context.node_config
    site = str(nc["site"])
    data = Path(str(nc["data-dir"]))
    work = Path(str(nc.get("work-dir", data / "work")))
    return site, data, work


def _count(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _trainer(context: Context, rnd: int, what: str, steps: int) -> edgetune.Trainer:
    site, data, work = _site(context)
    rc = context.run_config
    cfg = edgetune_config(
        rc,
        data=str(data / "train.jsonl"),
        out=str(work / f"round-{rnd:02d}-{what}"),
        overwrite=True,
        steps=steps,
        # Another shuffle of the site's data every round.
        seed=int(rc.get("seed", 42)) + rnd,
    )
    return edgetune.Trainer(cfg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    site, data, _ = _site(context)
    rnd = int(msg.content["config"]["round"])
    steps = int(context.run_config["local-steps"])
    with _trainer(context, rnd, "train", steps) as t:
        t.set_adapter(from_record(msg.content["arrays"]))
        losses = t.step(steps)
        arrays = t.get_adapter()
    metrics = MetricRecord(
        {
            "num-examples": _count(data / "train.jsonl"),
            "train-loss-first": float(losses[0]) if losses else 0.0,
            "train-loss-last": float(losses[-1]) if losses else 0.0,
        }
    )
    content = RecordDict(
        {"arrays": to_record(arrays), "metrics": metrics, "site": ConfigRecord({"name": site})}
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site, data, _ = _site(context)
    rnd = int(msg.content["config"]["round"])
    with _trainer(context, rnd, "eval", 1) as t:
        t.set_adapter(from_record(msg.content["arrays"]))
        loss = t.evaluate(data=str(data / "heldout.jsonl"))
    metrics = MetricRecord({"heldout-loss": float(loss), "num-examples": _count(data / "heldout.jsonl")})
    content = RecordDict({"metrics": metrics, "site": ConfigRecord({"name": site})})
    return Message(content=content, reply_to=msg)
