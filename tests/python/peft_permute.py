"""The Q/K row permutation of llama.cpp's convert_hf_to_gguf.py (LlamaModel.permute), which
convert_lora_to_gguf.py applies to lora_B of q_proj and k_proj: HF row order → GGUF row order."""


def permute(weights, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2)
            .reshape(weights.shape))
