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

    /// Writes the step count and the momentum buffers (for a checkpoint). Format
    /// (little-endian): `"ETSGD\0\0\0"`, u64 step, u64 tensor count, per tensor u64 length and
    /// u8 started flag, then every buffer's f32 values.
    pub fn save(&self, w: &mut impl std::io::Write) -> Result<()> {
        let io = |e| Error::io("<SGD state>", e);
        w.write_all(&self.header()).map_err(io)?;
        for b in &self.bufs {
            w.write_all(bytemuck::cast_slice(b)).map_err(io)?;
        }
        Ok(())
    }

    /// Reads what [`Self::save`] wrote into an optimizer built with the same tensor list.
    pub fn load(&mut self, r: &mut impl std::io::Read) -> Result<()> {
        let io = |e| Error::io("<SGD state>", e);
        let expected = self.header();
        let mut header = vec![0u8; expected.len()];
        r.read_exact(&mut header).map_err(io)?;
        // Only the step count (bytes 8..16) and the started flags may differ.
        let n = self.bufs.len();
        let mut masked = header.clone();
        masked[8..16].copy_from_slice(&expected[8..16]);
        for i in 0..n {
            let at = 24 + 9 * i + 8;
            masked[at] = expected[at];
        }
        if masked != expected {
            return Err(Error::Invalid(
                "SGD checkpoint: header does not match this optimizer (different tensors or momentum)"
                    .into(),
            ));
        }
        for (i, b) in self.bufs.iter_mut().enumerate() {
            r.read_exact(bytemuck::cast_slice_mut(b)).map_err(io)?;
            self.started[i] = header[24 + 9 * i + 8] != 0;
        }
        self.t = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        Ok(())
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(24 + 9 * self.bufs.len());
        h.extend_from_slice(b"ETSGD\0\0\0");
        h.extend_from_slice(&self.t.to_le_bytes());
        h.extend_from_slice(&(self.bufs.len() as u64).to_le_bytes());
        for (b, &started) in self.bufs.iter().zip(&self.started) {
            h.extend_from_slice(&(b.len() as u64).to_le_bytes());
            h.push(started as u8);
        }
        h
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
    #[test]
    fn save_load_round_trips_momentum_and_step() {
        let specs = [
            ParamSpec { numel: 3, group: 0 },
            ParamSpec { numel: 2, group: 0 },
        ];
        let cfg = SgdConfig {
            momentum: 0.9,
            ..SgdConfig::default()
        };
        let groups = [ParamGroup::new(0.0)];
        let mut a = Sgd::new(cfg, &groups, &specs).unwrap();
        let (mut p0, mut p1) = (vec![1.0f32, 2.0, 3.0], vec![4.0f32, 5.0]);
        a.begin_step();
        a.update(0, &mut p0, &[0.1, 0.2, 0.3], 0.1).unwrap();
        let mut bytes = Vec::new();
        a.save(&mut bytes).unwrap();
        let mut b = Sgd::new(cfg, &groups, &specs).unwrap();
        b.load(&mut bytes.as_slice()).unwrap();
        assert_eq!(b.step_count(), 1);
        // Both continue identically (tensor 0 has momentum, tensor 1 starts fresh).
        let (mut q0, mut q1) = (p0.clone(), p1.clone());
        for (o, p, q) in [(&mut a, &mut p0, &mut p1), (&mut b, &mut q0, &mut q1)] {
            o.begin_step();
            o.update(0, p, &[0.5, -0.5, 0.25], 0.1).unwrap();
            o.update(1, q, &[1.0, 1.0], 0.1).unwrap();
        }
        assert_eq!(p0, q0);
        assert_eq!(p1, q1);
        let other = Sgd::new(cfg, &groups, &specs[..1]).unwrap();
        let mut other = other;
        assert!(other.load(&mut bytes.as_slice()).is_err());
    }

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
