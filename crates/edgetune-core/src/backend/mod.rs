//! The compute backend: the small set of tensor ops a Llama forward, its backward and the
//! optimizer step are written in, over backend-owned f32 buffers and backend-readable quantized
//! weights.
//!
//! # Shape of the trait
//!
//! - **Buffers.** Activations are f32. A backend owns its storage ([`Backend::Buffer`]: a
//!   `Vec<f32>` on the CPU, a device allocation under CUDA) and ops see borrowed views
//!   ([`Backend::View`] / [`Backend::ViewMut`]: `&[f32]` / `&mut [f32]` on the CPU). Views are
//!   sub-ranged with [`Backend::slice`] / [`Backend::slice_mut`], so the memory planner can carve
//!   every buffer of a training step out of ONE arena ([`Backend::alloc`] is called once for
//!   it) and hand ops disjoint ranges of it ([`Backend::split_mut`], [`Backend::freeze`]; as
//!   `crates/edgetune-train/src/train/step_device.rs` does).
//! - **Weights.** [`Backend::Weight`] is a quantized matrix the backend can read, borrowed for
//!   the lifetime of the mapped file; [`Backend::weight`] prepares one from a [`QuantMatrix`]
//!   (CPU: the same view — weights are never copied; CUDA: host-registered map pages or one
//!   upload).
//! - **No allocation inside ops.** Every op writes into views it is given; scratch it needs is
//!   either a fixed-size stack tile (CPU attention) or an argument. Ops return `Result` so that a
//!   device backend can report launch errors; the CPU backend checks lengths (cheap) and
//!   otherwise runs kernels that assume validated slices.
//! - **Asynchrony.** Ops may be queued (CUDA stream); [`Backend::download`] and
//!   [`Backend::synchronize`] are the points where results become visible to the host. The CPU
//!   backend is synchronous.
//!
//! # Ops (✓ = implemented now; the rest are the planned additions, with their signatures'
//! intent, so that they fit this shape)
//!
//! Forward (layouts row-major, one token per row):
//! - ✓ `embedding`: rows of a quantized `token_embd` ([vocab, dim]) for a list of token ids;
//! - ✓ `rmsnorm`: `y = x / sqrt(mean(x²) + eps) · w`, optionally saving `rstd` per row;
//! - ✓ `matmul_xwt`: `y = x · Wᵀ` over a quantized `W` [out, in] (also the output projection);
//! - ✓ `rope`: adjacent-pair rotation in place, positions `pos0..pos0+n`;
//! - ✓ `attention`: causal, GQA, tiled with an online softmax, optionally saving the
//!   log-sum-exp per (token, head) for the backward;
//! - ✓ `swiglu`: `silu(gate) · up`;
//! - ✓ `add_assign`: the residual stream `x += y`;
//! - ✓ `gemm`: dense f32 `C = α·op(A)·op(B) + β·C` (adapter products).
//!
//! Backward (training), each the exact adjoint of its forward, checked by finite differences in
//! f64 (`tests/backend_grad/`) against generic scalar references; outputs are overwritten:
//! - ✓ `matmul_dyw`: `dx = dy · Ŵ` (quantized; the frozen base gets no weight gradient);
//! - ✓ `rmsnorm_backward(x, w, rstd, dy) -> dx` (no `dw`: norms are frozen);
//! - ✓ `rope_backward(dy)` (rotation by −θ, in place);
//! - ✓ `attention_backward(q, k, v, out, lse, dout) -> dq, dk, dv` (tiled, recomputing scores
//!   from the saved `lse`; GQA; any `pos0`);
//! - ✓ `swiglu_backward(gate, up, dh) -> dgate, dup`;
//! - ✓ `cross_entropy(h, W_out, targets, scale, chunk scratch) -> Σ loss, dh` (the output
//!   projection, softmax and its gradient fused in chunks of tokens so `[tokens, vocab]` never
//!   exists whole; −100 targets ignored).
//!
//! Planned:
//! - `adamw(param, grad, m, v, step, hyper)` (paged state handled by the caller);
//! - `zero`, `copy`, `scale` utilities.
//!
//! `embedding_backward` is not needed: the base (including `token_embd`) is frozen.

pub mod choice;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use std::ops::Range;

use crate::Result;
use crate::quant::matmul::QuantMatrix;

pub use choice::BackendChoice;
pub use cpu::CpuBackend;
pub use cpu::gemm::GemmDims;

/// Sizes of one attention call.
///
/// `q` and `out` are `[n_tokens, n_head · head_dim]`; `k` and `v` are
/// `[pos0 + n_tokens, n_head_kv · head_dim]` (the cache of one layer, including the new
/// tokens); `lse`, when asked for, is `[n_tokens, n_head]`. Query `i` is at position `pos0 + i`
/// and attends to keys `0..=pos0 + i`. Query head `h` reads KV head `h / (n_head / n_head_kv)`
/// (ggml's broadcast rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionDims {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
}

/// Sizes of one RoPE call over `x` = `[n_tokens, n_head · head_dim]`, tokens at positions
/// `pos0..pos0 + n_tokens`. The first `rope_dim` (even, ≤ `head_dim`) dims of each head are
/// rotated in adjacent pairs; the rest pass through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    pub n_tokens: usize,
    pub pos0: usize,
    pub n_head: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
}

/// A compute backend. See the module docs for the design and the planned ops.
pub trait Backend: Send + Sync {
    /// Owned f32 storage (CPU: `Vec<f32>`).
    type Buffer: Send;
    /// A read-only range of a buffer (CPU: `&[f32]`).
    type View<'a>: Copy + Send + Sync
    where
        Self: 'a;
    /// A writable range of a buffer (CPU: `&mut [f32]`).
    type ViewMut<'a>: Send
    where
        Self: 'a;
    /// A quantized weight matrix the backend can read, borrowed from the mapped file.
    type Weight<'w>: Copy + Send + Sync;

    /// Short name for logs and reports (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    // ---- storage -------------------------------------------------------------------------

    /// A zeroed buffer of `len` f32. Called up front (the arena, the KV cache), never per op.
    fn alloc(&self, len: usize) -> Result<Self::Buffer>;
    /// A buffer holding a copy of `src` (small constants: norm weights, RoPE frequencies).
    fn buffer_from(&self, src: &[f32]) -> Result<Self::Buffer>;
    /// Length of a buffer in f32.
    fn buffer_len(buf: &Self::Buffer) -> usize;
    fn view(buf: &Self::Buffer) -> Self::View<'_>;
    fn view_mut(buf: &mut Self::Buffer) -> Self::ViewMut<'_>;
    /// `v[range]`; a range outside the view is an error.
    fn slice<'a>(v: Self::View<'a>, range: Range<usize>) -> Result<Self::View<'a>>;
    /// `v[range]`, writable; a range outside the view is an error.
    fn slice_mut<'a>(v: Self::ViewMut<'a>, range: Range<usize>) -> Result<Self::ViewMut<'a>>;
    /// Disjoint writable ranges of one view at once (how a training step carves the buffers
    /// of every op out of its one allocation: an op writes some ranges while reading others).
    /// Ranges outside `v`, or overlapping ones (empty ranges overlap nothing), are an error.
    fn split_mut<'a, const N: usize>(
        v: Self::ViewMut<'a>,
        ranges: [Range<usize>; N],
    ) -> Result<[Self::ViewMut<'a>; N]>;
    /// The same range, read-only, for the rest of the borrow (`&mut [f32]` → `&[f32]`).
    fn freeze<'a>(v: Self::ViewMut<'a>) -> Self::View<'a>;
    /// Copies host data into `dst` (same length).
    fn upload(&self, src: &[f32], dst: Self::ViewMut<'_>) -> Result<()>;
    /// Copies `src` to the host (same length); waits for queued work that writes `src`.
    fn download(&self, src: Self::View<'_>, dst: &mut [f32]) -> Result<()>;
    /// Copies `src` into `dst`, both `len` values long. By default through the host (download,
    /// then upload: correct on any backend, for small copies outside a training step); the CPU
    /// backend copies directly.
    fn copy(&self, src: Self::View<'_>, dst: Self::ViewMut<'_>, len: usize) -> Result<()> {
        let mut host = vec![0.0f32; len];
        self.download(src, &mut host)?;
        self.upload(&host, dst)
    }
    /// Waits for all queued work.
    fn synchronize(&self) -> Result<()>;
    /// Prepares a quantized matrix of the mapped file for this backend (never a CPU copy).
    fn weight<'w>(&self, m: QuantMatrix<'w>) -> Result<Self::Weight<'w>>;

    // ---- forward ops ---------------------------------------------------------------------

    /// `out[i, :] = table[tokens[i], :]` dequantized; `table` is [vocab, dim] (GGUF
    /// `token_embd` [dim, vocab] in ne order), `out` is `[tokens.len(), dim]`. An id ≥ vocab is
    /// an error naming it.
    fn embedding(
        &self,
        table: &Self::Weight<'_>,
        tokens: &[u32],
        out: Self::ViewMut<'_>,
    ) -> Result<()>;

    /// `y[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) · w` over rows of `w.len()` values;
    /// `rstd[i] = 1 / sqrt(mean(x[i, :]²) + eps)` when given (saved for the backward).
    fn rmsnorm(
        &self,
        x: Self::View<'_>,
        w: Self::View<'_>,
        eps: f32,
        y: Self::ViewMut<'_>,
        rstd: Option<Self::ViewMut<'_>>,
    ) -> Result<()>;

    /// `y[n, out] = x[n, in] · Wᵀ` with `W` [out, in] quantized.
    fn matmul_xwt(
        &self,
        x: Self::View<'_>,
        n: usize,
        w: &Self::Weight<'_>,
        y: Self::ViewMut<'_>,
    ) -> Result<()>;

    /// Rotates adjacent pairs `(2j, 2j+1)` of every head of `x` in place by
    /// `θ = pos · inv_freq[j]`, `inv_freq` = `[rope_dim / 2]` (base^(−2j/rope_dim) / rope_freqs[j],
    /// precomputed by the model).
    fn rope(&self, x: Self::ViewMut<'_>, inv_freq: Self::View<'_>, dims: RopeDims) -> Result<()>;

    /// Causal GQA attention, `out = softmax(q·kᵀ / sqrt(head_dim)) · v` per head (see
    /// [`AttentionDims`] for the layouts); `lse[i, h]` = log Σ exp(scores) when given.
    fn attention(
        &self,
        q: Self::View<'_>,
        k: Self::View<'_>,
        v: Self::View<'_>,
        out: Self::ViewMut<'_>,
        lse: Option<Self::ViewMut<'_>>,
        dims: AttentionDims,
    ) -> Result<()>;

    /// `out = silu(gate) · up` element-wise, `silu(g) = g / (1 + e^(−g))`.
    fn swiglu(
        &self,
        gate: Self::View<'_>,
        up: Self::View<'_>,
        out: Self::ViewMut<'_>,
    ) -> Result<()>;

    /// `x += y` element-wise (the residual stream).
    fn add_assign(&self, x: Self::ViewMut<'_>, y: Self::View<'_>) -> Result<()>;

    /// Dense `c = alpha · op(a) · op(b) + beta · c` (row-major, layouts in [`GemmDims`];
    /// `beta == 0` overwrites `c`): the adapters' products.
    fn gemm(
        &self,
        dims: GemmDims,
        alpha: f32,
        a: Self::View<'_>,
        b: Self::View<'_>,
        beta: f32,
        c: Self::ViewMut<'_>,
    ) -> Result<()>;

    // ---- backward ops (each the exact adjoint of its forward; outputs are overwritten) -----

    /// Input gradient of [`Backend::matmul_xwt`]: `dx[n, in] = dy[n, out] · Ŵ`, `Ŵ` the
    /// dequantized `W` [out, in]. The frozen base gets no weight gradient.
    fn matmul_dyw(
        &self,
        dy: Self::View<'_>,
        n: usize,
        w: &Self::Weight<'_>,
        dx: Self::ViewMut<'_>,
    ) -> Result<()>;

    /// Input gradient of [`Backend::rmsnorm`] (norm weights are frozen: no `dw`). `x`, `dy`, `dx`
    /// are `[n, dim]`, `w` `[dim]`, `rstd` `[n]` as saved by the forward:
    /// `dx = rstd · (w ⊙ dy − x · rstd² / dim · Σ_j dy_j w_j x_j)` per row.
    fn rmsnorm_backward(
        &self,
        x: Self::View<'_>,
        w: Self::View<'_>,
        rstd: Self::View<'_>,
        dy: Self::View<'_>,
        dx: Self::ViewMut<'_>,
    ) -> Result<()>;

    /// Input gradient of [`Backend::rope`], in place: rotates the pairs of `dy` by −θ (same
    /// `inv_freq` and dims as the forward, any `pos0`).
    fn rope_backward(
        &self,
        dy: Self::ViewMut<'_>,
        inv_freq: Self::View<'_>,
        dims: RopeDims,
    ) -> Result<()>;

    /// Gradients of [`Backend::swiglu`]: `dgate = dh · up · silu'(gate)`, `dup = dh · silu(gate)`.
    fn swiglu_backward(
        &self,
        gate: Self::View<'_>,
        up: Self::View<'_>,
        dh: Self::View<'_>,
        dgate: Self::ViewMut<'_>,
        dup: Self::ViewMut<'_>,
    ) -> Result<()>;

    /// Gradients of [`Backend::attention`] given the forward's `out` and `lse` and the upstream
    /// `dout` (layouts of [`AttentionDims`]; `dq` like `q`, `dk`/`dv` like `k`/`v`, i.e. the
    /// whole `pos0 + n_tokens` keys, cache keys included). Scores are recomputed tile by tile
    /// from `q`, `k` and `lse` (no `[seq, seq]` buffer); a KV head's `dk`/`dv` sum over its
    /// query group.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        &self,
        q: Self::View<'_>,
        k: Self::View<'_>,
        v: Self::View<'_>,
        out: Self::View<'_>,
        lse: Self::View<'_>,
        dout: Self::View<'_>,
        dq: Self::ViewMut<'_>,
        dk: Self::ViewMut<'_>,
        dv: Self::ViewMut<'_>,
        dims: AttentionDims,
    ) -> Result<()>;

    /// Next-token cross-entropy over the output projection, forward and backward fused and
    /// chunked: `h` `[n, dim]` (after the final norm), `w` the output weight `[vocab, dim]`,
    /// `targets` `[n]` (already shifted: token `i`'s logits predict `targets[i]`; −100 =
    /// ignored). `logits` is a `[chunk, vocab]` scratch (exactly `chunk × vocab` values), so
    /// `[n, vocab]` never exists. Returns `Σ loss` over the non-ignored targets (f64) and writes
    /// `dh` = the gradient of `scale · Σ loss` (`scale` = 1 / number of counted targets for a
    /// mean, passed in so that accumulation over micro-batches can use a global count).
    #[allow(clippy::too_many_arguments)]
    fn cross_entropy(
        &self,
        h: Self::View<'_>,
        w: &Self::Weight<'_>,
        targets: &[i32],
        scale: f32,
        chunk: usize,
        logits: Self::ViewMut<'_>,
        dh: Self::ViewMut<'_>,
    ) -> Result<f64>;
}

/// The order of `ranges` by start after checking that each lies in `0..len` and that none
/// overlap (empty ranges overlap nothing): the check behind [`Backend::split_mut`].
pub(crate) fn disjoint_order<const N: usize>(
    ranges: &[Range<usize>; N],
    len: usize,
) -> Result<[usize; N]> {
    let mut order: [usize; N] = std::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| (ranges[i].start, ranges[i].end));
    let mut end = 0;
    for &i in &order {
        let r = &ranges[i];
        if r.start > r.end || r.end > len {
            return Err(crate::Error::Invalid(format!(
                "view range {}..{} is outside a view of {len} values",
                r.start, r.end
            )));
        }
        if r.start < r.end {
            if r.start < end {
                return Err(crate::Error::Invalid(format!(
                    "view range {}..{} overlaps another range ending at {end}",
                    r.start, r.end
                )));
            }
            end = r.end;
        }
    }
    Ok(order)
}

/// Checks that `len` values hold `rows × width` (an error naming the op and the numbers).
pub(crate) fn check_len(op: &str, what: &str, len: usize, rows: usize, width: usize) -> Result<()> {
    if Some(len) != rows.checked_mul(width) {
        return Err(crate::Error::Invalid(format!(
            "{op}: {what} has {len} values, expected {rows} × {width}"
        )));
    }
    Ok(())
}
