//! The buffer list of one Llama LoRA training step, with and without gradient checkpointing:
//! the first client of [`edgetune_core::memory::plan`]. Shapes are f32, `T = seq_len × micro_batch` tokens,
//! `D = dim`, `Q = n_head · head_dim`, `K = n_head_kv · head_dim`, `F = ffn`, `H = n_head`,
//! `r` the LoRA rank.
//!
//! # Schedule ([`LlamaSchedule`])
//!
//! `embed`, then per layer 0..L the 8 forward sub-steps of [`Fwd`], the 3 loss sub-steps of
//! [`Loss`], then per layer L−1..0 the 8 recompute sub-steps (a copy of [`Fwd`]; empty without
//! checkpointing) followed by the 8 backward sub-steps of [`Bwd`], then `optimizer`.
//!
//! # Buffers (names `L{l}.…` per layer)
//!
//! - `x` `[T, D]`: the layer's input (the residual stream), written by the previous layer's
//!   forward (or the embedding), kept until the layer's `AttnNorm` backward. With
//!   checkpointing these are the only per-layer activations that cross layers ([`Category::Checkpoint`]).
//!   With [`TrainShape::checkpoint_bf16`] `x` lives only through the layer's forward; `xc`
//!   `[T·D/2]` keeps it packed as bf16 from the end of the previous layer's forward until the
//!   recompute unpacks it into `xr` `[T, D]` ([`Category::Recompute`]) for the recompute and
//!   the backward. With [`TrainShape::checkpoints_on_disk`] the inputs go to a file instead of
//!   `xc` (packed on the way through one `ckpt.stage` when bf16).
//! - Layer activations: `xn` (attn_norm out) `[T, D]`, `rstd_attn` `[T]`, `q` `[T, Q]`,
//!   `k`/`v` `[T, K]`, `att` (attention out) `[T, Q]`, `lse` `[T, H]`, `o` (attn_output out)
//!   `[T, D]`, `mid` (residual after attention) `[T, D]`, `fn` (ffn_norm out) `[T, D]`,
//!   `rstd_ffn` `[T]`, `gate`/`up`/`sw` (SwiGLU out) `[T, F]`, `y` (ffn_down out) `[T, D]`, and
//!   each adapter's saved activations `h.{target}` `[T, saved_per_token]` (LoRA: `H = x · Aᵀ`,
//!   `[T, r]`, saved for `dB = dyᵀ · H`). Without
//!   checkpointing each lives from its forward sub-step to its last backward use. With
//!   checkpointing the forward keeps only what the forward itself needs, one sub-step or two
//!   (`x_{l+1}` doubles as `mid`; `rstd`/`lse` are not saved), and the backward recomputes the
//!   layer into `L{l}.rc.…` buffers ([`Category::Recompute`]) that live only within that
//!   layer's backward.
//! - Backward scratch ([`Category::Temporary`]): `dsw` `[T, F]`, `dgate`/`dup` `[T, F]`, `dfn`
//!   `[T, D]` (+ `dfn_tmp` for the second input gradient before it is added), `dmid` `[T, D]`
//!   (ffn_norm's input gradient, added into the residual gradient), `datt` `[T, Q]`, `dq`
//!   `[T, Q]`, `dk`/`dv` `[T, K]`, `dxn` `[T, D]` (+ `dxn_tmp`), `dx` `[T, D]`, and the LoRA
//!   `dh.{target}` `[T, r]` (`dH = dy · B`).
//! - Loss: `final.norm` `[T, D]`, `final.rstd` `[T]`, `ce.logits` `[chunk, vocab]` (the
//!   chunked cross-entropy's scratch: `[T, vocab]` never exists), `ce.dh` `[T, D]`.
//! - `dres` `[T, D]` ([`Category::ResidualGrad`]): the gradient of the residual stream, from the
//!   final norm's backward down to layer 0, updated in place.
//! - `L{l}.grad.{target}` `n_params` ([`Category::AdapterGrad`]): the adapter's gradients in
//!   its parameter order (LoRA: `dA [r, in]` then `dB [out, r]`), from the start of the
//!   backward until the optimizer — or for the whole step when gradients are accumulated over
//!   micro-batches, where `grad.tmp` (the largest adapter's `n_params`) receives each later
//!   micro-batch's gradients before they are added; or, with [`TrainShape::fused_update`], only
//!   through the layer's own backward (its update runs at the backward's last sub-step).
//! - `opt.m`, `opt.v` ([`Category::OptimizerStaging`], only when [`TrainShape::optimizer_staging`]):
//!   AdamW state of the largest single adapter tensor, staged for its update (a device backend
//!   copies pages in; the CPU updates the pages in place and needs no staging).
//!
//! Attention needs no tile buffer: the backends' attention kernels tile in registers / on the
//! stack / in shared memory, and recompute scores from the saved `lse`.

mod schedule;
mod shape;

pub use schedule::{Bwd, Fwd, LlamaSchedule, Loss, TARGETS};
pub use shape::{AdapterShape, TrainShape, projection_shape};

use edgetune_core::memory::plan::{Category, PlanBuilder};
use edgetune_core::model::config::LlamaConfig;
use edgetune_core::{Error, Result};

use Bwd as B;
use Fwd as F;

/// One layer activation: produced at forward sub-step `made`, last read by the forward at
/// `fwd_last` (`None`: the forward need not write it) and by the backward at `bwd_last`
/// (`None`: only the forward / recompute uses it); `recompute`: whether the recompute must
/// produce it again.
struct Act {
    name: String,
    category: Category,
    dims: Vec<usize>,
    made: Fwd,
    fwd_last: Option<Fwd>,
    bwd_last: Option<Bwd>,
    recompute: bool,
}

/// Bytes of an f32 tensor of shape `dims`, with the shape in the overflow error.
fn f32_bytes(name: &str, dims: &[usize]) -> Result<u64> {
    dims.iter()
        .try_fold(4u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "plan: buffer `{name}` of shape {dims:?} f32 overflows u64 bytes"
            ))
        })
}

/// [`llama_training_plan`] for LoRA of rank `rank` on the first `n_targets` of [`TARGETS`]
/// (see [`TrainShape::lora`]).
pub fn llama_training_buffers(
    cfg: &LlamaConfig,
    seq_len: usize,
    micro_batch: usize,
    rank: usize,
    n_targets: usize,
    ce_chunk: usize,
    checkpointing: bool,
) -> Result<PlanBuilder> {
    let shape = TrainShape::lora(
        cfg,
        seq_len,
        micro_batch,
        rank,
        n_targets,
        ce_chunk,
        checkpointing,
    )?;
    llama_training_plan(cfg, &shape)
}

/// The buffers of one training step of `cfg` with `shape` (see the module docs for each
/// buffer and the schedule). Errors name a zero size or an overflow.
pub fn llama_training_plan(cfg: &LlamaConfig, shape: &TrainShape) -> Result<PlanBuilder> {
    let (seq_len, micro_batch, ce_chunk, checkpointing) = (
        shape.seq_len,
        shape.micro_batch,
        shape.ce_chunk,
        shape.checkpointing,
    );
    if (shape.checkpoint_bf16 || shape.checkpoints_on_disk) && !checkpointing {
        return Err(Error::Invalid(
            "plan: bf16 or on-disk layer checkpoints need gradient checkpointing".into(),
        ));
    }
    if shape.accumulate && shape.fused_update {
        return Err(Error::Invalid(
            "plan: a fused per-layer update cannot accumulate gradients over micro-batches \
             (a layer's gradients are final only after the last one)"
                .into(),
        ));
    }
    for (what, v) in [
        ("seq_len", seq_len),
        ("micro_batch", micro_batch),
        ("ce_chunk", ce_chunk),
    ] {
        if v == 0 {
            return Err(Error::Invalid(format!("plan: {what} is 0")));
        }
    }
    let t = seq_len.checked_mul(micro_batch).ok_or_else(|| {
        Error::Invalid(format!("plan: {seq_len} × {micro_batch} tokens overflow"))
    })?;
    let s = LlamaSchedule::new(cfg.n_layer)?;
    let (d, q, kv, f, h) = (cfg.dim, cfg.q_dim(), cfg.kv_dim(), cfg.ffn, cfg.n_head);
    // (forward sub-step, backward sub-step) of each projection, in TARGETS order.
    let proj = [
        (Fwd::Qkv, Bwd::Qkv),
        (Fwd::Qkv, Bwd::Qkv),
        (Fwd::Qkv, Bwd::Qkv),
        (Fwd::OutProj, Bwd::OutProj),
        (Fwd::GateUp, Bwd::GateUp),
        (Fwd::GateUp, Bwd::GateUp),
        (Fwd::Down, Bwd::Down),
    ];
    let adapted = || {
        TARGETS
            .iter()
            .zip(&proj)
            .zip(&shape.adapters)
            .filter_map(|((name, p), a)| a.map(|a| (*name, *p, a)))
    };

    let mut b = PlanBuilder::new();
    let x_cat = if checkpointing {
        Category::Checkpoint
    } else {
        Category::Activation
    };
    let act = Category::Activation;

    if shape.checkpoints_on_disk && shape.checkpoint_bf16 {
        // bf16 layer inputs on their way to and from the spill file.
        add(
            &mut b,
            "ckpt.stage".into(),
            Category::Temporary,
            &[(t * d).div_ceil(2)],
            s.embed(),
            s.optimizer(),
        )?;
    }
    for l in 0..cfg.n_layer {
        // The layer input: written by the embedding or by the previous layer's OutProj
        // (x_{l+1} = x_l + o, then += y), read until this layer's AttnNorm backward.
        let first = if l == 0 {
            s.embed()
        } else {
            s.fwd(l - 1, Fwd::OutProj)
        };
        if shape.checkpoint_bf16 || shape.checkpoints_on_disk {
            // f32 through the layer's forward (its OutProj reads it last); kept packed in bf16
            // (two per f32 slot), or in the spill file, from when it is complete until the
            // recompute restores it into `xr`, which the recompute and the backward read.
            add(
                &mut b,
                format!("L{l}.x"),
                act,
                &[t, d],
                first,
                s.fwd(l, F::OutProj),
            )?;
            if !shape.checkpoints_on_disk {
                let packed = if l == 0 {
                    s.embed()
                } else {
                    s.fwd(l - 1, F::Down)
                };
                add(
                    &mut b,
                    format!("L{l}.xc"),
                    Category::Checkpoint,
                    &[(t * d).div_ceil(2)],
                    packed,
                    s.recompute(l, F::AttnNorm),
                )?;
            }
            add(
                &mut b,
                format!("L{l}.xr"),
                Category::Recompute,
                &[t, d],
                s.recompute(l, F::AttnNorm),
                s.bwd(l, B::AttnNorm),
            )?;
        } else {
            add(
                &mut b,
                format!("L{l}.x"),
                x_cat,
                &[t, d],
                first,
                s.bwd(l, Bwd::AttnNorm),
            )?;
        }

        // (name, shape, made at, last forward use, last backward use, recomputed)
        #[rustfmt::skip]
        let mut acts = vec![
            a_("xn",        act, &[t, d],  F::AttnNorm,  Some(F::Qkv),       Some(B::Qkv),       true),
            a_("rstd_attn", act, &[t],     F::AttnNorm,  None,               Some(B::AttnNorm),  true),
            a_("q",         act, &[t, q],  F::Qkv,       Some(F::Attention), Some(B::Attention), true),
            a_("k",         act, &[t, kv], F::Qkv,       Some(F::Attention), Some(B::Attention), true),
            a_("v",         act, &[t, kv], F::Qkv,       Some(F::Attention), Some(B::Attention), true),
            // Read by the attention backward and, before it, by dA of attn_output (OutProj).
            a_("att",       act, &[t, q],  F::Attention, Some(F::OutProj),   Some(B::Attention), true),
            a_("lse",       act, &[t, h],  F::Attention, None,               Some(B::Attention), true),
            a_("o",         act, &[t, d],  F::OutProj,   Some(F::OutProj),   None,               true),
            // The forward writes the residual straight into x_{l+1}; only the backward needs
            // a separate copy (ffn_norm's input).
            a_("mid",       act, &[t, d],  F::OutProj,   None,               Some(B::FfnNorm),   true),
            a_("fn",        act, &[t, d],  F::FfnNorm,   Some(F::GateUp),    Some(B::GateUp),    true),
            a_("rstd_ffn",  act, &[t],     F::FfnNorm,   None,               Some(B::FfnNorm),   true),
            a_("gate",      act, &[t, f],  F::GateUp,    Some(F::Swiglu),    Some(B::Swiglu),    true),
            a_("up",        act, &[t, f],  F::GateUp,    Some(F::Swiglu),    Some(B::Swiglu),    true),
            a_("sw",        act, &[t, f],  F::Swiglu,    Some(F::Down),      Some(B::Down),      true),
            // Recomputed too: the adapter on ffn_down re-saves its activations by adding into it.
            a_("y",         act, &[t, d],  F::Down,      Some(F::Down),      None,               true),
        ];
        for (name, (made, used), a) in adapted() {
            if a.saved_per_token == 0 {
                continue;
            }
            acts.push(a_(
                &format!("h.{name}"),
                Category::AdapterActivation,
                &[t, a.saved_per_token],
                made,
                Some(made),
                Some(used),
                true,
            ));
        }
        for ac in &acts {
            let dims = &ac.dims;
            if checkpointing {
                if let Some(last) = ac.fwd_last {
                    add(
                        &mut b,
                        format!("L{l}.{}", ac.name),
                        ac.category,
                        dims,
                        s.fwd(l, ac.made),
                        s.fwd(l, last),
                    )?;
                }
                if ac.recompute {
                    let cat = if ac.category == act {
                        Category::Recompute
                    } else {
                        ac.category
                    };
                    let first = s.recompute(l, ac.made);
                    let last = match (ac.bwd_last, ac.fwd_last) {
                        (Some(bw), _) => s.bwd(l, bw),
                        (None, Some(fw)) => s.recompute(l, fw),
                        (None, None) => first,
                    };
                    add(
                        &mut b,
                        format!("L{l}.rc.{}", ac.name),
                        cat,
                        dims,
                        first,
                        last,
                    )?;
                }
            } else if ac.fwd_last.is_some() || ac.bwd_last.is_some() {
                let first = s.fwd(l, ac.made);
                let last = match (ac.bwd_last, ac.fwd_last) {
                    (Some(bw), _) => s.bwd(l, bw),
                    (None, Some(fw)) => s.fwd(l, fw),
                    (None, None) => first,
                };
                add(
                    &mut b,
                    format!("L{l}.{}", ac.name),
                    ac.category,
                    dims,
                    first,
                    last,
                )?;
            }
        }

        // Backward scratch: (name, shape, first, last).
        let tmp = Category::Temporary;
        let scratch: [(&str, [usize; 2], Bwd, Bwd); 13] = [
            ("dsw", [t, f], Bwd::Down, Bwd::Swiglu),
            ("dgate", [t, f], Bwd::Swiglu, Bwd::GateUp),
            ("dup", [t, f], Bwd::Swiglu, Bwd::GateUp),
            ("dfn", [t, d], Bwd::GateUp, Bwd::FfnNorm),
            ("dfn_tmp", [t, d], Bwd::GateUp, Bwd::GateUp),
            ("dmid", [t, d], Bwd::FfnNorm, Bwd::FfnNorm),
            ("datt", [t, q], Bwd::OutProj, Bwd::Attention),
            ("dq", [t, q], Bwd::Attention, Bwd::Qkv),
            ("dk", [t, kv], Bwd::Attention, Bwd::Qkv),
            ("dv", [t, kv], Bwd::Attention, Bwd::Qkv),
            ("dxn", [t, d], Bwd::Qkv, Bwd::AttnNorm),
            ("dxn_tmp", [t, d], Bwd::Qkv, Bwd::Qkv),
            ("dx", [t, d], Bwd::AttnNorm, Bwd::AttnNorm),
        ];
        for (name, dims, first, last) in scratch {
            add(
                &mut b,
                format!("L{l}.{name}"),
                tmp,
                &dims,
                s.bwd(l, first),
                s.bwd(l, last),
            )?;
        }
        let (grad_first, grad_last) = if shape.accumulate {
            (s.embed(), s.optimizer())
        } else if shape.fused_update {
            // Written by this layer's backward, read by its update at the backward's end.
            (s.bwd(l, B::Down), s.bwd(l, B::AttnNorm))
        } else {
            (s.backward_start(), s.optimizer())
        };
        for (name, _, a) in adapted() {
            add(
                &mut b,
                format!("L{l}.grad.{name}"),
                Category::AdapterGrad,
                &[a.n_params],
                grad_first,
                grad_last,
            )?;
        }
    }

    if cfg.n_layer > 0 {
        let top = cfg.n_layer - 1;
        let first = s.fwd(top, Fwd::OutProj);
        add(
            &mut b,
            "final.x".into(),
            x_cat,
            &[t, d],
            first,
            s.loss(Loss::FinalNormBackward),
        )?;
    }
    let (n0, n1, n2) = (
        s.loss(Loss::FinalNorm),
        s.loss(Loss::CrossEntropy),
        s.loss(Loss::FinalNormBackward),
    );
    add(&mut b, "final.norm".into(), act, &[t, d], n0, n1)?;
    add(&mut b, "final.rstd".into(), act, &[t], n0, n2)?;
    add(
        &mut b,
        "ce.logits".into(),
        Category::CrossEntropy,
        &[ce_chunk, cfg.n_vocab],
        n1,
        n1,
    )?;
    add(
        &mut b,
        "ce.dh".into(),
        Category::CrossEntropy,
        &[t, d],
        n1,
        n2,
    )?;
    if shape.stream_head {
        add(
            &mut b,
            "ce.dh_part".into(),
            Category::CrossEntropy,
            &[ce_chunk, d],
            n1,
            n1,
        )?;
    }
    let bottom = if cfg.n_layer > 0 {
        s.bwd(0, Bwd::AttnNorm)
    } else {
        n2
    };
    add(
        &mut b,
        "dres".into(),
        Category::ResidualGrad,
        &[t, d],
        n2,
        bottom,
    )?;

    let max_scratch = adapted()
        .map(|(_, _, a)| a.scratch_per_token)
        .max()
        .unwrap_or(0);
    if max_scratch > 0 {
        add(
            &mut b,
            "adapter.scratch".into(),
            Category::Temporary,
            &[t, max_scratch],
            s.embed(),
            s.optimizer(),
        )?;
    }
    let max_params = adapted().map(|(_, _, a)| a.n_params).max().unwrap_or(0);
    if shape.accumulate && max_params > 0 && cfg.n_layer > 0 {
        add(
            &mut b,
            "grad.tmp".into(),
            Category::AdapterGrad,
            &[max_params],
            s.backward_start(),
            s.bwd(0, Bwd::AttnNorm),
        )?;
    }
    // AdamW m and v of the largest single adapter tensor.
    let largest = adapted()
        .map(|(_, _, a)| a.largest_param)
        .max()
        .unwrap_or(0);
    if shape.optimizer_staging && largest > 0 {
        let o = s.optimizer();
        for name in ["opt.m", "opt.v"] {
            add(
                &mut b,
                name.into(),
                Category::OptimizerStaging,
                &[largest],
                o,
                o,
            )?;
        }
    }
    Ok(b)
}

/// Adds an f32 buffer of shape `dims`.
fn add(
    b: &mut PlanBuilder,
    name: String,
    cat: Category,
    dims: &[usize],
    first: u32,
    last: u32,
) -> Result<()> {
    let bytes = f32_bytes(&name, dims)?;
    b.add_buffer(name, cat, bytes, first, last);
    Ok(())
}

fn a_(
    name: &str,
    category: Category,
    dims: &[usize],
    made: Fwd,
    fwd_last: Option<Fwd>,
    bwd_last: Option<Bwd>,
    recompute: bool,
) -> Act {
    Act {
        name: name.to_string(),
        category,
        dims: dims.to_vec(),
        made,
        fwd_last,
        bwd_last,
        recompute,
    }
}
