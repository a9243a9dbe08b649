//! The Llama forward pass written once over [`Backend`] ops: the layer schedule.
//!
//! Per chunk of `n` tokens at positions `pos0..pos0 + n` (`x` is the residual stream
//! `[n, dim]`):
//!
//! ```text
//! x = token_embd[tokens]
//! per layer:  xn = rmsnorm(x, attn_norm)
//!             q = xn·Wqᵀ [n, q_dim];  cache.k[pos0..] = rope(xn·Wkᵀ);  cache.v[pos0..] = xn·Wvᵀ
//!             q = rope(q);  att = attention(q, cache.k[..pos0+n], cache.v[..pos0+n])
//!             x += att·Woᵀ
//!             xn = rmsnorm(x, ffn_norm);  x += swiglu(xn·Wgateᵀ, xn·Wupᵀ)·Wdownᵀ
//! logits = rmsnorm(x, output_norm)·Woutputᵀ   (only the rows asked for)
//! ```
//!
//! Each projection `y = x·Wᵀ` is followed by a [`ProjectionHook`] call (`y += branch(x)`), which
//! is how trained adapters join inference ([`NoAdapters`] does nothing). The hook on `attn_k`
//! runs before RoPE, as in training.
//!
//! K and V are projected straight into the cache rows of the new positions (no copy). Every
//! activation lives in a [`Workspace`] allocated once for a maximum chunk size and reused; the
//! logits pass through a `[LOGIT_ROWS, vocab]` staging buffer so that `[tokens, vocab]` never
//! exists on the backend (4 MiB for Llama 3's 128256-token vocabulary at 8 rows).

use super::config::LlamaConfig;
use super::kv_cache::KvCacheOf;
use super::stream::{HEAD, LayerSource};
use super::weights::LlamaWeights;
use crate::Result;
use crate::adapters::Target;
use crate::backend::cpu::rope::inv_freq;
use crate::backend::{AttentionDims, Backend, RopeDims};

/// Adds an adapter branch after a base projection: `y += branch(x)` for `target` of `layer`,
/// `x` `[n, in]`, `y` `[n, out]`.
pub trait ProjectionHook<B: Backend> {
    fn apply(
        &mut self,
        layer: usize,
        target: Target,
        n: usize,
        x: B::View<'_>,
        y: B::ViewMut<'_>,
    ) -> Result<()>;
}

/// The base model alone.
pub struct NoAdapters;

impl<B: Backend> ProjectionHook<B> for NoAdapters {
    fn apply(
        &mut self,
        _: usize,
        _: Target,
        _: usize,
        _: B::View<'_>,
        _: B::ViewMut<'_>,
    ) -> Result<()> {
        Ok(())
    }
}

/// Rows of logits computed per output-projection call.
pub const LOGIT_ROWS: usize = 8;

/// One block's weights prepared for backend `B`.
pub struct BackendLayer<'w, B: Backend> {
    pub attn_norm: B::Buffer,
    pub attn_q: B::Weight<'w>,
    pub attn_k: B::Weight<'w>,
    pub attn_v: B::Weight<'w>,
    pub attn_output: B::Weight<'w>,
    pub ffn_norm: B::Buffer,
    pub ffn_gate: B::Weight<'w>,
    pub ffn_up: B::Weight<'w>,
    pub ffn_down: B::Weight<'w>,
}

/// A model's weights prepared for backend `B`, plus the RoPE frequencies.
pub struct BackendModel<'w, B: Backend> {
    pub backend: B,
    pub config: LlamaConfig,
    pub token_embd: B::Weight<'w>,
    pub layers: Vec<BackendLayer<'w, B>>,
    pub output_norm: B::Buffer,
    pub output: B::Weight<'w>,
    /// `[rope_dim / 2]`: `base^(−2j/rope_dim) / rope_freqs[j]`.
    pub inv_freq: B::Buffer,
}

impl<'w, B: Backend> BackendModel<'w, B> {
    pub fn new(backend: B, config: &LlamaConfig, w: &LlamaWeights<'w>) -> Result<Self> {
        let b = &backend;
        let layers = w
            .layers
            .iter()
            .map(|l| {
                Ok(BackendLayer {
                    attn_norm: b.buffer_from(&l.attn_norm)?,
                    attn_q: b.weight(l.attn_q)?,
                    attn_k: b.weight(l.attn_k)?,
                    attn_v: b.weight(l.attn_v)?,
                    attn_output: b.weight(l.attn_output)?,
                    ffn_norm: b.buffer_from(&l.ffn_norm)?,
                    ffn_gate: b.weight(l.ffn_gate)?,
                    ffn_up: b.weight(l.ffn_up)?,
                    ffn_down: b.weight(l.ffn_down)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let freqs = inv_freq(config.rope_dim, config.rope_base, w.rope_freqs.as_deref());
        Ok(BackendModel {
            token_embd: b.weight(w.token_embd)?,
            output_norm: b.buffer_from(&w.output_norm)?,
            output: b.weight(w.output)?,
            inv_freq: b.buffer_from(&freqs)?,
            layers,
            config: config.clone(),
            backend,
        })
    }
}

/// Activation buffers for chunks of up to `max_tokens` tokens.
pub struct Workspace<B: Backend> {
    max_tokens: usize,
    pub(super) x: B::Buffer,
    pub(super) xn: B::Buffer,
    pub(super) q: B::Buffer,
    pub(super) att: B::Buffer,
    pub(super) proj: B::Buffer,
    pub(super) gate: B::Buffer,
    pub(super) up: B::Buffer,
    pub(super) h: B::Buffer,
    /// `[LOGIT_ROWS, vocab]` staging for the output projection.
    pub(super) logits: B::Buffer,
}

impl<B: Backend> Workspace<B> {
    pub fn new(b: &B, c: &LlamaConfig, max_tokens: usize) -> Result<Self> {
        let t = max_tokens;
        Ok(Workspace {
            max_tokens,
            x: b.alloc(t * c.dim)?,
            xn: b.alloc(t * c.dim)?,
            q: b.alloc(t * c.q_dim())?,
            att: b.alloc(t * c.q_dim())?,
            proj: b.alloc(t * c.dim)?,
            gate: b.alloc(t * c.ffn)?,
            up: b.alloc(t * c.ffn)?,
            h: b.alloc(t * c.ffn)?,
            logits: b.alloc(LOGIT_ROWS * c.n_vocab)?,
        })
    }

    /// Most tokens one chunk may hold.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// f32 values held (for memory reports).
    pub fn n_values(&self) -> usize {
        [
            &self.x,
            &self.xn,
            &self.q,
            &self.att,
            &self.proj,
            &self.gate,
            &self.up,
            &self.h,
            &self.logits,
        ]
        .iter()
        .map(|b| B::buffer_len(b))
        .sum()
    }
}

/// Which logits a chunk produces.
pub enum LogitRows<'o> {
    /// None (an earlier chunk of a `forward_last`).
    None,
    /// Every token's, into `[n, vocab]`.
    All(&'o mut [f32]),
    /// The last token's, into `[vocab]`.
    Last(&'o mut [f32]),
}

/// Runs one chunk (`tokens.len() ≤ ws.max_tokens()`, ids < vocab, room in the cache: the
/// caller checked) at positions `cache.len()..`, appends its K/V and writes the logits asked for.
/// The layers (and, where it holds them, the embedding table and the head) come from `src`:
/// `&m` itself, or a [`WeightStream`](super::stream::WeightStream).
pub fn forward_chunk<B: Backend>(
    m: &BackendModel<'_, B>,
    src: &mut dyn LayerSource<B>,
    ws: &mut Workspace<B>,
    cache: &mut KvCacheOf<B>,
    tokens: &[u32],
    logits: LogitRows<'_>,
    hook: &mut dyn ProjectionHook<B>,
) -> Result<()> {
    let b = &m.backend;
    let c = &m.config;
    let n = tokens.len();
    let pos0 = cache.len();
    let (dim, qd, kvd) = (c.dim, c.q_dim(), c.kv_dim());

    embed_tokens(m, src, tokens, &mut ws.x)?;
    let n_layer = c.n_layer;
    let wants_logits = !matches!(logits, LogitRows::None);
    for l in 0..n_layer {
        // After the last layer the head (when logits are asked for), then the next chunk's
        // layer 0.
        src.with_layer(l, next_layer(l, n_layer, wants_logits), &mut |lw| {
            // Attention block.
            b.rmsnorm(
                rows_of::<B>(&ws.x, n * dim)?,
                B::view(&lw.attn_norm),
                c.rms_eps,
                B::slice_mut(B::view_mut(&mut ws.xn), 0..n * dim)?,
                None,
            )?;
            let xn = rows_of::<B>(&ws.xn, n * dim)?;
            b.matmul_xwt(
                xn,
                n,
                &lw.attn_q,
                B::slice_mut(B::view_mut(&mut ws.q), 0..n * qd)?,
            )?;
            hook.apply(
                l,
                Target::AttnQ,
                n,
                xn,
                B::slice_mut(B::view_mut(&mut ws.q), 0..n * qd)?,
            )?;
            let new_rows = pos0 * kvd..(pos0 + n) * kvd;
            let k_new = B::slice_mut(B::view_mut(&mut cache.k[l]), new_rows.clone())?;
            b.matmul_xwt(xn, n, &lw.attn_k, k_new)?;
            let k_new = B::slice_mut(B::view_mut(&mut cache.k[l]), new_rows.clone())?;
            hook.apply(l, Target::AttnK, n, xn, k_new)?;
            let v_new = B::slice_mut(B::view_mut(&mut cache.v[l]), new_rows.clone())?;
            b.matmul_xwt(xn, n, &lw.attn_v, v_new)?;
            let v_new = B::slice_mut(B::view_mut(&mut cache.v[l]), new_rows.clone())?;
            hook.apply(l, Target::AttnV, n, xn, v_new)?;
            let rope_q = RopeDims {
                n_tokens: n,
                pos0,
                n_head: c.n_head,
                head_dim: c.head_dim,
                rope_dim: c.rope_dim,
            };
            let inv = B::view(&m.inv_freq);
            b.rope(
                B::slice_mut(B::view_mut(&mut ws.q), 0..n * qd)?,
                inv,
                rope_q,
            )?;
            let k_new = B::slice_mut(B::view_mut(&mut cache.k[l]), new_rows)?;
            b.rope(
                k_new,
                inv,
                RopeDims {
                    n_head: c.n_head_kv,
                    ..rope_q
                },
            )?;
            let seen = 0..(pos0 + n) * kvd;
            b.attention(
                rows_of::<B>(&ws.q, n * qd)?,
                B::slice(B::view(&cache.k[l]), seen.clone())?,
                B::slice(B::view(&cache.v[l]), seen)?,
                B::slice_mut(B::view_mut(&mut ws.att), 0..n * qd)?,
                None,
                AttentionDims {
                    n_tokens: n,
                    pos0,
                    n_head: c.n_head,
                    n_head_kv: c.n_head_kv,
                    head_dim: c.head_dim,
                },
            )?;
            attn_output_residual(m, lw, ws, l, n, hook)?;
            ffn_residual(m, lw, ws, l, n, hook)
        })?;
    }
    cache.advance(n);

    // Output head over the rows asked for, LOGIT_ROWS at a time.
    let (first, out) = match logits {
        LogitRows::None => return Ok(()),
        LogitRows::All(out) => (0, out),
        LogitRows::Last(out) => (n - 1, out),
    };
    output_head(m, src, ws, first, n, out)
}

/// The layer (or [`HEAD`]) asked for after layer `l` of `n_layer`: the next one; after the
/// last, the head when logits follow, else layer 0 (the next call's first).
pub(super) fn next_layer(l: usize, n_layer: usize, head_follows: bool) -> Option<usize> {
    if l + 1 < n_layer {
        Some(l + 1)
    } else if head_follows {
        Some(HEAD)
    } else {
        Some(0)
    }
}

/// Embeds `tokens` into the first rows of `x`: as `src` does it (a stream with a tied head
/// uses its own table or reads its rows), else from the model's table.
pub(super) fn embed_tokens<B: Backend>(
    m: &BackendModel<'_, B>,
    src: &mut dyn LayerSource<B>,
    tokens: &[u32],
    x: &mut B::Buffer,
) -> Result<()> {
    let x = B::slice_mut(B::view_mut(x), 0..tokens.len() * m.config.dim)?;
    src.embed(&m.backend, &m.token_embd, tokens, x)
}

/// `x += att·Woᵀ` over the first `n` rows (`att` `[n, q_dim]` in `ws.att`), the hook after the
/// projection.
pub(super) fn attn_output_residual<B: Backend>(
    m: &BackendModel<'_, B>,
    lw: &BackendLayer<'_, B>,
    ws: &mut Workspace<B>,
    l: usize,
    n: usize,
    hook: &mut dyn ProjectionHook<B>,
) -> Result<()> {
    let b = &m.backend;
    let (dim, qd) = (m.config.dim, m.config.q_dim());
    let proj = B::slice_mut(B::view_mut(&mut ws.proj), 0..n * dim)?;
    b.matmul_xwt(rows_of::<B>(&ws.att, n * qd)?, n, &lw.attn_output, proj)?;
    let proj = B::slice_mut(B::view_mut(&mut ws.proj), 0..n * dim)?;
    hook.apply(
        l,
        Target::AttnOutput,
        n,
        rows_of::<B>(&ws.att, n * qd)?,
        proj,
    )?;
    b.add_assign(
        B::slice_mut(B::view_mut(&mut ws.x), 0..n * dim)?,
        rows_of::<B>(&ws.proj, n * dim)?,
    )
}

/// The feed-forward block of layer `l` over the first `n` rows of `ws.x`:
/// `x += swiglu(rmsnorm(x)·Wgateᵀ, rmsnorm(x)·Wupᵀ)·Wdownᵀ`, a hook after each projection.
pub(super) fn ffn_residual<B: Backend>(
    m: &BackendModel<'_, B>,
    lw: &BackendLayer<'_, B>,
    ws: &mut Workspace<B>,
    l: usize,
    n: usize,
    hook: &mut dyn ProjectionHook<B>,
) -> Result<()> {
    let b = &m.backend;
    let c = &m.config;
    let (dim, ffn) = (c.dim, c.ffn);
    b.rmsnorm(
        rows_of::<B>(&ws.x, n * dim)?,
        B::view(&lw.ffn_norm),
        c.rms_eps,
        B::slice_mut(B::view_mut(&mut ws.xn), 0..n * dim)?,
        None,
    )?;
    let xn = rows_of::<B>(&ws.xn, n * dim)?;
    for (w, buf, target) in [
        (&lw.ffn_gate, &mut ws.gate, Target::FfnGate),
        (&lw.ffn_up, &mut ws.up, Target::FfnUp),
    ] {
        b.matmul_xwt(xn, n, w, B::slice_mut(B::view_mut(buf), 0..n * ffn)?)?;
        hook.apply(
            l,
            target,
            n,
            xn,
            B::slice_mut(B::view_mut(buf), 0..n * ffn)?,
        )?;
    }
    b.swiglu(
        rows_of::<B>(&ws.gate, n * ffn)?,
        rows_of::<B>(&ws.up, n * ffn)?,
        B::slice_mut(B::view_mut(&mut ws.h), 0..n * ffn)?,
    )?;
    let proj = B::slice_mut(B::view_mut(&mut ws.proj), 0..n * dim)?;
    b.matmul_xwt(rows_of::<B>(&ws.h, n * ffn)?, n, &lw.ffn_down, proj)?;
    let proj = B::slice_mut(B::view_mut(&mut ws.proj), 0..n * dim)?;
    hook.apply(l, Target::FfnDown, n, rows_of::<B>(&ws.h, n * ffn)?, proj)?;
    b.add_assign(
        B::slice_mut(B::view_mut(&mut ws.x), 0..n * dim)?,
        rows_of::<B>(&ws.proj, n * dim)?,
    )
}

/// Logits of rows `first..n` of `ws.x` into `out` (`[n − first, vocab]`): the final norm and
/// the output projection `[vocab, dim]` from `src` (whole, or a streamed head's chunks of rows:
/// chunks outside, so each is read once), `LOGIT_ROWS` rows at a time through the staging
/// buffer. Every logit is the same dot product whichever chunk its row is in.
pub(super) fn output_head<B: Backend>(
    m: &BackendModel<'_, B>,
    src: &mut dyn LayerSource<B>,
    ws: &mut Workspace<B>,
    first: usize,
    n: usize,
    out: &mut [f32],
) -> Result<()> {
    let b = &m.backend;
    let c = &m.config;
    let (dim, vocab) = (c.dim, c.n_vocab);
    // After the head, the next call starts at layer 0.
    src.with_head(Some(0), &mut |head| {
        let (v0, vc) = (head.v0, head.n);
        if v0 + vc > vocab {
            return Err(crate::Error::Invalid(format!(
                "output head rows {v0}..{} outside the vocabulary of {vocab}",
                v0 + vc
            )));
        }
        let mut r0 = first;
        while r0 < n {
            let nr = LOGIT_ROWS.min(n - r0);
            b.rmsnorm(
                B::slice(B::view(&ws.x), r0 * dim..(r0 + nr) * dim)?,
                B::view(&m.output_norm),
                c.rms_eps,
                B::slice_mut(B::view_mut(&mut ws.xn), 0..nr * dim)?,
                None,
            )?;
            let stage = B::slice_mut(B::view_mut(&mut ws.logits), 0..nr * vc)?;
            b.matmul_xwt(rows_of::<B>(&ws.xn, nr * dim)?, nr, &head.rows, stage)?;
            if vc == vocab {
                let dst = &mut out[(r0 - first) * vocab..(r0 - first + nr) * vocab];
                b.download(rows_of::<B>(&ws.logits, nr * vocab)?, dst)?;
            } else {
                for i in 0..nr {
                    let row = (r0 - first + i) * vocab + v0;
                    let src_row = B::slice(B::view(&ws.logits), i * vc..(i + 1) * vc)?;
                    b.download(src_row, &mut out[row..row + vc])?;
                }
            }
            r0 += nr;
        }
        Ok(())
    })
}

fn rows_of<B: Backend>(buf: &B::Buffer, len: usize) -> Result<B::View<'_>> {
    B::slice(B::view(buf), 0..len)
}
