#!/usr/bin/env bash
# Benchmarks edgetune on the machine it runs on — meant for a Jetson (copy the aarch64 binary from
# scripts/cross-build.sh and this script to the board), works on any Linux box. Records the board
# (/proc/device-tree/model, JetPack release, nvpmodel, nvidia-smi where present), CPU and memory,
# then times what the CLI offers today:
#   - `edgetune testmodel` (writing each preset × type model),
#   - `edgetune generate --json` (prompt and generation tokens/s),
#   - `edgetune perplexity --json` (a full-sequence forward, tokens/s),
#   - `edgetune plan --model M --board B --seq-len 64 --json` (the memory plan of a LoRA run on
#     the detected board profile, or --board NAME; total, budget, fits),
#   - `edgetune bench train --model M --seq-len 64 --steps N --json` (N = --bench-steps, default 1,
#     timed after one warm-up step: tok/s, s/step, peak RSS) on the CPU, and on CUDA where a GPU
#     is present and the CLI has --backend (recorded as skipped otherwise),
#   - `edgetune train` for --train-steps steps (0 skips it) on a synthetic dataset.
# Subcommands a build lacks are recorded as skipped; flags are passed only when their --help
# lists them.
# Writes DIR/results.json and DIR/results.md and prints the table. Needs bash and python3.
#
#   scripts/bench-board.sh [--bin PATH] [--presets "small llama-3.2-1b"] [--types "q4_0 q4_k_m"]
#       [--prompt-tokens 128] [--gen-tokens 64] [--ppl-tokens 256] [--train-steps 5]
#       [--bench-steps 1] [--board NAME] [--threads N] [--models DIR] [--out DIR]
#   scripts/bench-board.sh --presets tiny --types q4_0 --gen-tokens 8   # a quick check
#
# Models are written once into --models (default bench-models/) and reused. Peak memory comes
# from /usr/bin/time -v when it is installed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=""
for a in "$@"; do [ "${prev:-}" = --bin ] && bin=$a; prev=$a; done
if [ -z "$bin" ]; then
  # Next to this script's repository (a build here), else on PATH, else beside the script.
  for c in "$here/../target/release/edgetune" "$(command -v edgetune || true)" "$here/edgetune"; do
    [ -n "$c" ] && [ -x "$c" ] && { bin=$c; break; }
  done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "no edgetune binary: give --bin PATH (or cargo build --release)" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench-board.sh needs python3" >&2; exit 2; }
exec python3 - "$bin" "$@" <<'PY'
import argparse, datetime, json, os, platform, re, shutil, subprocess, sys, time

bin_path = sys.argv[1]
ap = argparse.ArgumentParser(prog="bench-board.sh")
ap.add_argument("--bin")
ap.add_argument("--presets", default="small llama-3.2-1b")
ap.add_argument("--types", default="q4_0 q4_k_m")
ap.add_argument("--prompt-tokens", type=int, default=128)
ap.add_argument("--gen-tokens", type=int, default=64)
ap.add_argument("--ppl-tokens", type=int, default=256)
ap.add_argument("--train-steps", type=int, default=5)
ap.add_argument("--bench-steps", type=int, default=1)
ap.add_argument("--board", help="board profile for plan (default: detected)")
ap.add_argument("--threads", type=int)
ap.add_argument("--models", default="bench-models")
ap.add_argument("--out")
args = ap.parse_args(sys.argv[2:])
env = dict(os.environ)
if args.threads:
    env["RAYON_NUM_THREADS"] = str(args.threads)
time_v = shutil.which("time") if os.path.exists("/usr/bin/time") else None


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read().replace(b"\0", b"").decode(errors="replace").strip()
    except OSError:
        return None


def sh(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(cmd, timeout=3600):
    """Runs an edgetune command: wall seconds, exit code, stdout, stderr, peak RSS (KiB)."""
    full = ["/usr/bin/time", "-v"] + cmd if time_v else cmd
    t0 = time.perf_counter()
    p = subprocess.run(full, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    rss = None
    err = p.stderr
    if time_v:
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
        rss = int(m.group(1)) if m else None
        err = err.split("\tCommand being timed:")[0]
        err = "\n".join(l for l in err.splitlines() if not l.startswith("Command exited with non-zero status"))
    return {"cmd": " ".join(cmd), "wall_s": round(wall, 3), "rc": p.returncode,
            "stdout": p.stdout, "stderr": err, "peak_rss_kib": rss}


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    try:
        return json.loads(text)
    except ValueError:
        return None


# --- the machine -------------------------------------------------------------------------
meminfo = {}
for line in (read("/proc/meminfo") or "").splitlines():
    k, _, v = line.partition(":")
    meminfo[k] = int(v.split()[0]) * 1024 if v.split() else None
cpuinfo = read("/proc/cpuinfo") or ""
cpu_model = (re.findall(r"^model name\s*:\s*(.+)$", cpuinfo, re.M) or [None])[0]
if cpu_model is None:
    parts = sorted(set(re.findall(r"^CPU part\s*:\s*(\S+)", cpuinfo, re.M)))
    cpu_model = "ARM CPU part " + ",".join(parts) if parts else platform.processor() or None
flags = (re.findall(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.M) or [""])[0].split()
model = read("/proc/device-tree/model") or read("/sys/devices/virtual/dmi/id/product_name")
uname = platform.uname()
mem_total = meminfo.get("MemTotal")


def tegrastats_line():
    """One line of tegrastats (RAM, CPU and GPU load, temperatures), or None off a Jetson."""
    if not shutil.which("tegrastats"):
        return None
    try:
        p = subprocess.Popen(["tegrastats", "--interval", "500"], stdout=subprocess.PIPE, text=True)
        line = p.stdout.readline().strip()
        p.kill()
        p.wait()
        return line or None
    except OSError:
        return None


def profile_for(model, mem):
    """The targets/*.toml profile this board matches (edgetune plan --board)."""
    m = (model or "").lower()
    gib = (mem or 0) / 2**30
    if "orin nano" in m:
        return "orin-nano-super-8gb" if "super" in (sh(["nvpmodel", "-q"]) or "").lower() else "orin-nano-8gb"
    if "orin nx" in m:
        return "orin-nx-16gb"
    if "agx orin" in m:
        return "agx-orin-64gb"
    if "xavier nx" in m:
        return "xavier-nx-8gb"
    return "host"


board = {
    "model": model or f"{uname.system} {uname.machine}",
    "profile": args.board or profile_for(model, mem_total),
    "profile_detected": profile_for(model, mem_total),
    "hostname": uname.node,
    "kernel": uname.release,
    "arch": uname.machine,
    "jetpack_l4t": read("/etc/nv_tegra_release"),
    "nvpmodel": sh(["nvpmodel", "-q"]),
    "gpu": sh(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]),
    "tegrastats": tegrastats_line(),
    "cpu_model": cpu_model,
    "cpu_cores": os.cpu_count(),
    "threads_used": args.threads or os.cpu_count(),
    "cpu_simd": sorted(f for f in flags if f in ("avx2", "fma", "avx512f", "asimd", "asimddp", "sve", "i8mm")),
    "mem_total_bytes": mem_total,
    "mem_available_bytes": meminfo.get("MemAvailable"),
    "edgetune": ((sh([bin_path, "--version"]) or "?").split() or ["?"])[-1],
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
}
help_text = sh([bin_path, "help"]) or ""
commands = set(re.findall(r"^\s{2}([a-z][a-z-]*)\s", help_text, re.M))
board["cli_commands"] = sorted(commands)
slug = re.sub(r"[^a-z0-9]+", "-", board["model"].lower()).strip("-")
out_dir = args.out or os.path.join("bench-results", f"{slug}-{datetime.date.today():%Y%m%d}")
os.makedirs(out_dir, exist_ok=True)
os.makedirs(args.models, exist_ok=True)
print(f"board: {board['model']} (profile {board['profile']}), {board['cpu_cores']} cores, "
      f"{(mem_total or 0) / 2**30:.1f} GiB; edgetune {board['edgetune']}", flush=True)


def flags_of(sub):
    """The long flags `edgetune SUB --help` lists (empty when SUB is missing)."""
    text = sh([bin_path] + sub + ["--help"]) or ""
    return set(re.findall(r"--([a-z][a-z0-9-]*)", text))


def optional(sub, wanted):
    """Runs an optional subcommand with the wanted flags it supports; records why it was skipped."""
    if sub[0] not in commands:
        return {"skipped": f"`edgetune {sub[0]}` is not in this build"}
    have = flags_of(sub)
    if not have:
        return {"skipped": f"`edgetune {' '.join(sub)} --help` failed"}
    cmd = [bin_path] + sub
    for flag, value in wanted:
        if flag in have:
            cmd += [f"--{flag}"] + ([] if value is None else [str(value)])
    r = run(cmd)
    res = {"cmd": r["cmd"], "rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_kib": r["peak_rss_kib"],
           "result": last_json(r["stdout"]) or last_json(r["stderr"])}
    if r["rc"] != 0:
        res["error"] = r["stderr"].strip().splitlines()[-1:] or ["exit status " + str(r["rc"])]
    return res


# --- measurements ------------------------------------------------------------------------
base = "Sensor 3 reads 21.5 C at 14:02; humidity 48 %; battery 3.71 V. "
prompt = (base * (args.prompt_tokens // len(base) + 1))[: args.prompt_tokens]
ppl_text = os.path.join(out_dir, "ppl.txt")
with open(ppl_text, "w") as f:
    f.write((base * (args.ppl_tokens // len(base) + 1))[: args.ppl_tokens])
data_file = os.path.join(out_dir, "train.jsonl")
# Plain {"text": ...} lines: every token is a target, so a short --seq-len still trains (an
# instruction dataset's answer can start past 64 tokens with a byte-level vocabulary).
with open(data_file, "w") as f:
    for i in range(64):
        f.write(json.dumps({"text": f"Sensor {i % 7} reads {18 + i % 11}.{i % 10} C; battery "
                                    f"3.{60 + i % 40} V; status ok."}) + "\n")

rows = []
for preset in args.presets.split():
    for ty in args.types.split():
        path = os.path.join(args.models, f"{preset}-{ty}.gguf")
        row = {"preset": preset, "type": ty, "model": path}
        if not os.path.exists(path):
            r = run([bin_path, "testmodel", "--preset", preset, "--type", ty, "--seed", "1", "--out", path])
            row["testmodel_s"] = r["wall_s"]
            if r["rc"] != 0:
                row["error"] = r["stderr"].strip()
                rows.append(row)
                print(f"{preset} {ty}: testmodel failed: {row['error']}", file=sys.stderr)
                continue
        row["file_bytes"] = os.path.getsize(path)
        # The raw prompt (no chat template), so prompt lengths stay comparable across models.
        r = run([bin_path, "generate", "--model", path, "--prompt", prompt, "--template", "none",
                 "--max-tokens", str(args.gen_tokens), "--json"])
        g = last_json(r["stderr"]) if r["rc"] == 0 else None
        row["generate"] = {"wall_s": r["wall_s"], "peak_rss_kib": r["peak_rss_kib"], **(g or {"error": r["stderr"].strip()})}
        r = run([bin_path, "perplexity", "--model", path, "--text", ppl_text, "--json"])
        p = last_json(r["stdout"]) if r["rc"] == 0 else None
        row["perplexity"] = {"wall_s": r["wall_s"], "peak_rss_kib": r["peak_rss_kib"], **(p or {"error": r["stderr"].strip()})}
        if p and r["wall_s"] > 0:
            row["perplexity"]["tok_per_s_with_load"] = round(p["tokens"] / r["wall_s"], 2)
        row["plan"] = optional(["plan"], [("model", path), ("board", board["profile"]),
                                          ("seq-len", 64), ("json", None)])
        row["train"] = (optional(["train"], [
            ("model", path), ("data", data_file), ("out", os.path.join(out_dir, f"run-{preset}-{ty}")),
            ("steps", args.train_steps), ("seq-len", 64), ("overwrite", None), ("json", None)])
            if args.train_steps > 0 else {"skipped": "--train-steps 0"})
        # Every backend the board has: the CPU, and CUDA where a GPU shows up and the CLI can
        # pick it (without --backend a second run would only repeat the CPU one).
        backends = ["cpu"] + (["cuda"] if board["gpu"] or board["jetpack_l4t"] else [])
        bench_flags = flags_of(["bench", "train"])
        row["bench_train"] = {}
        for b in backends:
            if b != "cpu" and "backend" not in bench_flags:
                row["bench_train"][b] = {"skipped": "`edgetune bench train` has no --backend"}
                continue
            row["bench_train"][b] = optional(["bench", "train"], [
                ("model", path), ("seq-len", 64), ("steps", args.bench_steps),
                ("backend", b), ("json", None)])
        rows.append(row)
        gen = row["generate"]
        print(f"{preset} {ty}: prompt {gen.get('prompt_tok_per_s', float('nan')):.1f} tok/s, "
              f"generate {gen.get('gen_tok_per_s', float('nan')):.1f} tok/s", flush=True)

results = {"board": board, "settings": {**vars(args), "bin": bin_path}, "runs": rows}
with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(results, f, indent=2)


def fmt(v, spec=".1f"):
    return "–" if v is None else format(v, spec)


mib = lambda kib: None if kib is None else kib / 1024
lines = [
    f"# edgetune on {board['model']}", "",
    f"{board['cpu_model']}, {board['cpu_cores']} cores ({board['threads_used']} used), "
    f"{(mem_total or 0) / 2**30:.1f} GiB, {board['arch']}, kernel {board['kernel']}; "
    f"profile `{board['profile']}`; edgetune {board['edgetune']}; {board['date']}", "",
    f"| preset | type | file MiB | prompt tok/s | gen tok/s | gen peak RSS MiB | ppl tok/s (with load) "
    f"| plan on {board['profile']} | train | bench train tok/s |",
    "|---|---|---:|---:|---:|---:|---:|---|---|---|",
]


def state(x):
    if not x:
        return "–"
    if "skipped" in x:
        return "skipped"
    return "ok " + fmt(x["wall_s"]) + " s" if x["rc"] == 0 else "failed"


def plan_cell(x):
    """`total MiB / budget MiB fits|over` from plan --json."""
    res = (x or {}).get("result") or {}
    if not res or x.get("rc") != 0:
        return state(x)
    total, budget = res.get("total_bytes"), res.get("budget_bytes")
    verdict = {True: "fits", False: "over"}.get(res.get("fits"), "")
    return (f"{fmt(total and total / 2**20, '.0f')} / {fmt(budget and budget / 2**20, '.0f')} MiB "
            f"{verdict}").strip()


def bench_cell(d):
    """`backend: tok/s` per backend from bench train --json."""
    cells = []
    for b, x in (d or {}).items():
        res = x.get("result") or {}
        tps = res.get("tok_per_s") if x.get("rc") == 0 else None
        cells.append(f"{b}: {fmt(tps) if tps is not None else state(x)}")
    return ", ".join(cells) or "–"


for r in rows:
    g, p = r.get("generate", {}), r.get("perplexity", {})
    lines.append(
        f"| {r['preset']} | {r['type']} | {fmt(r.get('file_bytes', 0) / 2**20)} | "
        f"{fmt(g.get('prompt_tok_per_s'))} | {fmt(g.get('gen_tok_per_s'))} | {fmt(mib(g.get('peak_rss_kib')))} | "
        f"{fmt(p.get('tok_per_s_with_load'))} | {plan_cell(r.get('plan'))} | {state(r.get('train'))} | "
        f"{bench_cell(r.get('bench_train'))} |")
lines += ["", f"Settings: prompt {args.prompt_tokens} tokens, {args.gen_tokens} generated, "
          f"perplexity over {args.ppl_tokens}; plan and bench train at seq-len 64, bench train "
          f"{args.bench_steps} timed step(s) after a warm-up; details in results.json."]
md = "\n".join(lines) + "\n"
with open(os.path.join(out_dir, "results.md"), "w") as f:
    f.write(md)
print()
print(md)
print(f"wrote {out_dir}/results.json and {out_dir}/results.md")
failed = [r for r in rows if "error" in r or "error" in r.get("generate", {}) or "error" in r.get("perplexity", {})
          or "error" in r.get("plan", {}) or any("error" in x for x in r.get("bench_train", {}).values())]
sys.exit(1 if failed else 0)
PY
