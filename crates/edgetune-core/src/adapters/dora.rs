//! DoRA, weight-decomposed LoRA (docs/METHODS.md#dora): a LoRA branch plus a magnitude vector
//! `m` `[out]` that rescales each output row of the adapted weight, with PEFT's detached norm.
//!
//! Shapes: `X` `[N, in]`, `Ŵ` `[out, in]` (frozen base), `A` `[r, in]`, `B` `[out, r]`,
//! `m` `[out]`, `s = alpha/r` (or `alpha/√r`), `X_d = D(X)`.
//!
//! ```text
//! n_o = ‖Ŵ_o + s·B_o·A‖₂                     [out]   (a constant in the backward: detached)
//! c   = m / n                                 [out]
//! Z0  = X_d·Ŵᵀ,  H = X_d·Aᵀ,  V = Z0 + s·H·Bᵀ  [N, out], [N, r], [N, out]
//! Y   = X·Ŵᵀ + (c − 1) ⊙ Z0 + c ⊙ s·H·Bᵀ   =  X·Ŵᵀ + c ⊙ V − Z0
//! dm_o = Σ_n G_no·V_no / n_o,   G̃ = G ⊙ c
//! dB = s·G̃ᵀ·H,  dH = s·G̃·B,  dA = dHᵀ·X_d,  dX += D'((G ⊙ (c−1))·Ŵ + dH·A)
//! ```
//!
//! The norms never materialise `Ŵ + sBA` (docs/METHODS.md#dora): with `q_o = ‖Ŵ_o‖²` (precomputed),
//! `P = Ŵ·Aᵀ` `[out, r]` (the base applied to the `r` rows of `A`) and `K = A·Aᵀ` `[r, r]`,
//! `n_o² = q_o + 2s·B_o·P_o + s²·B_o·K·B_oᵀ`. They are recomputed in the backward rather than
//! kept between calls, so the adapter holds no state tied to a pass.
//!
//! Needs `Ŵ` ([`BaseWeight`]): one extra base GEMM in every backward (`(G⊙(c−1))·Ŵ`), one
//! `r`-row base GEMM per pass for `P`, and, with dropout, one extra base GEMM in the forward for
//! `Z0` (without dropout `Z0 = X·Ŵᵀ` is the base output the trainer has already put in `y`:
//! the forward relies on `y` holding exactly `X·Ŵᵀ` on entry, as the trait's contract says).
//! Export is merge-only (`diag(m/n)` also scales `Ŵ`, docs/METHODS.md#dora).

use super::base::{BaseWeight, Dropout, Transient, dims as d, take};
use super::lora::{BranchDims, masked};
use super::pair::LoraPair;
use super::{Adapter, Export, Group, LoraConfig, ParamBuf, ParamInfo, Pass, Workspace};
use crate::backend::check_len;
use crate::backend::cpu::Real;
use crate::backend::cpu::gemm::gemm_ref;
use crate::{Error, Result};

/// `n²` is clamped to this before the square root (a zero row of `Ŵ + sBA`).
const NORM_SQ_MIN: f64 = 1e-24;

/// A DoRA branch on one linear `Ŵ` `[out, in]`.
#[derive(Clone, Debug)]
pub struct Dora {
    cfg: LoraConfig,
    pair: LoraPair,
    /// `[out]`.
    m: ParamBuf,
    base: BaseWeight,
    /// `‖Ŵ_o‖²` `[out]`.
    base_sq: Vec<f64>,
    drop: Dropout,
    /// `Pᵀ = A·Ŵᵀ` `[r, out]`, `K` `[r, r]`, `n` and `c` `[out]`.
    norm_buf: Transient,
}

impl Dora {
    /// DoRA on `base` (the dequantized or quantized copy of `Ŵ`), PEFT init from `seed`.
    pub fn new(cfg: &LoraConfig, base: BaseWeight, seed: u64) -> Result<Dora> {
        cfg.validate()?;
        let (out_f, in_f, r) = (base.rows(), base.cols(), cfg.rank);
        let pair = LoraPair::new("DoRA", in_f, out_f, r)?;
        let base_sq = base.row_norms_sq()?;
        let mut dora = Dora {
            cfg: cfg.clone(),
            pair,
            m: ParamBuf::zeros(out_f),
            base,
            base_sq,
            drop: Dropout::new(cfg.dropout, seed)?,
            norm_buf: Transient::new(r * out_f + r * r + 2 * out_f),
        };
        dora.init(seed);
        Ok(dora)
    }

    pub fn rank(&self) -> usize {
        self.cfg.rank
    }
    /// `A` `[r, in]`.
    pub fn a(&self) -> &[f32] {
        self.pair.a()
    }
    /// `B` `[out, r]`.
    pub fn b(&self) -> &[f32] {
        self.pair.b()
    }
    /// `m` `[out]`.
    pub fn magnitude(&self) -> &[f32] {
        &self.m
    }
    pub fn a_mut(&mut self) -> &mut [f32] {
        self.pair.a_mut()
    }
    pub fn b_mut(&mut self) -> &mut [f32] {
        self.pair.b_mut()
    }
    pub fn magnitude_mut(&mut self) -> &mut [f32] {
        &mut self.m
    }
    /// The frozen base copy.
    pub fn base(&self) -> &BaseWeight {
        &self.base
    }
    /// The dropout multipliers of `pass` (`None` when off), for references and tests.
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.pair.in_f())
    }

    /// `n = ‖Ŵ + s·B·A‖_row` and `c = m/n` into `buf` (the `norm_buf` layout); returns
    /// `(n, c)` as the two last `[out]` slices of `buf`.
    fn norms<'a>(&self, buf: &'a mut [f32]) -> Result<(&'a [f32], &'a [f32])> {
        let (r, outf, s) = (self.cfg.rank, self.pair.out_f(), self.scale() as f64);
        let mut rest = buf;
        let pt = take("dora", "norm", &mut rest, r * outf)?;
        let k = take("dora", "norm", &mut rest, r * r)?;
        let nrm = take("dora", "norm", &mut rest, outf)?;
        let c = take("dora", "norm", &mut rest, outf)?;
        // Pᵀ = A·Ŵᵀ: the base on the r rows of A. K = A·Aᵀ.
        self.base.xwt(self.pair.a(), r, pt)?;
        self.pair.gram_a(k)?;
        for o in 0..outf {
            let bo = &self.pair.b()[o * r..(o + 1) * r];
            let mut cross = 0.0f64;
            let mut quad = 0.0f64;
            for (j, &bj) in bo.iter().enumerate() {
                cross += bj as f64 * pt[j * outf + o] as f64;
                let kb: f64 = (0..r).map(|l| k[j * r + l] as f64 * bo[l] as f64).sum();
                quad += bj as f64 * kb;
            }
            let n2 = self.base_sq[o] + 2.0 * s * cross + s * s * quad;
            let n = n2.max(NORM_SQ_MIN).sqrt();
            nrm[o] = n as f32;
            c[o] = (self.m[o] as f64 / n) as f32;
        }
        Ok((nrm, c))
    }

    /// `‖Ŵ + s·B·A‖` per output row `[out]` (allocates; diagnostics and tests).
    pub fn weight_norms(&self) -> Result<Vec<f32>> {
        let mut buf = self.norm_buf.lock();
        Ok(self.norms(&mut buf)?.0.to_vec())
    }
}

impl Adapter for Dora {
    fn reads_base_output(&self) -> bool {
        true
    }

    fn method(&self) -> &'static str {
        "dora"
    }
    fn in_features(&self) -> usize {
        self.pair.in_f()
    }
    fn out_features(&self) -> usize {
        self.pair.out_f()
    }

    fn params(&self) -> Vec<ParamInfo> {
        let mut params = self.pair.params("lora_A", "lora_B");
        // 1-D, so LoRA+ puts it in the high-lr group (docs/METHODS.md#lora-plus).
        params.push(ParamInfo {
            name: "lora_magnitude_vector",
            shape: vec![self.pair.out_f()],
            group: Group::B,
        });
        params
    }

    /// Without building `params()` (a step calls it: no allocation).
    fn n_params(&self) -> usize {
        self.pair.numel() + self.m.len()
    }

    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.pair.param_buf(i, [&self.m])
    }

    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.pair.param_buf_mut(i, [&mut self.m])
    }

    /// Init (docs/METHODS.md#dora): `A` kaiming-uniform, `B = 0`, `m = ‖Ŵ‖_row` (so `c = 1`:
    /// exactly the base).
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        self.pair.init(seed);
        for (m, &q) in self.m.iter_mut().zip(&self.base_sq) {
            *m = q.sqrt() as f32;
        }
    }

    fn scale(&self) -> f32 {
        self.cfg.scale()
    }

    /// Saved: `H` (r) and `V` (out). Scratch: `G̃` (out), `dH` (r) and the input-gradient term
    /// (in) in the backward, plus `X_d` (in) with dropout; the forward's `X_d`, `Z0` fit inside.
    fn workspace(&self) -> Workspace {
        let (r, inf, outf) = (self.cfg.rank, self.pair.in_f(), self.pair.out_f());
        let drop = self.drop.input_len(inf);
        Workspace {
            saved_per_token: r + outf,
            scratch_per_token: outf + r + inf + drop,
        }
    }

    fn forward(
        &self,
        pass: Pass,
        x: &[f32],
        y: &mut [f32],
        saved: &mut [f32],
        scratch: &mut [f32],
    ) -> Result<()> {
        let (n, r, outf) = (pass.n, self.cfg.rank, self.pair.out_f());
        self.pair.check_forward("dora forward", n, x, y)?;
        let mut sv = saved;
        let h = take("dora forward", "saved", &mut sv, n * r)?;
        let v = take("dora forward", "saved", &mut sv, n * outf)?;
        let mut sc = scratch;
        let stream = self.drop.stream(pass);
        let input = self.drop.input(pass, x, "dora forward", &mut sc)?;
        let xd = input.xd();
        // H = X_d·Aᵀ [n, r], V = s·H·Bᵀ [n, out] (Z0 added below).
        self.pair.mul_at(xd, n, 0.0, h)?;
        self.pair.mul_bt(h, n, self.scale(), 0.0, v)?;
        let mut buf = self.norm_buf.lock();
        let (_, c) = self.norms(&mut buf)?;
        // Z0 = X_d·Ŵᵀ (the base output already in y when nothing is dropped); V += Z0 and
        // Y += c ⊙ V − Z0.
        match stream {
            Some(_) => {
                let z0 = take("dora forward", "scratch", &mut sc, n * outf)?;
                self.base.xwt(xd, n, z0)?;
                for (k, (yv, vv)) in y.iter_mut().zip(v.iter_mut()).enumerate() {
                    *vv += z0[k];
                    *yv += c[k % outf] * *vv - z0[k];
                }
            }
            None => {
                for (k, (yv, vv)) in y.iter_mut().zip(v.iter_mut()).enumerate() {
                    *vv += *yv;
                    *yv = c[k % outf] * *vv;
                }
            }
        }
        Ok(())
    }

    fn backward(
        &self,
        pass: Pass,
        x: &[f32],
        g: &[f32],
        saved: &[f32],
        scratch: &mut [f32],
        dx: &mut [f32],
        grads: &mut [f32],
    ) -> Result<()> {
        let (n, r, inf, outf) = (pass.n, self.cfg.rank, self.pair.in_f(), self.pair.out_f());
        let s = self.scale();
        self.pair.check_backward("dora backward", n, x, g, dx)?;
        check_len("dora backward", "grads", grads.len(), 1, self.n_params())?;
        let need = n * (r + outf);
        let saved = saved.get(..need).ok_or_else(|| {
            Error::Invalid(format!(
                "dora backward: saved has {} values, needs {need}",
                saved.len()
            ))
        })?;
        let (h, v) = saved.split_at(n * r);
        let (da, db, dm) = self.pair.split_grads(grads);
        let mut sc = scratch;
        let gt = take("dora backward", "scratch", &mut sc, n * outf)?;
        let dh = take("dora backward", "scratch", &mut sc, n * r)?;
        let term = take("dora backward", "scratch", &mut sc, n * inf)?;
        let stream = self.drop.stream(pass);
        let input = self.drop.input(pass, x, "dora backward", &mut sc)?;
        let mut buf = self.norm_buf.lock();
        let (nrm, c) = self.norms(&mut buf)?;
        for o in 0..outf {
            let acc: f64 = (0..n)
                .map(|t| g[t * outf + o] as f64 * v[t * outf + o] as f64)
                .sum();
            dm[o] = (acc / nrm[o] as f64) as f32;
        }
        for (k, (gv, &gg)) in gt.iter_mut().zip(g).enumerate() {
            *gv = gg * c[k % outf];
        }
        // dB = s·G̃ᵀ·H, dH = s·G̃·B, dA = dHᵀ·X_d.
        self.pair.grad_b(gt, h, n, s, 0.0, db)?;
        self.pair.mul_b(gt, n, s, 0.0, dh)?;
        self.pair.grad_a(dh, input.xd(), n, 0.0, da)?;
        // Input gradient: (G ⊙ (c − 1))·Ŵ + dH·A, through the dropout mask.
        for (k, (gv, &gg)) in gt.iter_mut().zip(g).enumerate() {
            *gv = gg * (c[k % outf] - 1.0);
        }
        self.base.dyw(gt, n, term)?;
        self.pair.mul_a(dh, n, 1.0, 1.0, term)?;
        match stream {
            Some(st) => self.drop.add_masked(st, term, dx),
            None => dx.iter_mut().zip(term.iter()).for_each(|(a, &b)| *a += b),
        }
        Ok(())
    }

    /// The merged change `diag(m/n)·(Ŵ + s·B·A) − Ŵ` `[out, in]` (docs/METHODS.md#dora).
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        let (inf, outf) = (self.pair.in_f(), self.pair.out_f());
        self.pair.ba(self.scale(), 0.0, dw)?;
        let mut buf = self.norm_buf.lock();
        let (_, c) = self.norms(&mut buf)?;
        let mut row = vec![0.0f32; inf];
        for o in 0..outf {
            let w = self.base.rows_f32(o, 1, &mut row)?;
            for (dv, &wv) in dw[o * inf..(o + 1) * inf].iter_mut().zip(w) {
                *dv = c[o] * (wv + *dv) - wv;
            }
        }
        Ok(())
    }

    /// Merge-only: `diag(m/n)` rescales the base too.
    fn export(&self) -> Export<'_> {
        Export::MergeOnly
    }

    /// The base copy, `‖Ŵ_o‖²` (f64) and the norm transients `r·out + r² + 2·out` (f32).
    fn extra_bytes(&self) -> usize {
        self.base.bytes() + 8 * self.pair.out_f() + self.norm_buf.bytes()
    }
}

/// Row norms of `Ŵ + s·B·A` formed densely (the reference for the norm identity,
/// docs/METHODS.md#dora).
fn dense_norms<R: Real>(dm: BranchDims, s: f64, w: &[R], a: &[R], b: &[R]) -> Vec<f64> {
    let mut ba = vec![R::from_f64(0.0); dm.out_f * dm.in_f];
    gemm_ref(
        d(dm.out_f, dm.in_f, dm.r, false, false),
        s,
        b,
        a,
        0.0,
        &mut ba,
    );
    (0..dm.out_f)
        .map(|o| {
            (0..dm.in_f)
                .map(|i| (w[o * dm.in_f + i].to_f64() + ba[o * dm.in_f + i].to_f64()).powi(2))
                .sum::<f64>()
                .max(NORM_SQ_MIN)
                .sqrt()
        })
        .collect()
}

/// The branch's pieces for the references: `(X_d, Z0, H, V, n)`.
#[allow(clippy::type_complexity)]
fn pieces<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    w: &[R],
    a: &[R],
    b: &[R],
    mask: Option<&[R]>,
) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>, Vec<f64>) {
    let BranchDims { n, in_f, out_f, r } = dm;
    let zero = R::from_f64(0.0);
    let xd = masked(x, mask);
    let mut z0 = vec![zero; n * out_f];
    gemm_ref(d(n, out_f, in_f, false, true), 1.0, &xd, w, 0.0, &mut z0);
    let mut h = vec![zero; n * r];
    gemm_ref(d(n, r, in_f, false, true), 1.0, &xd, a, 0.0, &mut h);
    let mut v = z0.clone();
    gemm_ref(d(n, out_f, r, false, true), s, &h, b, 1.0, &mut v);
    let nrm = dense_norms(dm, s, w, a, b);
    (xd, z0, h, v, nrm)
}

/// Scalar specification of the forward (docs/METHODS.md#dora): the branch's addition `(c−1)⊙Z0 +
/// c⊙s·H·Bᵀ` `[n, out]` to the base output, with the norms formed densely.
#[allow(clippy::too_many_arguments)]
pub fn forward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    w: &[R],
    a: &[R],
    b: &[R],
    m: &[R],
    mask: Option<&[R]>,
) -> Vec<R> {
    let (_, z0, _, v, nrm) = pieces(dm, s, x, w, a, b, mask);
    (0..dm.n * dm.out_f)
        .map(|k| {
            let c = m[k % dm.out_f].to_f64() / nrm[k % dm.out_f];
            R::from_f64(c * v[k].to_f64() - z0[k].to_f64())
        })
        .collect()
}

/// Scalar specification of the detached backward (docs/METHODS.md#dora): `(dX_branch [n, in], dA,
/// dB, dm)`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward_ref<R: Real>(
    dm: BranchDims,
    s: f64,
    x: &[R],
    w: &[R],
    a: &[R],
    b: &[R],
    m: &[R],
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>) {
    let BranchDims { n, in_f, out_f, r } = dm;
    let zero = R::from_f64(0.0);
    let (xd, _, h, v, nrm) = pieces(dm, s, x, w, a, b, mask);
    let c: Vec<f64> = (0..out_f).map(|o| m[o].to_f64() / nrm[o]).collect();
    let dmag: Vec<R> = (0..out_f)
        .map(|o| {
            let acc: f64 = (0..n)
                .map(|t| g[t * out_f + o].to_f64() * v[t * out_f + o].to_f64())
                .sum();
            R::from_f64(acc / nrm[o])
        })
        .collect();
    let scaled = |f: &dyn Fn(f64) -> f64| -> Vec<R> {
        (0..n * out_f)
            .map(|k| R::from_f64(g[k].to_f64() * f(c[k % out_f])))
            .collect()
    };
    let gt = scaled(&|c| c);
    let mut db = vec![zero; out_f * r];
    gemm_ref(d(out_f, r, n, true, false), s, &gt, &h, 0.0, &mut db);
    let mut dh = vec![zero; n * r];
    gemm_ref(d(n, r, out_f, false, false), s, &gt, b, 0.0, &mut dh);
    let mut da = vec![zero; r * in_f];
    gemm_ref(d(r, in_f, n, true, false), 1.0, &dh, &xd, 0.0, &mut da);
    let gc1 = scaled(&|c| c - 1.0);
    let mut term = vec![zero; n * in_f];
    gemm_ref(
        d(n, in_f, out_f, false, false),
        1.0,
        &gc1,
        w,
        0.0,
        &mut term,
    );
    gemm_ref(d(n, in_f, r, false, false), 1.0, &dh, a, 1.0, &mut term);
    if let Some(mk) = mask {
        for (t, &f) in term.iter_mut().zip(mk) {
            *t = R::from_f64(t.to_f64() * f.to_f64());
        }
    }
    (term, da, db, dmag)
}
