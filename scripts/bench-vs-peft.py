#!/usr/bin/env python3
"""Training speed and peak memory: edgetune vs PyTorch + PEFT on the same model (issue 4, item 11).

Not part of CI (PyTorch from PyPI is several GB). Usage:

    cargo build --release
    scripts/bench-vs-peft.sh [--preset small] [--types q4_0,f32] [--seq-len 256] [--rank 16]
                             [--steps 3] [--threads 2] [--repeat 1] [--peer-checkpointing]

(the wrapper makes `.venv-peft` with torch, transformers, peft, safetensors, numpy and gguf, then
runs this file with it). For each weight type it:

1. writes the preset with `edgetune testmodel --preset P --type T --seed 1`;
2. converts it to a Hugging Face LlamaForCausalLM in f32 (scripts/hf_from_gguf.py: every tensor
   dequantized with gguf-py, Q/K rows un-permuted, RoPE frequencies exactly those of
   `rope_freqs.weight`) and checks the conversion: max |Δ| between the HF model's logits and
   `edgetune perplexity --dump-logits` on the same tokens (fails above --max-logit-diff);
3. runs `edgetune bench train --model M --seq-len L --rank r --steps N --threads T --json`;
4. trains the converted model with PEFT LoRA in a fresh Python process: rank r, alpha 2r (as
   our bench), all 7 projections, dropout 0, AdamW (lr --lr, no weight decay), gradient
   clipping at 1.0 (our default), micro-batch 1 of L random tokens, labels = inputs (every next
   token a target), `torch.set_num_threads(T)`; one warm-up step, then N timed steps. The
   peer's speed does not depend on the weight values, so it runs once (on the first type's
   conversion) unless --peer-every-type.

Memory: each side's peak RSS is its own process's (VmHWM, and the kernel's ru_maxrss of the
child as a cross-check; this parent imports neither torch nor numpy so it cannot inflate it).
For PyTorch two peaks are printed: the whole process, and training only (the high-water mark
reset through /proc/self/clear_refs after the model is built, so the transient copies of
loading don't count; this is the smaller, so the ratio against it is the conservative one).
The RSS of the imported libraries alone (torch's CUDA build loads its CUDA libraries even on
the CPU) is printed too. Ours includes loading (the GGUF is mapped).

Timing is wall-clock; on a shared machine the load average (printed before and after each run)
matters: use --repeat K to keep each side's best of K runs.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MIB = 1024.0 * 1024.0


def proc_status_bytes(field):
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return None


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux ≥ 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_measured(cmd, env=None):
    """Runs cmd; returns (exit code, stdout, stderr, the child's ru_maxrss in bytes, seconds)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        secs = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return p.returncode, out.read().decode(), err.read().decode(), usage.ru_maxrss * 1024, secs


def last_json(text):
    """The last top-level JSON object printed in text."""
    end = text.rstrip().rfind("}")
    depth = 0
    for i in range(end, -1, -1):
        depth += {"}": 1, "{": -1}.get(text[i], 0)
        if depth == 0:
            return json.loads(text[i : end + 1])
    raise ValueError(f"no JSON object in output:\n{text[-2000:]}")


# --- worker: logits of the converted model ---------------------------------------------------


def worker_logits(a):
    import numpy as np
    import torch
    import transformers

    import hf_from_gguf as H

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    g = H.GgufLlama(a.model)
    cfg = g.hf_config()
    exact = g.inv_freq()
    llama3 = H.hf_llama3_inv_freq(cfg)
    model = g.hf_model(attn_implementation="eager")
    tokens = [int(t) for t in a.tokens.split(",")]
    with torch.no_grad():
        theirs = model(torch.tensor([tokens]), use_cache=False).logits[0].double().numpy()
    ours = np.load(a.ours).astype(np.float64)
    print(json.dumps({
        "max_abs_diff": float(np.abs(ours - theirs).max()),
        "max_abs_logit": float(np.abs(theirs).max()),
        "argmax_agree": float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
        "hf_llama3_inv_freq_max_rel_diff": float((np.abs(llama3 - exact) / exact).max()),
    }))


# --- worker: PEFT training --------------------------------------------------------------------


def worker_peer(a):
    import gc

    rss_start = proc_status_bytes("VmRSS")
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    import hf_from_gguf as H

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    rss_imports = proc_status_bytes("VmRSS")

    g = H.GgufLlama(a.model)
    n_vocab = g.n_vocab
    model = g.hf_model(attn_implementation=a.attn)
    del g
    model.config.use_cache = False
    if a.peer_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lcfg = LoraConfig(
        r=a.rank,
        lora_alpha=2 * a.rank,
        target_modules=[theirs.split(".")[1] for _, theirs in H.TARGETS],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lcfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, n_vocab, (a.steps + 1, 1, a.seq_len), generator=gen)
    gc.collect()
    rss_loaded = proc_status_bytes("VmRSS")
    peak_loading = proc_status_bytes("VmHWM")
    can_reset = reset_peak_rss()

    def step(x):
        loss = model(input_ids=x, labels=x, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    step(data[0])  # warm-up
    t0 = time.perf_counter()
    losses = [step(data[i]) for i in range(1, a.steps + 1)]
    secs = time.perf_counter() - t0
    peak_training = proc_status_bytes("VmHWM")
    print(json.dumps({
        "threads": torch.get_num_threads(),
        "steps": a.steps,
        "seconds_per_step": secs / a.steps,
        "tok_per_s": a.steps * a.seq_len / secs,
        "loss": losses[-1],
        "trainable_params": sum(p.numel() for p in params),
        "rss_start_bytes": rss_start,
        "rss_after_imports_bytes": rss_imports,
        "rss_after_load_bytes": rss_loaded,
        "peak_rss_loading_bytes": peak_loading,
        "peak_rss_training_bytes": peak_training if can_reset else None,
        "peak_rss_bytes": max(peak_loading, peak_training),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn_implementation": a.attn,
        "gradient_checkpointing": a.peer_checkpointing,
    }))


# --- the comparison ---------------------------------------------------------------------------


def load():
    return "load %.1f" % os.getloadavg()[0]


def check(rc, out, err, what):
    if rc != 0:
        sys.exit(f"{what} failed (exit {rc}):\n{err[-3000:]}\n{out[-2000:]}")


def bench_ours(a, model):
    cmd = [a.edgetune, "bench", "train", "--model", model, "--seq-len", str(a.seq_len),
           "--rank", str(a.rank), "--steps", str(a.steps), "--threads", str(a.threads), "--json"]
    rc, out, err, maxrss, _ = run_measured(cmd)
    check(rc, out, err, " ".join(cmd))
    r = last_json(out)
    r["ru_maxrss_bytes"] = maxrss
    r["peak_rss_source"] = "self-reported VmHWM"
    if r.get("peak_rss_bytes") is None:  # a build whose bench does not report it yet
        r["peak_rss_bytes"] = maxrss
        r["peak_rss_source"] = "ru_maxrss of the child"
    return r


def bench_peer(a, model):
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "peer", "--model", model,
           "--seq-len", str(a.seq_len), "--rank", str(a.rank), "--steps", str(a.steps),
           "--threads", str(a.threads), "--lr", str(a.lr), "--attn", a.attn]
    if a.peer_checkpointing:
        cmd.append("--peer-checkpointing")
    rc, out, err, maxrss, _ = run_measured(cmd, env)
    check(rc, out, err, "PEFT training")
    r = last_json(out)
    r["ru_maxrss_bytes"] = maxrss
    return r


def best(runs):
    """The fastest run, with the smallest peak seen over all runs."""
    b = dict(max(runs, key=lambda r: r["tok_per_s"]))
    for k in ("peak_rss_bytes", "peak_rss_training_bytes", "ru_maxrss_bytes"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        b[k] = min(vals) if vals else None
    b["tok_per_s_all"] = [round(r["tok_per_s"], 2) for r in runs]
    return b


def mib(b):
    return "n/a" if b is None else f"{b / MIB:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--types", default="q4_0,f32")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--repeat", type=int, default=1, help="runs per side; the best is kept")
    ap.add_argument("--attn", default="sdpa", help="the HF attention implementation (sdpa, eager)")
    ap.add_argument("--peer-checkpointing", action="store_true",
                    help="PyTorch with gradient checkpointing too (as ours by default)")
    ap.add_argument("--peer-every-type", action="store_true")
    ap.add_argument("--check-tokens", type=int, default=64)
    ap.add_argument("--max-logit-diff", type=float, default=1e-3)
    ap.add_argument("--edgetune", default=os.path.join(ROOT, "target", "release", "edgetune"))
    ap.add_argument("--keep", metavar="DIR", help="write the models here and keep them")
    ap.add_argument("--json", action="store_true", help="print all results as JSON at the end")
    # Internal: the worker processes.
    ap.add_argument("--worker", choices=["logits", "peer"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--tokens", help=argparse.SUPPRESS)
    ap.add_argument("--ours", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker == "logits":
        return worker_logits(a)
    if a.worker == "peer":
        return worker_peer(a)

    if not os.path.exists(a.edgetune):
        sys.exit(f"{a.edgetune} not found: run `cargo build --release` (or give --edgetune)")
    tmp = tempfile.TemporaryDirectory()
    work = a.keep or tmp.name
    os.makedirs(work, exist_ok=True)
    print(f"{a.preset}: seq len {a.seq_len}, rank {a.rank}, batch 1, {a.steps} timed steps after "
          f"1 warm-up, {a.threads} threads; {os.cpu_count()} CPUs, {load()}; this script's own "
          f"peak RSS {mib(proc_status_bytes('VmHWM'))} MiB (a floor under a child's ru_maxrss)",
          flush=True)
    results = []
    peer = None
    for ty in a.types.split(","):
        model = os.path.join(work, f"{a.preset}-{ty}.gguf")
        rc, out, err, _, secs = run_measured([a.edgetune, "testmodel", "--preset", a.preset,
                                              "--type", ty, "--out", model, "--seed", "1"])
        check(rc, out, err, "edgetune testmodel")
        # The conversion check: the same tokens through both.
        rng = random.Random(7)
        vocab_probe = 256  # byte ids exist in every vocabulary edgetune's presets use
        tokens = ",".join(str(rng.randrange(vocab_probe)) for _ in range(a.check_tokens))
        dump = os.path.join(work, f"ours-{ty}.npy")
        rc, out, err, _, _ = run_measured([a.edgetune, "perplexity", "--model", model,
                                           "--tokens", tokens, "--dump-logits", dump])
        check(rc, out, err, "edgetune perplexity")
        rc, out, err, _, _ = run_measured([sys.executable, os.path.abspath(__file__), "--worker",
                                           "logits", "--model", model, "--tokens", tokens,
                                           "--ours", dump, "--threads", str(a.threads)])
        check(rc, out, err, "HF logits")
        lg = last_json(out)
        print(f"[{ty}] HF conversion vs edgetune logits ({a.check_tokens} tokens): max |Δ| "
              f"{lg['max_abs_diff']:.3e} (max |logit| {lg['max_abs_logit']:.2f}), argmax agree "
              f"{lg['argmax_agree']:.0%}; HF's own llama3 inv_freq vs rope_freqs: rel "
              f"{lg['hf_llama3_inv_freq_max_rel_diff']:.1e}", flush=True)
        if not lg["max_abs_diff"] <= a.max_logit_diff:
            sys.exit(f"the HF conversion of {model} does not match edgetune's logits")

        ours_runs = []
        for i in range(a.repeat):
            before = load()
            ours_runs.append(bench_ours(a, model))
            r = ours_runs[-1]
            print(f"[{ty}] edgetune run {i + 1}: {r['tok_per_s']:.1f} tok/s, peak RSS "
                  f"{mib(r['peak_rss_bytes'])} MiB ({before} → {load()})", flush=True)
        if peer is None or a.peer_every_type:
            peer_runs = []
            for i in range(a.repeat):
                before = load()
                peer_runs.append(bench_peer(a, model))
                r = peer_runs[-1]
                print(f"[{ty}] PyTorch+PEFT run {i + 1}: {r['tok_per_s']:.1f} tok/s, peak RSS "
                      f"{mib(r['peak_rss_bytes'])} MiB (training only "
                      f"{mib(r['peak_rss_training_bytes'])}, libraries "
                      f"{mib(r['rss_after_imports_bytes'])}) ({before} → {load()})", flush=True)
            peer = best(peer_runs)
        results.append({"type": ty, "logits": lg, "ours": best(ours_runs), "peer": peer})

    print()
    print(f"{'base':<6} {'side':<14} {'tok/s':>8} {'peak RSS MiB':>13} {'train-only MiB':>15}"
          f" {'above libs MiB':>15}")
    for res in results:
        o, p = res["ours"], res["peer"]
        p["peak_above_libraries_bytes"] = p["peak_rss_bytes"] - p["rss_after_imports_bytes"]
        print(f"{res['type']:<6} {'edgetune':<14} {o['tok_per_s']:>8.1f} {mib(o['peak_rss_bytes']):>13}"
              f"  ({o['peak_rss_source']})")
        print(f"{'f32':<6} {'PyTorch+PEFT':<14} {p['tok_per_s']:>8.1f} {mib(p['peak_rss_bytes']):>13}"
              f" {mib(p['peak_rss_training_bytes']):>15} {mib(p['peak_above_libraries_bytes']):>15}")
    print()
    print("ours/peer; RSS against the peer's whole peak, its training-only peak, and its peak less")
    print("the RSS of its imported libraries (the strictest).  Target: ≥ 2× tok/s at ≤ 0.3× RSS.")
    print(f"{'base':<6} {'tok/s':>8} {'RSS':>8} {'RSS train':>10} {'RSS -libs':>10}")
    for res in results:
        o, p = res["ours"], res["peer"]
        ours_rss = o["peak_rss_bytes"]
        speed = o["tok_per_s"] / p["tok_per_s"]
        rss = ours_rss / p["peak_rss_bytes"]
        rss_t = (ours_rss / p["peak_rss_training_bytes"]
                 if p.get("peak_rss_training_bytes") else float("nan"))
        rss_l = ours_rss / p["peak_above_libraries_bytes"]
        res["ratios"] = {"tok_per_s": speed, "peak_rss": rss, "peak_rss_vs_training": rss_t,
                         "peak_rss_vs_above_libraries": rss_l}
        print(f"{res['type']:<6} {speed:>8.2f} {rss:>8.2f} {rss_t:>10.2f} {rss_l:>10.2f}")
    if a.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
