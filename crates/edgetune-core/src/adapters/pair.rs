//! The low-rank pair at the heart of every LoRA-family adapter ([`LoraPair`]): `A` `[r, in]`
//! and `B` `[out, r]` as trainable [`ParamBuf`]s, their shapes, PEFT's init, and the GEMMs of
//! the branch (docs/METHODS.md#the-lora-branch) and of `ΔW = s·B·A`.
//!
//! # Why one type
//!
//! LoRA, rsLoRA, DoRA, HiRA, AdaLoRA, DyLoRA, ResLoRA, IEC and MT-LoRA all train the same two
//! factors; they differ in what they put around them (a magnitude, a Hadamard product with `Ŵ`,
//! a diagonal `e`, a rank truncation, …). Each adapter embeds a pair (MT-LoRA one per task
//! besides the shared one; OLoRA/PiSSA a second, frozen one for its correction) and keeps its
//! own maths in its own file; the pair holds what is the same everywhere:
//! - the tensors and their [`ParamInfo`]s in [`super::Adapter::params`] order (`A`, then `B`,
//!   then the method's own tensors);
//! - PEFT's init, `A` kaiming-uniform(a=√5), `B = 0` (docs/METHODS.md#initialisation);
//! - the products with `A` or `B`, each written as one GEMM `out = α·(…) + β·out` so that every
//!   method calls them with its own left factor, scale and accumulation: `n` is the number of
//!   token rows the product covers (a pass, or one run of rows).
//!
//! Shape-only products (`dA`, `dB`) need no tensor of the pair but its shapes, so they are
//! here too: the GEMM dimensions of the branch are written once.

use std::ops::Range;

use rand::{SeedableRng, rngs::StdRng};

use super::base::{DroppedInput, dims, kaiming_uniform};
use super::{Export, Group, ParamBuf, ParamInfo};
use crate::backend::check_len;
use crate::backend::cpu::gemm::gemm;
use crate::{Error, Result};

/// The trainable `A` `[rank, in]` and `B` `[out, rank]` of one adapted linear `[out, in]`.
#[derive(Clone, Debug)]
pub struct LoraPair {
    in_f: usize,
    out_f: usize,
    rank: usize,
    /// `[rank, in]`.
    a: ParamBuf,
    /// `[out, rank]`.
    b: ParamBuf,
}

impl LoraPair {
    /// A zero pair for a linear of `in_f` inputs and `out_f` outputs; `method` names the
    /// adapter in the error for an empty linear.
    pub fn new(method: &str, in_f: usize, out_f: usize, rank: usize) -> Result<LoraPair> {
        if in_f == 0 || out_f == 0 {
            return Err(Error::Invalid(format!(
                "{method} on an empty linear [{out_f}, {in_f}]"
            )));
        }
        Ok(LoraPair {
            in_f,
            out_f,
            rank,
            a: ParamBuf::zeros(rank * in_f),
            b: ParamBuf::zeros(out_f * rank),
        })
    }

    /// A pair holding `a` `[rank, in]` and `b` `[out, rank]` (lengths checked).
    pub fn from_values(
        in_f: usize,
        out_f: usize,
        rank: usize,
        a: Vec<f32>,
        b: Vec<f32>,
    ) -> Result<LoraPair> {
        if a.len() != rank * in_f || b.len() != out_f * rank {
            return Err(Error::Invalid(format!(
                "LoRA pair of rank {rank} on [{out_f}, {in_f}]: A has {} values, B {}",
                a.len(),
                b.len()
            )));
        }
        Ok(LoraPair {
            in_f,
            out_f,
            rank,
            a: a.into(),
            b: b.into(),
        })
    }

    pub fn in_f(&self) -> usize {
        self.in_f
    }
    pub fn out_f(&self) -> usize {
        self.out_f
    }
    /// `A` `[rank, in]`.
    pub fn a(&self) -> &[f32] {
        &self.a
    }
    /// `B` `[out, rank]`.
    pub fn b(&self) -> &[f32] {
        &self.b
    }
    pub fn a_mut(&mut self) -> &mut [f32] {
        &mut self.a
    }
    pub fn b_mut(&mut self) -> &mut [f32] {
        &mut self.b
    }
    /// Values in `A` and `B` (the pair's share of `grads`).
    pub fn numel(&self) -> usize {
        self.a.len() + self.b.len()
    }

    /// Checks a forward's `x` `[n, in]` and `y` `[n, out]`; `what` names the call in the error.
    pub fn check_forward(&self, what: &str, n: usize, x: &[f32], y: &[f32]) -> Result<()> {
        check_len(what, "x", x.len(), n, self.in_f)?;
        check_len(what, "y", y.len(), n, self.out_f)
    }

    /// Checks a backward's `x`, `dx` `[n, in]` and `g` `[n, out]`.
    pub fn check_backward(
        &self,
        what: &str,
        n: usize,
        x: &[f32],
        g: &[f32],
        dx: &[f32],
    ) -> Result<()> {
        check_len(what, "x", x.len(), n, self.in_f)?;
        check_len(what, "dx", dx.len(), n, self.in_f)?;
        check_len(what, "g", g.len(), n, self.out_f)
    }

    /// The [`ParamInfo`]s of `A` (group A) and `B` (group B), named `a_name` / `b_name` (PEFT's
    /// `lora_A` / `lora_B` unless the method has its own names).
    pub fn params(&self, a_name: &'static str, b_name: &'static str) -> Vec<ParamInfo> {
        vec![
            ParamInfo {
                name: a_name,
                shape: vec![self.rank, self.in_f],
                group: Group::A,
            },
            ParamInfo {
                name: b_name,
                shape: vec![self.out_f, self.rank],
                group: Group::B,
            },
        ]
    }

    /// Tensor `i` of `[A, B, extra…]`: the [`super::Adapter::param_buf`] of a method whose own
    /// tensors `extra` follow the pair.
    pub fn param_buf<'a, const N: usize>(
        &'a self,
        i: usize,
        extra: [&'a ParamBuf; N],
    ) -> Option<&'a ParamBuf> {
        match i {
            0 => Some(&self.a),
            1 => Some(&self.b),
            _ => extra.get(i - 2).copied(),
        }
    }

    /// [`LoraPair::param_buf`], writable.
    pub fn param_buf_mut<'a, const N: usize>(
        &'a mut self,
        i: usize,
        extra: [&'a mut ParamBuf; N],
    ) -> Option<&'a mut ParamBuf> {
        match i {
            0 => Some(&mut self.a),
            1 => Some(&mut self.b),
            _ => extra.into_iter().nth(i - 2),
        }
    }

    /// PEFT init from `seed`: `A ~ U(−1/√in, 1/√in)` (kaiming-uniform a=√5), `B = 0`.
    pub fn init(&mut self, seed: u64) {
        self.init_from(&mut StdRng::seed_from_u64(seed));
    }

    /// [`LoraPair::init`] drawing `A` from `rng` (several pairs from one stream).
    pub fn init_from(&mut self, rng: &mut StdRng) {
        kaiming_uniform(rng, self.in_f, &mut self.a);
        self.b.fill(0.0);
    }

    /// The plain low-rank export `ΔW = scale·B·A` of the pair as it is.
    pub fn export(&self, scale: f32) -> Export<'_> {
        Export::LowRank {
            a: self.a().into(),
            b: self.b().into(),
            rank: self.rank,
            scale,
        }
    }

    /// `out = X·Aᵀ + β·out`: `x` `[n, in]`, `out` `[n, r]` (the branch's `H = X_d·Aᵀ`).
    pub fn mul_at(&self, x: &[f32], n: usize, beta: f32, out: &mut [f32]) -> Result<()> {
        let (r, inf) = (self.rank, self.in_f);
        gemm(dims(n, r, inf, false, true), 1.0, x, &self.a, beta, out)
    }

    /// `out = s·H·Bᵀ + β·out`: `h` `[n, r]`, `out` `[n, out]` (the branch's `Y += s·H·Bᵀ`).
    pub fn mul_bt(&self, h: &[f32], n: usize, s: f32, beta: f32, out: &mut [f32]) -> Result<()> {
        let (r, outf) = (self.rank, self.out_f);
        gemm(dims(n, outf, r, false, true), s, h, &self.b, beta, out)
    }

    /// `out = s·G·B + β·out`: `g` `[n, out]`, `out` `[n, r]` (the backward's `dH = s·G·B`).
    pub fn mul_b(&self, g: &[f32], n: usize, s: f32, beta: f32, out: &mut [f32]) -> Result<()> {
        let (r, outf) = (self.rank, self.out_f);
        gemm(dims(n, r, outf, false, false), s, g, &self.b, beta, out)
    }

    /// `out = s·dH·A + β·out`: `dh` `[n, r]`, `out` `[n, in]` (the input gradient `dH·A`).
    pub fn mul_a(&self, dh: &[f32], n: usize, s: f32, beta: f32, out: &mut [f32]) -> Result<()> {
        let (r, inf) = (self.rank, self.in_f);
        gemm(dims(n, inf, r, false, false), s, dh, &self.a, beta, out)
    }

    /// `out = s·B[rows, :]·A + β·out` `[rows.len(), in]`: some output rows of `s·B·A`.
    pub fn ba_rows(&self, rows: Range<usize>, s: f32, beta: f32, out: &mut [f32]) -> Result<()> {
        let (r, inf) = (self.rank, self.in_f);
        let b = &self.b[rows.start * r..rows.end * r];
        gemm(
            dims(rows.len(), inf, r, false, false),
            s,
            b,
            &self.a,
            beta,
            out,
        )
    }

    /// `ΔW = s·B·A + β·ΔW` `[out, in]`.
    pub fn ba(&self, s: f32, beta: f32, dw: &mut [f32]) -> Result<()> {
        self.ba_rows(0..self.out_f, s, beta, dw)
    }

    /// `out = A·Aᵀ` `[r, r]`.
    pub fn gram_a(&self, out: &mut [f32]) -> Result<()> {
        let (r, inf) = (self.rank, self.in_f);
        gemm(
            dims(r, r, inf, false, true),
            1.0,
            &self.a,
            &self.a,
            0.0,
            out,
        )
    }

    /// `dB = s·Gᵀ·H + β·dB`: `g` `[n, out]`, `h` `[n, r]`, `db` `[out, r]`.
    pub fn grad_b(
        &self,
        g: &[f32],
        h: &[f32],
        n: usize,
        s: f32,
        beta: f32,
        db: &mut [f32],
    ) -> Result<()> {
        let (r, outf) = (self.rank, self.out_f);
        gemm(dims(outf, r, n, true, false), s, g, h, beta, db)
    }

    /// `dA = dHᵀ·X_d + β·dA`: `dh` `[n, r]`, `xd` `[n, in]`, `da` `[r, in]`.
    pub fn grad_a(
        &self,
        dh: &[f32],
        xd: &[f32],
        n: usize,
        beta: f32,
        da: &mut [f32],
    ) -> Result<()> {
        let (r, inf) = (self.rank, self.in_f);
        gemm(dims(r, inf, n, true, false), 1.0, dh, xd, beta, da)
    }

    /// The tail of the branch backward from `dH` `[n, r]`: `dA = dHᵀ·X_d` (overwritten) and
    /// `dX += D'(dH·A)` (the dropped input's buffer, no longer needed, takes `dH·A`).
    pub fn grad_a_and_x(
        &self,
        dh: &[f32],
        n: usize,
        input: DroppedInput<'_>,
        da: &mut [f32],
        dx: &mut [f32],
    ) -> Result<()> {
        self.grad_a(dh, input.xd(), n, 0.0, da)?;
        input.add_grad(dx, |out, beta| self.mul_a(dh, n, 1.0, beta, out))
    }

    /// `grads` `[A, B, rest]` split as `(dA [r, in], dB [out, r], rest)` (the caller has checked
    /// its length).
    pub fn split_grads<'g>(
        &self,
        grads: &'g mut [f32],
    ) -> (&'g mut [f32], &'g mut [f32], &'g mut [f32]) {
        let (da, rest) = grads.split_at_mut(self.a.len());
        let (db, rest) = rest.split_at_mut(self.b.len());
        (da, db, rest)
    }
}

/// `ΔW = scale·B·A` `[out, in]` of a low-rank export: the merge of every method whose export is
/// exact (folded, truncated or concatenated factors included).
pub fn export_delta(export: &Export<'_>, out_f: usize, in_f: usize, dw: &mut [f32]) -> Result<()> {
    match export {
        Export::LowRank { a, b, rank, scale } => gemm(
            dims(out_f, in_f, *rank, false, false),
            *scale,
            b,
            a,
            0.0,
            dw,
        ),
        Export::MergeOnly => Err(Error::Invalid(
            "ΔW from a merge-only export: the method forms it itself".into(),
        )),
    }
}
