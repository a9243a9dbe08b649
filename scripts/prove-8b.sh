#!/usr/bin/env bash
# The 8B proof: Llama 3.1 8B shapes in Q4_0 (and Q4_K_M), LoRA r=16 on all 7
# projections, sequence 512, micro-batch 1: the plan's total and the measured peak RSS must both
# stay under 5.5 GiB. Writes the shape-true test model (random blocks, ~4.3 GiB, ~35 s), a
# pre-tokenized dataset of random ids, runs `edgetune train` for STEPS steps and prints
# planned, measured (VmHWM, weights included; file-backed vs anonymous) and seconds per step.
# Not in CI: one step is ~8·8G·512 ≈ 33 TFLOP of work, minutes to tens of minutes on 2 cores.
#
# usage: scripts/prove-8b.sh [--types q4_0,q4_k_m] [--steps 2] [--dir target/prove-8b] [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
types=q4_0,q4_k_m; steps=2; dir=target/prove-8b; threads=""
while [ $# -gt 0 ]; do
  case "$1" in
    --types) types=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --threads) threads="--threads $2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
cargo build --release --locked
bin=target/release/edgetune
mkdir -p "$dir"
# 4 rows of 512 random ids below the vocabulary size (128,256): every next token is a target.
python3 - "$dir/random-512.jsonl" <<'PY'
import json, random, sys
random.seed(1)
with open(sys.argv[1], "w") as f:
    for _ in range(4):
        f.write(json.dumps({"input_ids": [random.randrange(128256) for _ in range(512)]}) + "\n")
PY
budget=$((55 * 1024 * 1024 * 1024 / 10))
for ty in ${types//,/ }; do
  model="$dir/llama-3.1-8b-$ty.gguf"
  [ -f "$model" ] || $bin testmodel --preset llama-3.1-8b --type "$ty" --out "$model"
  out="$dir/run-$ty"
  rm -rf "$out"
  $bin train --model "$model" --data "$dir/random-512.jsonl" --format pretokenized \
    --out "$out" --steps "$steps" --seq-len 512 --batch 1 --rank 16 --alpha 32 \
    --budget 5.5GiB $threads --json > "$out.summary.json"
  python3 - "$out.summary.json" "$ty" "$budget" <<'PY'
import json, sys
s = json.load(open(sys.argv[1])); ty = sys.argv[2]; budget = int(sys.argv[3])
gib = lambda b: b / 2**30
m = s["memory"]
print(f"8B {ty}: planned {gib(s['planned_bytes']):.2f} GiB, measured peak {gib(s['peak_bytes']):.2f} GiB "
      f"(at the end {gib(m['rss_file']):.2f} GiB file-backed + {gib(m['rss_anon']):.2f} GiB anonymous), "
      f"{s['elapsed_s'] / max(s['steps'], 1):.0f} s/step over {s['steps']} steps, loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}")
ok = s["planned_bytes"] <= budget and s["peak_bytes"] <= budget
print(f"  budget 5.5 GiB: {'both under' if ok else 'OVER'}")
sys.exit(0 if ok else 1)
PY
done
