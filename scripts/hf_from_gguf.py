"""A Llama GGUF (as `edgetune testmodel` writes it) as a Hugging Face LlamaForCausalLM in f32.

Imported by scripts/bench-vs-peft.py and scripts/compare-peft-grads.py (not run on its own).

- Every tensor is dequantized with gguf-py (`gguf.quants.dequantize`), so the HF model holds
  exactly the values our quantized kernels see, in f32.
- Q and K rows are un-permuted per head (docs/FORMATS.md#qk-row-order): llama.cpp rotates
  adjacent pairs (2j, 2j+1), HF rotates (j, j + d/2); GGUF row 2j+k of a head is HF row k·d/2 + j.
- RoPE: the config says llama3 scaling with the presets' parameters (factor = max(rope_freqs),
  low 1, high 4, original context 8192), and after building the model its rotary embedding's
  inv_freq is replaced by exactly base^(−2i/d) / rope_freqs[i] (computed in f64, stored f32,
  as edgetune does), so the HF model uses the GGUF's own frequencies whatever the preset.
"""
import numpy as np
import gguf

# Our adapter target names and PEFT's module names, in the order edgetune lists them.
TARGETS = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
]


def gguf_to_hf_rows(w, n_head):
    """GGUF (adjacent-pair RoPE) row order → HF (half-split) row order, per head; w is [out, …]."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_to_gguf_rows(w, n_head):
    """The inverse of gguf_to_hf_rows (what llama.cpp's converter does to q_proj/k_proj)."""
    d = w.shape[0] // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GgufLlama:
    """Metadata and f32 tensors (numpy shapes: ne reversed, so a linear is [out, in])."""

    def __init__(self, path):
        reader = gguf.GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()

        def key(k, default=None):
            f = reader.fields.get(f"{arch}.{k}")
            return default if f is None else f.contents()

        self.dim = int(key("embedding_length"))
        self.n_layer = int(key("block_count"))
        self.ffn = int(key("feed_forward_length"))
        self.n_head = int(key("attention.head_count"))
        self.n_head_kv = int(key("attention.head_count_kv", self.n_head))
        self.rope_base = float(key("rope.freq_base", 10000.0))
        self.rms_eps = float(key("attention.layer_norm_rms_epsilon"))
        self.context = int(key("context_length"))
        self.head_dim = self.dim // self.n_head
        self.rope_dim = int(key("rope.dimension_count", self.head_dim))
        vocab = key("vocab_size")
        if vocab is None:
            vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
        self.n_vocab = int(vocab)
        # Copies, so nothing keeps the file's mapping alive once the reader is dropped.
        self.tensors = {
            t.name: np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32, copy=True)
            for t in reader.tensors
        }
        del reader
        if self.rope_dim != self.head_dim:
            raise ValueError(f"{path}: partial RoPE (rope_dim {self.rope_dim} ≠ head_dim {self.head_dim})")

    def inv_freq(self):
        """[rope_dim/2]: base^(−2i/d) / rope_freqs[i], in f64 then f32 (as edgetune computes it)."""
        i = np.arange(self.rope_dim // 2, dtype=np.float64)
        f = self.rope_base ** (-2.0 * i / self.rope_dim)
        if "rope_freqs.weight" in self.tensors:
            f = f / self.tensors["rope_freqs.weight"].astype(np.float64)
        return f.astype(np.float32)

    def hf_config(self):
        from transformers import LlamaConfig

        rope_scaling = None
        if "rope_freqs.weight" in self.tensors:
            rope_scaling = {
                "rope_type": "llama3",
                "factor": float(self.tensors["rope_freqs.weight"].max()),
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            }
        return LlamaConfig(
            vocab_size=self.n_vocab,
            hidden_size=self.dim,
            intermediate_size=self.ffn,
            num_hidden_layers=self.n_layer,
            num_attention_heads=self.n_head,
            num_key_value_heads=self.n_head_kv,
            head_dim=self.head_dim,
            hidden_act="silu",
            max_position_embeddings=self.context,
            rms_norm_eps=self.rms_eps,
            rope_theta=self.rope_base,
            rope_scaling=rope_scaling,
            tie_word_embeddings="output.weight" not in self.tensors,
            attention_bias=False,
            mlp_bias=False,
            torch_dtype="float32",
        )

    def hf_state_dict(self):
        """HF parameter name → numpy f32 array (q/k rows un-permuted)."""
        t = self.tensors
        sd = {
            "model.embed_tokens.weight": t["token_embd.weight"],
            "model.norm.weight": t["output_norm.weight"],
            "lm_head.weight": t.get("output.weight", t["token_embd.weight"]),
        }
        for layer in range(self.n_layer):
            p, h = f"blk.{layer}.", f"model.layers.{layer}."
            sd[h + "input_layernorm.weight"] = t[p + "attn_norm.weight"]
            sd[h + "post_attention_layernorm.weight"] = t[p + "ffn_norm.weight"]
            for ours, theirs in TARGETS:
                w = t[p + ours + ".weight"]
                if ours == "attn_q":
                    w = gguf_to_hf_rows(w, self.n_head)
                elif ours == "attn_k":
                    w = gguf_to_hf_rows(w, self.n_head_kv)
                sd[h + theirs + ".weight"] = np.ascontiguousarray(w)
        return sd

    def hf_model(self, attn_implementation="sdpa"):
        """A LlamaForCausalLM (f32, eval mode) holding these weights; the arrays are dropped."""
        import torch
        from transformers import LlamaForCausalLM

        cfg = self.hf_config()
        cfg._attn_implementation = attn_implementation
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg)
        sd = {k: torch.from_numpy(v) for k, v in self.hf_state_dict().items()}
        missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
        missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
        if missing or unexpected:
            raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        if cfg.tie_word_embeddings:
            model.tie_weights()
        set_inv_freq(model, self.inv_freq())
        self.tensors = {}
        return model.float().eval()


def set_inv_freq(model, inv_freq):
    """Makes every rotary embedding in `model` use exactly `inv_freq`; returns the largest
    relative difference from what transformers had computed from the config (a meta tensor
    counts as unknown: NaN)."""
    import torch

    exact = torch.from_numpy(np.asarray(inv_freq, dtype=np.float32).copy())
    worst = float("nan")
    for name, mod in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(mod, "inv_freq"):
            if mod.inv_freq.device.type != "meta":
                worst = float(((mod.inv_freq.float() - exact).abs() / exact).max())
            mod.inv_freq = exact.clone()
            mod.original_inv_freq = exact.clone()
    return worst


def hf_llama3_inv_freq(cfg):
    """The inv_freq transformers derives from a config (to report how close llama3 scaling is)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    inv, _ = ROPE_INIT_FUNCTIONS[cfg.rope_scaling["rope_type"] if cfg.rope_scaling else "default"](cfg, "cpu")
    return inv.numpy()
