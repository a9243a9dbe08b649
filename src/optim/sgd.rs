//! SGD with optional momentum, as PyTorch's `torch.optim.SGD` (`_single_tensor_sgd`).
//!
//! For a tensor with gradient `g`, learning rate `lr` (times the group's `lr_scale`), L2 weight
//! decay `wd`, momentum `μ`, dampening `τ`:
//!
//! ```text
//! d ← g + wd·p                                  (if wd ≠ 0: L2, added to the gradient)
//! if μ ≠ 0:
//!     buf ← d                 on the tensor's first update
//!     buf ← μ·buf + (1 − τ)·d afterwards
//!     d ← d + μ·buf  (nesterov)   or   d ← buf
//! p ← p − lr·d
//! ```

use super::{ParamGroup, ParamId, ParamSpec, check_list, check_tensor, validate_specs};
use crate::{Error, Result};

/// SGD hyperparameters shared by all groups (`momentum = 0` is plain SGD).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct SgdConfig {
    pub momentum: f64,
    pub dampening: f64,
    pub nesterov: bool,
}

/// SGD over a fixed list of tensors; momentum buffers are allocated at construction.
pub struct Sgd {
    cfg: SgdConfig,
    groups: Vec<ParamGroup>,
    specs: Vec<ParamSpec>,
    /// One buffer per tensor (empty when `momentum == 0`).
    bufs: Vec<Vec<f32>>,
    /// Whether the tensor's buffer holds a value yet (PyTorch: `momentum_buffer is None`).
    started: Vec<bool>,
    t: u64,
}

impl Sgd {
    pub fn new(cfg: SgdConfig, groups: &[ParamGroup], specs: &[ParamSpec]) -> Result<Self> {
        validate_specs(groups, specs)?;
        if cfg.momentum < 0.0 || (cfg.nesterov && (cfg.momentum <= 0.0 || cfg.dampening != 0.0)) {
            return Err(Error::Invalid(format!(
                "SGD: momentum must be >= 0, and nesterov needs momentum > 0 and zero dampening (got μ = {}, τ = {})",
                cfg.momentum, cfg.dampening
            )));
        }
        let bufs = specs
            .iter()
            .map(|s| {
                if cfg.momentum != 0.0 {
                    vec![0.0; s.numel]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Ok(Self {
            cfg,
            groups: groups.to_vec(),
            specs: specs.to_vec(),
            bufs,
            started: vec![false; specs.len()],
            t: 0,
        })
    }

    /// Completed steps.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// Starts the next step; returns its 1-based number.
    pub fn begin_step(&mut self) -> u64 {
        self.t += 1;
        self.t
    }

    /// Updates tensor `id` in place.
    pub fn update(&mut self, id: ParamId, param: &mut [f32], grad: &[f32], lr: f32) -> Result<()> {
        let spec = check_tensor(&self.specs, id, param.len(), grad.len())?;
        let group = self.groups[spec.group];
        let lr = (lr as f64 * group.lr_scale as f64) as f32;
        let wd = group.weight_decay;
        let mu = self.cfg.momentum as f32;
        let keep = (1.0 - self.cfg.dampening) as f32;
        if self.cfg.momentum == 0.0 {
            for (p, &g) in param.iter_mut().zip(grad) {
                let d = if wd != 0.0 { g + wd * *p } else { g };
                *p += -lr * d;
            }
            return Ok(());
        }
        let first = !self.started[id];
        self.started[id] = true;
        let nesterov = self.cfg.nesterov;
        for ((p, &g), b) in param.iter_mut().zip(grad).zip(self.bufs[id].iter_mut()) {
            let mut d = if wd != 0.0 { g + wd * *p } else { g };
            *b = if first { d } else { *b * mu + keep * d };
            d = if nesterov { d + mu * *b } else { *b };
            *p += -lr * d;
        }
        Ok(())
    }

    /// One full step over all tensors.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) -> Result<()> {
        check_list(self.specs.len(), params.len(), grads.len())?;
        for (id, (p, g)) in params.iter().zip(grads).enumerate() {
            check_tensor(&self.specs, id, p.len(), g.len())?;
        }
        self.begin_step();
        for (id, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            self.update(id, p, g, lr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch SGD on one scalar, f64, from the documented algorithm.
    fn torch_sgd_f64(
        p0: f64,
        grads: &[f64],
        lr: f64,
        wd: f64,
        mu: f64,
        nesterov: bool,
    ) -> Vec<f64> {
        let (mut p, mut buf) = (p0, None::<f64>);
        let mut out = Vec::new();
        for &g in grads {
            let mut d = g + wd * p;
            if mu != 0.0 {
                let b = match buf {
                    None => d,
                    Some(b) => mu * b + d,
                };
                buf = Some(b);
                d = if nesterov { d + mu * b } else { b };
            }
            p -= lr * d;
            out.push(p);
        }
        out
    }

    #[test]
    fn scalar_steps_match_the_published_rule() {
        let grads = [0.5, -0.3, 0.2, 1.0, -2.0];
        for (mu, nesterov, wd) in [
            (0.0, false, 0.0),
            (0.0, false, 0.1),
            (0.9, false, 0.0),
            (0.9, true, 0.01),
        ] {
            let expected = torch_sgd_f64(1.5, &grads, 0.1, wd, mu, nesterov);
            let cfg = SgdConfig {
                momentum: mu,
                dampening: 0.0,
                nesterov,
            };
            let mut opt = Sgd::new(
                cfg,
                &[ParamGroup::new(wd as f32)],
                &[ParamSpec { numel: 1, group: 0 }],
            )
            .unwrap();
            let mut p = [1.5f32];
            for (g, e) in grads.iter().zip(&expected) {
                opt.step(&mut [&mut p], &[&[*g as f32]], 0.1).unwrap();
                assert!(
                    ((p[0] as f64) - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "μ={mu} nesterov={nesterov}: {} vs {e}",
                    p[0]
                );
            }
        }
    }

    #[test]
    fn nesterov_without_momentum_is_rejected() {
        let cfg = SgdConfig {
            momentum: 0.0,
            dampening: 0.0,
            nesterov: true,
        };
        assert!(Sgd::new(cfg, &[ParamGroup::new(0.0)], &[]).is_err());
    }
}
