// The softmax / loss / gradient part of the chunked cross-entropy (Backend::cross_entropy);
// mirrors softmax_grad_row in crates/edgetune-core/src/backend/cpu/cross_entropy.rs. The host composes, per chunk
// of c tokens (kernels/README.md): matmul_xwt(h_chunk, W_out) → logits [c, vocab]; this kernel;
// matmul_dyw(dlogits, W_out) → dh_chunk; then sums row_loss[0..c) in f64, in order.
//
//   logits: [rows, vocab], overwritten in place by dlogits = (softmax − onehot(t)) · scale
//   targets: [rows] i32, −100 = ignored (zero row, loss 0)
//   row_loss: [rows] f32, lse − logit[t] with lse = max + log Σ e^(logit − max) (the sum in f64)
#include "common.cuh"

#define ET_IGNORE (-100)

// Grid (rows), block 256.
extern "C" __global__ void __launch_bounds__(256)
et_ce_softmax_grad(float* __restrict__ logits, const int* __restrict__ targets,
                   float* __restrict__ row_loss, int rows, int vocab, float scale) {
  __shared__ float fscratch[32];
  __shared__ double dscratch[32];
  const int r = blockIdx.x;
  if (r >= rows) return;
  float* row = logits + (size_t)r * vocab;
  const int t = targets[r];
  if (t == ET_IGNORE) {
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) row[j] = 0.0f;
    if (threadIdx.x == 0) row_loss[r] = 0.0f;
    return;
  }
  // Read before the reduction's barriers: afterwards another thread may overwrite row[t].
  const float target_logit = row[t];
  float mx = -__int_as_float(0x7f800000);
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) mx = fmaxf(mx, row[j]);
  mx = et_block_max(mx, fscratch);
  // e^(logit − max) in place (f32, as the CPU), summed in f64.
  double sum = 0.0;
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float e = expf(row[j] - mx);
    row[j] = e;
    sum += (double)e;
  }
  sum = et_block_sum_f64(sum, dscratch);
  const float k = (float)((double)scale / sum);
  for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
    float v = row[j] * k;
    if (j == t) v -= scale;
    row[j] = v;
  }
  if (threadIdx.x == 0) row_loss[r] = (float)(log(sum) + (double)(mx - target_logit));
}
