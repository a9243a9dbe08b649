#!/usr/bin/env python3
"""Splits the synthetic IoT assistant set into one data partition per site: a site is a
device's plant (its conversations: facts, telemetry, triage, refusals about that device), and
every fifth of its conversations is held out (`heldout.jsonl`, never trained on).

    python3 prepare_data.py --out DIR [--sites kx40,m7,h9] [--seed 0]

writes DIR/<site>/train.jsonl and DIR/<site>/heldout.jsonl and prints the counts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import edgetune

# Site name -> the device name its conversations mention.
DEVICES = {"kx40": "KX-40", "m7": "M7", "h9": "H9", "t3": "T3"}


def device_of(record: dict) -> str | None:
    text = " ".join(m["content"] for m in record["messages"] if m["role"] != "system")
    found = [site for site, dev in DEVICES.items() if dev in text]
    return found[0] if len(found) == 1 else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--sites", default="kx40,m7,h9")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    sites = [s for s in a.sites.split(",") if s]
    for s in sites:
        if s not in DEVICES:
            raise SystemExit(f"unknown site {s!r} (known: {', '.join(DEVICES)})")
    records = edgetune.synth_assistant(a.seed)["train"]
    by_site: dict[str, list[dict]] = {s: [] for s in sites}
    for r in records:
        s = device_of(r)
        if s in by_site:
            by_site[s].append(r)
    for s, rs in by_site.items():
        d = a.out / s
        d.mkdir(parents=True, exist_ok=True)
        train = [r for i, r in enumerate(rs) if i % 5 != 4]
        held = [r for i, r in enumerate(rs) if i % 5 == 4]
        for name, part in (("train.jsonl", train), ("heldout.jsonl", held)):
            with (d / name).open("w", encoding="utf-8") as f:
                for r in part:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"site {s} ({DEVICES[s]}): {len(train)} train, {len(held)} held-out")


if __name__ == "__main__":
    main()
