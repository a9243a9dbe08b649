//! IEC, IR-QLoRA's information elastic connection (docs/METHODS.md#ir-qlora-iec): a LoRA branch
//! with two trainable scalars per linear and parameter-free pooled shortcuts around `A` and `B`.
//! Requires `r | in` and `r | out`; `g_in = in/r`, `g_out = out/r`.
//!
//! ```text
//! Z  = X_d·Aᵀ + β_A·Pool(X)         [N, r]   Pool(x)_j = mean(x[j·g_in .. (j+1)·g_in])
//! U  = Z·Bᵀ + β_B·Rep(Z)            [N, out] Rep(z)[j·g_out + t] = z_j
//! ΔY = s·U
//! ```
//! The shortcut pools the un-dropped `X` (dropout sits inside `lora_A` in the code).
//! Backward with `dU = s·G`, `RepT` the sum over each `g_out` group:
//! `dB = dUᵀ·Z`, `dβ_B = Σ Z ⊙ RepT(dU)`, `dZ = dU·B + β_B·RepT(dU)`, `dA = dZᵀ·X_d`,
//! `dβ_A = Σ dZ ⊙ Pool(X)`, `dX += D'(dZ·A) + β_A·PoolT(dZ)` (`PoolT(z)[j·g_in+t] = z_j/g_in`).
//! Init: PEFT's LoRA (kaiming `A`, zero `B`) and `β_A = β_B = 0`, so `ΔY = 0`.
//! Merge / export (exact without dropout): `ΔW = s·(B + β_B·E_out)·(A + (β_A/g_in)·E_inᵀ)`, a
//! plain rank-`r` LoRA.

use super::base::{Dropout, take};
use super::pair::{LoraPair, export_delta};
use super::{Adapter, Export, Group, LoraConfig, ParamBuf, ParamInfo, Pass, Workspace};
use crate::backend::check_len;
use crate::{Error, Result};

/// An IEC branch on one linear `[out, in]`.
#[derive(Clone, Debug)]
pub struct Iec {
    cfg: LoraConfig,
    pair: LoraPair,
    /// `[β_A]`, `[β_B]` (1-element tensors, so the optimizer sees them as parameters).
    beta_a: ParamBuf,
    beta_b: ParamBuf,
    drop: Dropout,
}

impl Iec {
    /// An IEC branch with `cfg`'s rank, alpha (rsLoRA allowed) and dropout; `rank` must divide
    /// both `in_f` and `out_f`.
    pub fn new(in_f: usize, out_f: usize, cfg: &LoraConfig, seed: u64) -> Result<Iec> {
        cfg.validate()?;
        let r = cfg.rank;
        if in_f == 0 || out_f == 0 || !in_f.is_multiple_of(r) || !out_f.is_multiple_of(r) {
            return Err(Error::Invalid(format!(
                "IEC on a linear [{out_f}, {in_f}]: rank {r} must divide both in ({in_f}) and \
                 out ({out_f}) features"
            )));
        }
        let mut iec = Iec {
            cfg: cfg.clone(),
            pair: LoraPair::new("IEC", in_f, out_f, r)?,
            beta_a: ParamBuf::zeros(1),
            beta_b: ParamBuf::zeros(1),
            drop: Dropout::new(cfg.dropout, seed)?,
        };
        iec.init(seed);
        Ok(iec)
    }

    pub fn rank(&self) -> usize {
        self.cfg.rank
    }
    /// `(β_A, β_B)`.
    pub fn betas(&self) -> (f32, f32) {
        (self.beta_a[0], self.beta_b[0])
    }
    pub fn set_betas(&mut self, beta_a: f32, beta_b: f32) {
        self.beta_a[0] = beta_a;
        self.beta_b[0] = beta_b;
    }
    /// The dropout multipliers of `pass` (`None` when off), for references and tests.
    pub fn dropout_mask(&self, pass: Pass) -> Option<Vec<f32>> {
        self.drop.mask(pass, self.pair.in_f())
    }

    /// The folded plain-LoRA factors `(A', B')`: `A' = A + (β_A/g_in)·E_inᵀ` `[r, in]`,
    /// `B' = B + β_B·E_out` `[out, r]`.
    pub fn folded(&self) -> (Vec<f32>, Vec<f32>) {
        let (r, inf, outf) = (self.cfg.rank, self.pair.in_f(), self.pair.out_f());
        let (g_in, g_out) = (inf / r, outf / r);
        let (ba, bb) = self.betas();
        let mut a = self.pair.a().to_vec();
        for j in 0..r {
            for t in 0..g_in {
                a[j * inf + j * g_in + t] += ba / g_in as f32;
            }
        }
        let mut b = self.pair.b().to_vec();
        for j in 0..r {
            for t in 0..g_out {
                b[(j * g_out + t) * r + j] += bb;
            }
        }
        (a, b)
    }

    /// `pool[n, r] = Pool(x)`.
    fn pool(&self, x: &[f32], n: usize, pool: &mut [f32]) {
        let (r, inf) = (self.cfg.rank, self.pair.in_f());
        let g_in = inf / r;
        let inv = 1.0 / g_in as f32;
        for t in 0..n {
            let row = &x[t * inf..(t + 1) * inf];
            for j in 0..r {
                pool[t * r + j] = row[j * g_in..(j + 1) * g_in].iter().sum::<f32>() * inv;
            }
        }
    }
}

impl Adapter for Iec {
    fn method(&self) -> &'static str {
        "iec"
    }
    fn in_features(&self) -> usize {
        self.pair.in_f()
    }
    fn out_features(&self) -> usize {
        self.pair.out_f()
    }

    fn params(&self) -> Vec<ParamInfo> {
        let mut params = self.pair.params("lora_A", "lora_B");
        params.extend([
            ParamInfo {
                name: "lora_A_scale",
                shape: vec![1],
                group: Group::B,
            },
            ParamInfo {
                name: "lora_B_scale",
                shape: vec![1],
                group: Group::B,
            },
        ]);
        params
    }

    fn param_buf(&self, i: usize) -> Option<&ParamBuf> {
        self.pair.param_buf(i, [&self.beta_a, &self.beta_b])
    }

    fn param_buf_mut(&mut self, i: usize) -> Option<&mut ParamBuf> {
        self.pair
            .param_buf_mut(i, [&mut self.beta_a, &mut self.beta_b])
    }

    /// PEFT LoRA init plus `β_A = β_B = 0` (docs/METHODS.md#ir-qlora-iec).
    fn init(&mut self, seed: u64) {
        self.drop.seed = seed;
        self.pair.init(seed);
        self.set_betas(0.0, 0.0);
    }

    fn scale(&self) -> f32 {
        self.cfg.scale()
    }

    /// Saved: `Z` (r per token). Scratch: the forward's `Pool(X)` (r) and `X_d` (in, with
    /// dropout); the backward's `RepT(dU)`, `dZ`, `Pool(X)` (3r) and `X_d` / `dZ·A` (in, with
    /// dropout).
    fn workspace(&self) -> Workspace {
        let drop = self.drop.input_len(self.pair.in_f());
        Workspace {
            saved_per_token: self.cfg.rank,
            scratch_per_token: 3 * self.cfg.rank + drop,
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
        self.pair.check_forward("iec forward", n, x, y)?;
        let mut saved = saved;
        let z = take("iec", "saved", &mut saved, n * r)?;
        let mut scratch = scratch;
        let pool = take("iec", "scratch", &mut scratch, n * r)?;
        self.pool(x, n, pool);
        // Z = X_d·Aᵀ + β_A·Pool(X).
        z.copy_from_slice(pool);
        let input = self.drop.input(pass, x, "iec", &mut scratch)?;
        self.pair.mul_at(input.xd(), n, self.beta_a[0], z)?;
        // Y += s·(Z·Bᵀ + β_B·Rep(Z)).
        let s = self.scale();
        self.pair.mul_bt(z, n, s, 1.0, y)?;
        let (g_out, sb) = (outf / r, s * self.beta_b[0]);
        if sb != 0.0 {
            for t in 0..n {
                for j in 0..r {
                    let v = sb * z[t * r + j];
                    y[t * outf + j * g_out..t * outf + (j + 1) * g_out]
                        .iter_mut()
                        .for_each(|o| *o += v);
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
        let (s, g_in, g_out) = (self.scale(), inf / r, outf / r);
        self.pair.check_backward("iec backward", n, x, g, dx)?;
        let np = self.pair.numel() + 2;
        check_len("iec backward", "grads", grads.len(), 1, np)?;
        let z = saved
            .get(..n * r)
            .ok_or_else(|| Error::Invalid(format!("iec: saved shorter than {} values", n * r)))?;
        let (da, db, betas) = self.pair.split_grads(grads);
        let mut scratch = scratch;
        let rt = take("iec", "scratch", &mut scratch, n * r)?;
        let dz = take("iec", "scratch", &mut scratch, n * r)?;
        let pool = take("iec", "scratch", &mut scratch, n * r)?;
        // RepT(dU) = s·(sum of each g_out group of G).
        for t in 0..n {
            for j in 0..r {
                let grp = &g[t * outf + j * g_out..t * outf + (j + 1) * g_out];
                rt[t * r + j] = s * grp.iter().sum::<f32>();
            }
        }
        // dB = s·Gᵀ·Z; dβ_B = Σ Z ⊙ RepT(dU).
        self.pair.grad_b(g, z, n, s, 0.0, db)?;
        betas[1] = z.iter().zip(rt.iter()).map(|(&a, &b)| a * b).sum();
        // dZ = s·G·B + β_B·RepT(dU).
        dz.copy_from_slice(rt);
        self.pair.mul_b(g, n, s, self.beta_b[0], dz)?;
        // dβ_A = Σ dZ ⊙ Pool(X).
        self.pool(x, n, pool);
        betas[0] = dz.iter().zip(pool.iter()).map(|(&a, &b)| a * b).sum();
        // dA = dZᵀ·X_d, dX += D'(dZ·A).
        let input = self.drop.input(pass, x, "iec", &mut scratch)?;
        self.pair.grad_a_and_x(dz, n, input, da, dx)?;
        // dX += β_A·PoolT(dZ).
        let c = self.beta_a[0] / g_in as f32;
        if c != 0.0 {
            for t in 0..n {
                for j in 0..r {
                    let v = c * dz[t * r + j];
                    dx[t * inf + j * g_in..t * inf + (j + 1) * g_in]
                        .iter_mut()
                        .for_each(|o| *o += v);
                }
            }
        }
        Ok(())
    }

    /// `ΔW = s·B'·A'` with the folded factors (exact without dropout).
    fn delta_weight(&self, dw: &mut [f32]) -> Result<()> {
        export_delta(&self.export(), self.pair.out_f(), self.pair.in_f(), dw)
    }

    /// A plain rank-`r` LoRA with the folded factors.
    fn export(&self) -> Export<'_> {
        let (a, b) = self.folded();
        Export::LowRank {
            a: a.into(),
            b: b.into(),
            rank: self.cfg.rank,
            scale: self.scale(),
        }
    }
}

/// Scalar specification of the forward, generic over f32/f64 (f64 sums): returns
/// `(ΔY [n, out], Z [n, r])`. `mask` holds the dropout multipliers `[n, in]` or is `None`.
#[allow(clippy::too_many_arguments)]
pub fn forward_ref<R: crate::backend::cpu::Real>(
    dm: super::lora::BranchDims,
    s: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    beta_a: f64,
    beta_b: f64,
    mask: Option<&[R]>,
) -> (Vec<R>, Vec<R>) {
    let super::lora::BranchDims { n, in_f, out_f, r } = dm;
    let (g_in, g_out) = (in_f / r, out_f / r);
    let xv = |t: usize, i: usize| x[t * in_f + i].to_f64();
    let mv = |t: usize, i: usize| mask.map_or(1.0, |m| m[t * in_f + i].to_f64());
    let mut z = vec![0.0f64; n * r];
    for t in 0..n {
        for j in 0..r {
            let lin: f64 = (0..in_f)
                .map(|i| a[j * in_f + i].to_f64() * xv(t, i) * mv(t, i))
                .sum();
            let pool: f64 = (0..g_in).map(|k| xv(t, j * g_in + k)).sum::<f64>() / g_in as f64;
            z[t * r + j] = lin + beta_a * pool;
        }
    }
    let mut y = vec![R::from_f64(0.0); n * out_f];
    for t in 0..n {
        for o in 0..out_f {
            let u: f64 = (0..r)
                .map(|j| b[o * r + j].to_f64() * z[t * r + j])
                .sum::<f64>()
                + beta_b * z[t * r + o / g_out];
            y[t * out_f + o] = R::from_f64(s * u);
        }
    }
    (y, z.into_iter().map(R::from_f64).collect())
}

/// Scalar specification of the backward (docs/METHODS.md#ir-qlora-iec): returns `(dX_branch [n,
/// in], dA [r, in], dB [out, r], dβ_A, dβ_B)` for upstream `g` `[n, out]`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
pub fn backward_ref<R: crate::backend::cpu::Real>(
    dm: super::lora::BranchDims,
    s: f64,
    x: &[R],
    a: &[R],
    b: &[R],
    beta_a: f64,
    beta_b: f64,
    mask: Option<&[R]>,
    g: &[R],
) -> (Vec<R>, Vec<R>, Vec<R>, f64, f64) {
    let super::lora::BranchDims { n, in_f, out_f, r } = dm;
    let (g_in, g_out) = (in_f / r, out_f / r);
    let (_, z) = forward_ref(dm, s, x, a, b, beta_a, beta_b, mask);
    let z: Vec<f64> = z.iter().map(|v| v.to_f64()).collect();
    let mv = |t: usize, i: usize| mask.map_or(1.0, |m| m[t * in_f + i].to_f64());
    let du = |t: usize, o: usize| s * g[t * out_f + o].to_f64();
    let mut db = vec![0.0; out_f * r];
    let mut dz = vec![0.0; n * r];
    let mut dbeta_b = 0.0;
    for t in 0..n {
        for j in 0..r {
            let rt: f64 = (0..g_out).map(|k| du(t, j * g_out + k)).sum();
            dbeta_b += z[t * r + j] * rt;
            dz[t * r + j] = (0..out_f)
                .map(|o| du(t, o) * b[o * r + j].to_f64())
                .sum::<f64>()
                + beta_b * rt;
        }
        for o in 0..out_f {
            for j in 0..r {
                db[o * r + j] += du(t, o) * z[t * r + j];
            }
        }
    }
    let mut da = vec![0.0; r * in_f];
    let mut dx = vec![0.0; n * in_f];
    let mut dbeta_a = 0.0;
    for t in 0..n {
        for j in 0..r {
            let pool: f64 = (0..g_in)
                .map(|k| x[t * in_f + j * g_in + k].to_f64())
                .sum::<f64>()
                / g_in as f64;
            dbeta_a += dz[t * r + j] * pool;
            for i in 0..in_f {
                let xd = x[t * in_f + i].to_f64() * mv(t, i);
                da[j * in_f + i] += dz[t * r + j] * xd;
                dx[t * in_f + i] += dz[t * r + j] * a[j * in_f + i].to_f64() * mv(t, i);
            }
            for k in 0..g_in {
                dx[t * in_f + j * g_in + k] += beta_a * dz[t * r + j] / g_in as f64;
            }
        }
    }
    let cv = |v: Vec<f64>| v.into_iter().map(R::from_f64).collect::<Vec<R>>();
    (cv(dx), cv(da), cv(db), dbeta_a, dbeta_b)
}
