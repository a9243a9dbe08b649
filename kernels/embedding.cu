// Embedding gather (Backend::embedding): out[i, :] = dequantize(table row tokens[i]), straight
// from the GGUF blocks of token_embd; mirrors crates/edgetune-core/src/backend/cpu/embedding.rs.
//
//   table: [vocab, dim] quantized (row r at table + r · row_bytes)   tokens: [n_tokens] u32
//   (device memory, every id < vocab: validated by the host)          out: [n_tokens, dim] f32
// Requires dim % 16 == 0 (dequant.cuh decodes groups of 16).
#include "dequant.cuh"

// Grid (n_tokens), block 128: threads stride over the row's groups of 16.
extern "C" __global__ void __launch_bounds__(128)
et_embedding(const unsigned char* __restrict__ table, int wtype, int row_bytes,
             const unsigned int* __restrict__ tokens, float* __restrict__ out, int n_tokens,
             int dim) {
  const int i = blockIdx.x;
  if (i >= n_tokens) return;
  const u8* row = table + (size_t)tokens[i] * (size_t)row_bytes;
  float* o = out + (size_t)i * dim;
  for (int g = threadIdx.x; g < dim / 16; g += blockDim.x) {
    float v[16];
    et_dequant16(wtype, row, g, dim - 16 * g, v);
#pragma unroll
    for (int j = 0; j < 16; j++) o[16 * g + j] = v[j];
  }
}
