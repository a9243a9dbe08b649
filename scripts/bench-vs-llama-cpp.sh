#!/usr/bin/env bash
# edgetune beside llama.cpp, in one run, on the same models and threads, back to back: prompt
# (512 tokens) and generation (128 tokens) tok/s of `edgetune bench forward` against
# `llama-bench`, on `small` in Q4_0, Q4_K_M and Q8_0 (written by `edgetune testmodel` once,
# cached under target/bench-vs-llama-cpp/) and on SmolLM2-135M-Instruct Q4_1; then training tok/s
# and peak memory of `edgetune bench train` (LoRA r=16 on `small` Q4_K_M) against
# `llama-finetune` (llama.cpp trains every weight of an F32 model) on the same sequence length,
# one sequence per optimizer step. The training models are `small` cut to 4 layers
# (`testmodel --layers 4`, Q4_K_M and F32): this llama.cpp's finetune sizes its graph by the
# model's tensor count (`max(1024, 8·n_tensors)` nodes) and aborts on deeper models (16 layers:
# GGML_ASSERT in ggml_build_backward_expand / ggml_graph_cpy; 8: in the scheduler's hash set).
#
# Prints a Markdown table (what, edgetune, llama.cpp, ratio edgetune/llama.cpp; memory ratios
# are llama.cpp/edgetune, so > 1 is better for edgetune everywhere) and writes every figure to
# target/bench-vs-llama-cpp/result.json. Peak memory is the maximum RSS `/usr/bin/time -v`
# reports for each process (VmHWM read from the edgetune JSON when /usr/bin/time is missing).
#
# Usage: scripts/bench-vs-llama-cpp.sh [--threads N] [--reps R] [--train-seqs S] [--omp-passive]
#                                     [--quick]
#   --threads N     threads of both programs (default 2)
#   --reps R        timed repetitions of each inference test (default 3)
#   --train-seqs S  sequences of 256 tokens per training epoch of llama-finetune and timed
#                   steps of edgetune (default 12)
#   --omp-passive   run llama.cpp's tools with OMP_WAIT_POLICY=passive: on a machine other
#                   processes load (load average above the cores), llama.cpp's spinning OpenMP
#                   threads lose most of their time (measured here at load 8 on 2 cores:
#                   SmolLM2 generation 3 tok/s spinning, 40 passive); idle, leave it off
#   --quick         small figures for a smoke test: 64-token prompt, 16 generated, 1 rep,
#                   2 training sequences (llama.cpp pads its context to 256 tokens)
# Environment: EDGETUNE_FEATURES (cargo features of the edgetune build, default none),
# EDGETUNE_BIN (use this binary instead of building one).
set -euo pipefail
cd "$(dirname "$0")/.."

threads=2
reps=3
seqs=12
pp=512
tg=128
seq_len=256
llama_env=()
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --train-seqs) seqs=$2; shift 2 ;;
    --omp-passive) llama_env=(env OMP_WAIT_POLICY=passive); shift ;;
    --quick) reps=1; seqs=2; pp=64; tg=16; shift ;;
    -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

out=target/bench-vs-llama-cpp
mkdir -p "$out"
if [ -n "${EDGETUNE_BIN:-}" ]; then
  et=$EDGETUNE_BIN
else
  features=()
  [ -n "${EDGETUNE_FEATURES:-}" ] && features=(--features "$EDGETUNE_FEATURES")
  cargo build --release --quiet --bin edgetune "${features[@]}" >&2
  et=target/release/edgetune
fi
llama=$(scripts/build-llama-cpp.sh | tail -n 1)
smollm2=$(scripts/fetch-model.sh smollm2-135m-instruct | tail -n 1)

for ty in q4_0 q4_k_m q8_0; do
  f="$out/small-$ty.gguf"
  [ -f "$f" ] || "$et" testmodel --preset small --type "$ty" --out "$f" >&2
done
train_layers=4
for ty in q4_k_m f32; do
  f="$out/small-${train_layers}l-$ty.gguf"
  [ -f "$f" ] || "$et" testmodel --preset small --layers "$train_layers" --type "$ty" --out "$f" >&2
done

timev=""
if [ -x /usr/bin/time ]; then timev=/usr/bin/time; fi

# Runs a command with its stdout into $1 and its stderr into $2 (with /usr/bin/time's report).
measured() {
  local so=$1 se=$2
  shift 2
  if [ -n "$timev" ]; then
    "$timev" -v "$@" >"$so" 2>"$se"
  else
    "$@" >"$so" 2>"$se"
  fi
}

models=("small-q4_0:$out/small-q4_0.gguf" "small-q4_k_m:$out/small-q4_k_m.gguf"
  "small-q8_0:$out/small-q8_0.gguf" "smollm2-135m-q4_1:$smollm2")
for entry in "${models[@]}"; do
  name=${entry%%:*}
  path=${entry#*:}
  echo "== $name: edgetune bench forward, then llama-bench ($threads threads)" >&2
  measured "$out/$name.edgetune.json" "$out/$name.edgetune.err" \
    "$et" bench forward --model "$path" --threads "$threads" --reps "$reps" \
    --prompt-tokens "$pp" --gen-tokens "$tg" --json
  measured "$out/$name.llama.json" "$out/$name.llama.err" \
    "${llama_env[@]}" "$llama/llama-bench" -m "$path" -p "$pp" -n "$tg" -t "$threads" -r "$reps" -o json
done

# Training: the same token text for both (bytes of the vocabulary), `seqs` sequences.
python3 - "$out/train.txt" "$seqs" "$seq_len" <<'PY'
import random, sys
path, seqs, seq_len = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(1)
words = ["edge", "tune", "llama", "model", "weights", "adapter", "rank", "token", "the", "of"]
# llama-finetune cuts datapoints of seq_len tokens every seq_len/2 tokens: (n - ctx - 1) /
# stride of them; one byte is one token of the byte vocabulary.
n = (seqs + 1) * seq_len // 2 + seq_len + 2
text = []
while sum(len(w) + 1 for w in text) < n:
    text.append(rng.choice(words))
open(path, "w").write(" ".join(text)[:n])
PY
echo "== training: edgetune bench train (LoRA r=16, Q4_K_M), then llama-finetune (F32)," \
  "small cut to $train_layers layers" >&2
measured "$out/train.edgetune.json" "$out/train.edgetune.err" \
  "$et" bench train --model "$out/small-${train_layers}l-q4_k_m.gguf" --seq-len "$seq_len" --rank 16 --batch 1 \
  --steps "$seqs" --threads "$threads" --json
# Two epochs: the first warms up (first touch of the weights, graph allocation); the second's
# last progress line gives the tokens and the seconds of training.
measured "$out/train.llama.out" "$out/train.llama.err" \
  "${llama_env[@]}" "$llama/llama-finetune" -m "$out/small-${train_layers}l-f32.gguf" -f "$out/train.txt" -c "$seq_len" \
  -b "$seq_len" -ub "$seq_len" -t "$threads" -epochs 2 -val-split 0.0001 \
  -o "$out/finetuned.gguf"
rm -f "$out/finetuned.gguf"

python3 - "$out" "$threads" "$reps" "$pp" "$tg" "$seq_len" "$train_layers" "${llama_env[*]:-}" \
  "${models[@]}" <<'PY'
import datetime, json, os, re, sys

out, threads, reps, pp, tg, seq_len, layers = sys.argv[1], *map(int, sys.argv[2:8])
llama_env = sys.argv[8].removeprefix("env ")
models = [m.split(":", 1) for m in sys.argv[9:]]

def time_v_peak_kib(path):
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(path).read())
    return int(m.group(1)) if m else None

def load(path):
    return json.load(open(path))

rows, result = [], {"date": datetime.date.today().isoformat(), "threads": threads,
                    "reps": reps, "llama_env": llama_env, "load_average": os.getloadavg(),
                    "prompt_tokens": pp, "gen_tokens": tg, "models": {}}
for name, path in models:
    e = load(f"{out}/{name}.edgetune.json")
    l = load(f"{out}/{name}.llama.json")
    lp = next(r for r in l if r["n_prompt"] == pp and r["n_gen"] == 0)
    lg = next(r for r in l if r["n_gen"] == tg and r["n_prompt"] == 0)
    r = {
        "path": path,
        "edgetune": {"prompt_tok_s": e["prefill_tok_per_s"], "prompt_sd": e["prefill_stddev"],
                     "gen_tok_s": e["decode_tok_per_s"], "gen_sd": e["decode_stddev"],
                     "compute": e["compute"],
                     "peak_rss_kib": time_v_peak_kib(f"{out}/{name}.edgetune.err")},
        "llama_cpp": {"prompt_tok_s": lp["avg_ts"], "prompt_sd": lp["stddev_ts"],
                      "gen_tok_s": lg["avg_ts"], "gen_sd": lg["stddev_ts"],
                      "peak_rss_kib": time_v_peak_kib(f"{out}/{name}.llama.err")},
    }
    result["models"][name] = r
    for what, k, sd in (("prompt", "prompt_tok_s", "prompt_sd"), ("generation", "gen_tok_s", "gen_sd")):
        a, b = r["edgetune"][k], r["llama_cpp"][k]
        n = pp if what == "prompt" else tg
        rows.append((f"{name} {what} {n} (tok/s)", f"{a:.1f} ± {r['edgetune'][sd]:.1f}",
                     f"{b:.1f} ± {r['llama_cpp'][sd]:.1f}", f"**{a / b:.2f}×**"))

e = load(f"{out}/train.edgetune.json")
e_peak = time_v_peak_kib(f"{out}/train.edgetune.err") or (e.get("peak_rss_bytes") or 0) // 1024
log = open(f"{out}/train.llama.err", encoding="utf-8", errors="replace").read()
# The progress bar rewrites one line with \r; the last "train:" line of the last epoch.
lines = [s for s in re.split(r"[\r\n]", log) if s.startswith("train:")]
m = re.search(r"data=(\d+)/(\d+).*?t=(\d+):(\d+):(\d+)", lines[-1]) if lines else None
if m:
    data = int(m.group(1))
    secs = int(m.group(3)) * 3600 + int(m.group(4)) * 60 + int(m.group(5))
    l_tok_s = data * seq_len / secs if secs > 0 else None
else:
    data, secs, l_tok_s = None, None, None
l_peak = time_v_peak_kib(f"{out}/train.llama.err")
result["train"] = {
    "seq_len": seq_len,
    "layers": layers,
    "edgetune": {"model": f"small {layers} layers Q4_K_M", "method": "LoRA r=16, checkpointing", "tok_s": e["tok_per_s"],
                 "steps": e["steps"], "peak_rss_kib": e_peak},
    "llama_cpp": {"model": f"small {layers} layers F32", "method": "llama-finetune (all weights, AdamW)",
                  "tok_s": l_tok_s, "sequences": data, "seconds": secs, "peak_rss_kib": l_peak},
}
rows.append((f"training small/{layers} layers, {seq_len}-token sequences (tok/s)", f"{e['tok_per_s']:.1f}",
             f"{l_tok_s:.1f}" if l_tok_s else "n/a",
             f"**{e['tok_per_s'] / l_tok_s:.2f}×**" if l_tok_s else "n/a"))
rows.append((f"training small/{layers} layers peak RSS (MiB)", f"{e_peak / 1024:.0f}",
             f"{l_peak / 1024:.0f}" if l_peak else "n/a",
             f"**{l_peak / e_peak:.2f}×** less" if l_peak and e_peak else "n/a"))
with open(f"{out}/result.json", "w") as f:
    json.dump(result, f, indent=2)

print(f"edgetune vs llama.cpp, {threads} threads, {reps} reps, {result['date']}, "
      f"load average {os.getloadavg()[2]:.1f} (15 min){', llama.cpp with ' + llama_env if llama_env else ''} "
      f"(edgetune compute: {', '.join(sorted({r['edgetune']['compute'] for r in result['models'].values()}))})\n")
print("| | edgetune | llama.cpp | ratio |")
print("|---|---:|---:|---:|")
for r in rows:
    print("| " + " | ".join(r) + " |")
print(f"\nwritten: {out}/result.json", file=sys.stderr)
PY
