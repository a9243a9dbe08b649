//! One decoding step for several independent sequences at once: each sequence brings one new
//! token and its own KV cache, and every projection runs over all of them as one `[n, in]`
//! product, so the weights are read (and their blocks unpacked) once per step instead of once per
//! sequence.
//!
//! Per step, with `n` sequences, sequence `i` at position `pᵢ = caches[i].len()`:
//!
//! ```text
//! x = token_embd[tokens]                                   [n, dim]
//! per layer:  xn = rmsnorm(x, attn_norm)
//!             q = rope_rowwise(xn·Wqᵀ)                     [n, q_dim], row i at pᵢ
//!             k = xn·Wkᵀ, v = xn·Wvᵀ                       [n, kv_dim]
//!             per i:  caches[i].k[pᵢ] = rope(kᵢ);  caches[i].v[pᵢ] = vᵢ
//!                     attᵢ = attention(qᵢ, caches[i].k[..=pᵢ], caches[i].v[..=pᵢ])
//!             x += att·Woᵀ;  x += swiglu(rmsnorm(x)·Wgateᵀ, ·Wupᵀ)·Wdownᵀ
//! logits = rmsnorm(x, output_norm)·Woutputᵀ               [n, vocab]
//! ```
//!
//! Only RoPE, the copy of each new K/V row into its cache and attention run per sequence. Every
//! row is computed exactly as a
//! one-token `forward_chunk` of its sequence would compute it, up to the kernels' summation order
//! for `n` rows (the parity test bounds the difference).

use super::forward::{
    BackendModel, ProjectionHook, Workspace, attn_output_residual, ffn_residual, output_head,
};
use super::kv_cache::KvCacheOf;
use super::stream::LayerSource;
use crate::adapters::Target;
use crate::backend::{AttentionDims, Backend, RopeDims};
use crate::{Error, Result};

/// Runs one token per sequence (`caches.len() == tokens.len() ≤ ws.max_tokens()`, ids < vocab,
/// room for one more position in every cache: the caller checked), appends each token's K/V to
/// its cache and writes every sequence's logits into `logits` (`[n, vocab]`, row `i` for
/// sequence `i`). The layers come from `src` (`&m`, or a weight stream), as in
/// [`forward_chunk`](super::forward::forward_chunk).
pub fn decode_batch<B: Backend>(
    m: &BackendModel<'_, B>,
    src: &mut dyn LayerSource<B>,
    ws: &mut Workspace<B>,
    caches: &mut [&mut KvCacheOf<B>],
    tokens: &[u32],
    logits: &mut [f32],
    hook: &mut dyn ProjectionHook<B>,
) -> Result<()> {
    let b = &m.backend;
    let c = &m.config;
    let n = tokens.len();
    if caches.len() != n || n > ws.max_tokens() || logits.len() != n * c.n_vocab {
        return Err(Error::Invalid(format!(
            "decode_batch: {} caches, {n} tokens, {} logits for a workspace of {} rows",
            caches.len(),
            logits.len(),
            ws.max_tokens()
        )));
    }
    let (dim, qd, kvd) = (c.dim, c.q_dim(), c.kv_dim());
    let inv = B::view(&m.inv_freq);
    let rope_one = |pos0: usize, n_head: usize| RopeDims {
        n_tokens: 1,
        pos0,
        n_head,
        head_dim: c.head_dim,
        rope_dim: c.rope_dim,
    };

    super::forward::embed_tokens(m, src, tokens, &mut ws.x)?;
    let n_layer = c.n_layer;
    for l in 0..n_layer {
        // After the last layer the head, then the next step's layer 0.
        src.with_layer(l, super::forward::next_layer(l, n_layer, true), &mut |lw| {
            b.rmsnorm(
                rows::<B>(&ws.x, 0, n * dim)?,
                B::view(&lw.attn_norm),
                c.rms_eps,
                slice_mut::<B>(&mut ws.xn, 0, n * dim)?,
                None,
            )?;
            let xn = rows::<B>(&ws.xn, 0, n * dim)?;
            b.matmul_xwt(xn, n, &lw.attn_q, slice_mut::<B>(&mut ws.q, 0, n * qd)?)?;
            hook.apply(
                l,
                Target::AttnQ,
                n,
                xn,
                slice_mut::<B>(&mut ws.q, 0, n * qd)?,
            )?;
            // K and V of every row at once, staged in the FFN buffers (free until the FFN block;
            // n·kv_dim ≤ n·ffn), then roped and copied into each sequence's next cache row.
            for (w, buf, target) in [
                (&lw.attn_k, &mut ws.gate, Target::AttnK),
                (&lw.attn_v, &mut ws.up, Target::AttnV),
            ] {
                b.matmul_xwt(xn, n, w, slice_mut::<B>(buf, 0, n * kvd)?)?;
                hook.apply(l, target, n, xn, slice_mut::<B>(buf, 0, n * kvd)?)?;
            }
            for (i, cache) in caches.iter_mut().enumerate() {
                let pos = cache.len();
                let staged = i * kvd..(i + 1) * kvd;
                b.rope(
                    slice_mut::<B>(&mut ws.gate, staged.start, staged.end)?,
                    inv,
                    rope_one(pos, c.n_head_kv),
                )?;
                let row = pos * kvd..(pos + 1) * kvd;
                b.copy(
                    rows::<B>(&ws.gate, staged.start, staged.end)?,
                    cache_row::<B>(&mut cache.k[l], &row)?,
                    kvd,
                )?;
                b.copy(
                    rows::<B>(&ws.up, staged.start, staged.end)?,
                    cache_row::<B>(&mut cache.v[l], &row)?,
                    kvd,
                )?;
                b.rope(
                    slice_mut::<B>(&mut ws.q, i * qd, (i + 1) * qd)?,
                    inv,
                    rope_one(pos, c.n_head),
                )?;
                let seen = 0..(pos + 1) * kvd;
                b.attention(
                    rows::<B>(&ws.q, i * qd, (i + 1) * qd)?,
                    B::slice(B::view(&cache.k[l]), seen.clone())?,
                    B::slice(B::view(&cache.v[l]), seen)?,
                    slice_mut::<B>(&mut ws.att, i * qd, (i + 1) * qd)?,
                    None,
                    AttentionDims {
                        n_tokens: 1,
                        pos0: pos,
                        n_head: c.n_head,
                        n_head_kv: c.n_head_kv,
                        head_dim: c.head_dim,
                    },
                )?;
            }
            attn_output_residual(m, lw, ws, l, n, hook)?;
            ffn_residual(m, lw, ws, l, n, hook)
        })?;
    }
    for cache in caches.iter_mut() {
        cache.advance(1);
    }
    output_head(m, src, ws, 0, n, logits)
}

fn rows<B: Backend>(buf: &B::Buffer, start: usize, end: usize) -> Result<B::View<'_>> {
    B::slice(B::view(buf), start..end)
}

fn slice_mut<B: Backend>(buf: &mut B::Buffer, start: usize, end: usize) -> Result<B::ViewMut<'_>> {
    B::slice_mut(B::view_mut(buf), start..end)
}

fn cache_row<'b, B: Backend>(
    buf: &'b mut B::Buffer,
    row: &std::ops::Range<usize>,
) -> Result<B::ViewMut<'b>> {
    B::slice_mut(B::view_mut(buf), row.clone())
}
