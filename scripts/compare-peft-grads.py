#!/usr/bin/env python3
"""edgetune's training loss and LoRA gradients vs PEFT's, on one batch (issue 4, "Check against
tools no one here wrote").

Not part of CI. Needs `cargo build --release` and the venv scripts/bench-vs-peft.sh makes:

    scripts/bench-vs-peft.sh --help >/dev/null     # creates .venv-peft once
    .venv-peft/bin/python scripts/compare-peft-grads.py [--seq-len 64] [--rank 4] [--alpha 8]

What it does, on a generated `tiny` F32 model (`edgetune testmodel --preset tiny --type f32`):

1. One row of --seq-len random token ids as pre-tokenized JSONL (`{"input_ids": [...]}`: every
   next token is a target, loss = mean over the L−1 targets).
2. A template run (`edgetune train --steps 1`) gives a checkpoint, whose `adapter.json` and
   tensor names/shapes are copied; its `adapter.safetensors` is replaced by seeded NONZERO
   weights for all 7 targets (A ~ U(±1/√in), B ~ U(±--b-scale/√r)): the initial adapter.
3. `edgetune train --init-adapter INIT --optimizer sgd --lr LR --momentum 0 --weight-decay 0
   --max-grad-norm 0 --steps 1` on that row: our gradient is (before − after) / LR, our loss
   is metrics.jsonl's step-1 "loss" (computed at the initial adapter).
4. PEFT: the same model converted to HF (scripts/hf_from_gguf.py), LoraConfig(r, alpha, all 7
   projections, dropout 0), the same A and B loaded (B's rows of q_proj/k_proj un-permuted to
   HF order, docs/FORMATS.md#qk-row-order), loss = mean cross-entropy of logits[:-1] against
   ids[1:];
   backward; B's q/k gradient rows permuted back to GGUF order. Run in f32, and in f64 as the
   reference (with transformers' f32 islands, RMSNorm and the softmax, patched to stay f64).

Prints the losses, the loss's relative difference, the gradient's relative error
‖g − g_ref‖/‖g_ref‖ over all tensors and the worst single tensor, for ours vs PEFT f64 and for
PEFT f32 vs PEFT f64 (what f32 arithmetic alone costs), and the floor the (before − after)/LR
read-out puts on ours (f32 rounding of `after`). Exits 1 when ours vs PEFT f64 exceeds
--max-loss-rel or --max-grad-rel.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import hf_from_gguf as H  # noqa: E402

OUR_TARGETS = [ours for ours, _ in H.TARGETS]


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed (exit {p.returncode}):\n{p.stderr[-3000:]}\n{p.stdout[-1000:]}")
    return p.stdout


def checkpoint(out_dir):
    """The newest checkpoint directory of a run."""
    root = os.path.join(out_dir, "checkpoints")
    steps = sorted(d for d in os.listdir(root) if d.startswith("step-"))
    if not steps:
        sys.exit(f"no checkpoint in {root}")
    return os.path.join(root, steps[-1])


def train(a, model, data, out, extra):
    cmd = [a.edgetune, "train", "--model", model, "--data", data, "--out", out, "--steps", "1",
           "--seq-len", str(a.seq_len), "--batch", "1", "--rank", str(a.rank), "--alpha",
           str(a.alpha), "--targets", ",".join(OUR_TARGETS), "--optimizer", "sgd",
           "--momentum", "0", "--weight-decay", "0", "--max-grad-norm", "0",
           "--threads", str(a.threads)] + extra
    run(cmd)
    with open(os.path.join(out, "metrics.jsonl")) as f:
        metrics = [json.loads(line) for line in f if line.strip()]
    return metrics, checkpoint(out)


class WideLlama:
    """While active, transformers' Llama keeps f64 in the places it computes in f32 whatever the
    model's dtype (RMSNorm, the eager attention's softmax), so an f64 model is f64 throughout.
    RoPE's cos/sin stay f32-computed: the model's angles are f32 by definition (edgetune's too)."""

    def __enter__(self):
        import torch
        import transformers.models.llama.modeling_llama as ml

        self.ml = ml
        self.saved = (ml.LlamaRMSNorm.forward, ml.eager_attention_forward)

        def rms_norm(mod, x):
            return mod.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))

        def attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
            k = ml.repeat_kv(key, module.num_key_value_groups)
            v = ml.repeat_kv(value, module.num_key_value_groups)
            w = torch.matmul(query, k.transpose(2, 3)) * scaling
            if attention_mask is not None:
                w = w + attention_mask[:, :, :, : k.shape[-2]]
            w = torch.softmax(w, dim=-1)
            return torch.matmul(w, v).transpose(1, 2).contiguous(), w

        ml.LlamaRMSNorm.forward = rms_norm
        ml.eager_attention_forward = attention
        return self

    def __exit__(self, *exc):
        self.ml.LlamaRMSNorm.forward, self.ml.eager_attention_forward = self.saved


def peft_grads(a, model_path, tokens, adapter, dtype):
    """(loss, {our tensor name: gradient in GGUF row order}) from PEFT in `dtype`. The loss is
    the mean next-token cross-entropy computed here in `dtype` (HF's own loss upcasts the logits
    to f32 only)."""
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    transformers.logging.set_verbosity_error()
    g = H.GgufLlama(model_path)
    n_head, n_head_kv, n_layer = g.n_head, g.n_head_kv, g.n_layer
    model = g.hf_model(attn_implementation="eager").to(dtype)
    cfg = LoraConfig(r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none",
                     task_type="CAUSAL_LM",
                     target_modules=[theirs.split(".")[1] for _, theirs in H.TARGETS])
    model = get_peft_model(model, cfg)
    layers = model.base_model.model.model.layers
    modules = {}
    with torch.no_grad():
        for layer in range(n_layer):
            for ours, theirs in H.TARGETS:
                mod = layers[layer].get_submodule(theirs)
                A = adapter[f"blk.{layer}.{ours}.lora_A"]
                B = adapter[f"blk.{layer}.{ours}.lora_B"]
                if ours == "attn_q":
                    B = H.gguf_to_hf_rows(B, n_head)
                elif ours == "attn_k":
                    B = H.gguf_to_hf_rows(B, n_head_kv)
                mod.lora_A["default"].weight.copy_(torch.from_numpy(np.ascontiguousarray(A)))
                mod.lora_B["default"].weight.copy_(torch.from_numpy(np.ascontiguousarray(B)))
                if abs(mod.scaling["default"] - a.alpha / a.rank) > 1e-12:
                    sys.exit(f"PEFT scaling {mod.scaling['default']} ≠ alpha/r")
                modules[(layer, ours)] = mod
    ids = torch.tensor([tokens])
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    loss.backward()
    grads = {}
    for (layer, ours), mod in modules.items():
        gA = mod.lora_A["default"].weight.grad.double().numpy()
        gB = mod.lora_B["default"].weight.grad.double().numpy()
        if ours == "attn_q":
            gB = H.hf_to_gguf_rows(gB, n_head)
        elif ours == "attn_k":
            gB = H.hf_to_gguf_rows(gB, n_head_kv)
        grads[f"blk.{layer}.{ours}.lora_A"] = gA
        grads[f"blk.{layer}.{ours}.lora_B"] = gB
    return float(loss), grads


def rel_errors(g, ref):
    num = sum(float(((g[k] - ref[k]) ** 2).sum()) for k in ref)
    den = sum(float((ref[k] ** 2).sum()) for k in ref)
    worst = max(ref, key=lambda k: np.linalg.norm(g[k] - ref[k]) / max(np.linalg.norm(ref[k]), 1e-300))
    worst_val = np.linalg.norm(g[worst] - ref[worst]) / max(np.linalg.norm(ref[worst]), 1e-300)
    return (num / den) ** 0.5, worst, worst_val


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--lr", type=float, default=1.0, help="SGD step used to read the gradient")
    ap.add_argument("--b-scale", type=float, default=0.5, help="B ~ U(±b_scale/√r)")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--model-seed", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--max-loss-rel", type=float, default=1e-5)
    ap.add_argument("--max-grad-rel", type=float, default=1e-4)
    ap.add_argument("--edgetune", default=os.path.join(ROOT, "target", "release", "edgetune"))
    ap.add_argument("--keep", metavar="DIR", help="work here and keep the files")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(a.threads)
    tmp = tempfile.TemporaryDirectory()
    work = a.keep or tmp.name
    os.makedirs(work, exist_ok=True)
    model = os.path.join(work, "tiny-f32.gguf")
    run([a.edgetune, "testmodel", "--preset", "tiny", "--type", "f32", "--out", model,
         "--seed", str(a.model_seed)])
    rng = np.random.default_rng(a.seed)
    g = H.GgufLlama(model)
    tokens = [int(t) for t in rng.integers(0, min(g.n_vocab, 256), a.seq_len)]
    del g
    data = os.path.join(work, "batch.jsonl")
    with open(data, "w") as f:
        f.write(json.dumps({"input_ids": tokens}) + "\n")

    # The adapter format as the CLI writes it, with our own nonzero weights.
    _, template = train(a, model, data, os.path.join(work, "template"), ["--lr", "0.001"])
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    names = load_file(os.path.join(template, "adapter.safetensors"))
    with safe_open(os.path.join(template, "adapter.safetensors"), "np") as f:
        st_meta = f.metadata()
    init = os.path.join(work, "init")
    shutil.rmtree(init, ignore_errors=True)
    shutil.copytree(template, init)
    before = {}
    for name, t in sorted(names.items()):
        if name.endswith("lora_A"):
            bound = 1.0 / np.sqrt(t.shape[1])
        else:
            bound = a.b_scale / np.sqrt(t.shape[1])
        before[name] = rng.uniform(-bound, bound, t.shape).astype(np.float32)
    expected = {f"blk.{l}.{t}.lora_{h}" for l in range(len(names) // 14) for t in OUR_TARGETS
                for h in "AB"}
    if set(names) != expected:
        sys.exit(f"unexpected adapter tensors: {sorted(set(names) ^ expected)[:6]}")
    save_file(before, os.path.join(init, "adapter.safetensors"), metadata=st_meta)

    metrics, ckpt = train(a, model, data, os.path.join(work, "run"),
                          ["--lr", repr(a.lr), "--init-adapter", init])
    ours_loss = float(metrics[0]["loss"])
    after = load_file(os.path.join(ckpt, "adapter.safetensors"))
    ours = {k: (before[k].astype(np.float64) - after[k].astype(np.float64)) / a.lr for k in before}
    # (before − after) is exact in f64, but `after` was rounded to f32: half an ulp each.
    floor_sq = sum(float(((np.spacing(np.abs(after[k])) / 2 / a.lr) ** 2).sum()) for k in after)

    loss32, g32 = peft_grads(a, model, tokens, before, torch.float32)
    with WideLlama():
        loss64, g64 = peft_grads(a, model, tokens, before, torch.float64)
    ref_norm = sum(float((v ** 2).sum()) for v in g64.values()) ** 0.5
    floor = floor_sq ** 0.5 / ref_norm

    e_ours, w_ours, wv_ours = rel_errors(ours, g64)
    e_32, w_32, wv_32 = rel_errors(g32, g64)
    e_o32, _, _ = rel_errors(ours, g32)
    loss_rel = abs(ours_loss - loss64) / abs(loss64)
    print(f"tiny F32, {a.seq_len} tokens ({a.seq_len - 1} targets), r={a.rank}, alpha={a.alpha:g}, "
          f"all 7 targets, {len(before)} tensors, ‖g_ref‖ = {ref_norm:.4e}")
    print(f"loss: edgetune {ours_loss:.9f}   PEFT f32 {loss32:.9f}   PEFT f64 {loss64:.9f}")
    print(f"loss rel diff   edgetune vs PEFT f64: {loss_rel:.2e}   PEFT f32 vs f64: "
          f"{abs(loss32 - loss64) / abs(loss64):.2e}")
    print(f"grad rel error  edgetune vs PEFT f64: {e_ours:.2e} (worst tensor {w_ours}: {wv_ours:.2e})")
    print(f"                edgetune vs PEFT f32: {e_o32:.2e}")
    print(f"                PEFT f32 vs PEFT f64: {e_32:.2e} (worst tensor {w_32}: {wv_32:.2e})")
    print(f"read-out floor of (before − after)/lr with lr {a.lr:g}: {floor:.1e}")
    ok = loss_rel <= a.max_loss_rel and e_ours <= a.max_grad_rel
    print("PASS" if ok else f"FAIL (limits: loss {a.max_loss_rel:g}, grad {a.max_grad_rel:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
