// Rotary position embedding, forward and backward in one kernel (Backend::rope,
// Backend::rope_backward); mirrors crates/edgetune-core/src/backend/cpu/rope.rs (llama.cpp "normal" mode).
//
//   x: [n_tokens, n_head · head_dim], rotated in place      inv_freq: [rope_dim / 2]
//   pair (2j, 2j+1) of every head of token i rotates by sign · θ, θ = (f32)(pos0 + i) · inv_freq[j]
//   (angle in f32 as ggml and the CPU; precise sincosf). sign = +1 forward, −1 backward (the
//   adjoint of a rotation is the rotation by −θ). Dims rope_dim..head_dim pass through.
#include "common.cuh"

// Grid (n_tokens), block 256: threads stride over (head, pair).
extern "C" __global__ void __launch_bounds__(256)
et_rope(float* __restrict__ x, const float* __restrict__ inv_freq, int n_tokens, int pos0,
        int n_head, int head_dim, int rope_dim, float sign) {
  const int i = blockIdx.x;
  if (i >= n_tokens) return;
  const int half = rope_dim / 2;
  const float pos = (float)(pos0 + i);
  float* row = x + (size_t)i * n_head * head_dim;
  for (int k = threadIdx.x; k < n_head * half; k += blockDim.x) {
    const int h = k / half, j = k - h * half;
    float s, c;
    sincosf(pos * inv_freq[j], &s, &c);
    s *= sign;
    float* p = row + h * head_dim + 2 * j;
    const float a = p[0], b = p[1];
    p[0] = a * c - b * s;
    p[1] = a * s + b * c;
  }
}
