//! Trained adapters in inference: the CPU [`ProjectionHook`] that runs each adapted
//! projection's branch (`y += branch(x)`, inference mode: no dropout) over an [`AdapterSet`].

use super::forward::ProjectionHook;
use crate::Result;
use crate::adapters::AdapterSet;
use crate::adapters::{Pass, Target};
use crate::backend::CpuBackend;

/// Workspace for the adapters of one model: `saved` and `scratch` for chunks of up to
/// `max_tokens` tokens (the largest adapter's needs).
#[derive(Debug, Default)]
pub struct AdapterBuffers {
    max_tokens: usize,
    saved: Vec<f32>,
    scratch: Vec<f32>,
}

impl AdapterBuffers {
    /// Buffers big enough for every adapter of `set` over `max_tokens` tokens.
    pub fn new(set: &AdapterSet, max_tokens: usize) -> AdapterBuffers {
        let (saved, scratch) = set
            .iter()
            .map(|(_, _, a)| {
                let w = a.workspace();
                (w.saved_per_token, w.scratch_per_token)
            })
            .fold((0, 0), |(s, c), (a, b)| (s.max(a), c.max(b)));
        AdapterBuffers {
            max_tokens,
            saved: vec![0.0; saved * max_tokens],
            scratch: vec![0.0; scratch * max_tokens],
        }
    }

    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// Applies the adapters of `set` after the base projections.
pub struct AdapterHook<'s> {
    pub set: &'s AdapterSet,
    pub buffers: &'s mut AdapterBuffers,
}

impl ProjectionHook<CpuBackend> for AdapterHook<'_> {
    fn apply(
        &mut self,
        layer: usize,
        target: Target,
        n: usize,
        x: &[f32],
        y: &mut [f32],
    ) -> Result<()> {
        let Some(a) = self.set.get(layer, target) else {
            return Ok(());
        };
        let pass = Pass {
            n,
            training: false,
            seed: 0,
        };
        let (saved_len, scratch_len) = (a.saved_len(n), a.scratch_len(n));
        let b = &mut *self.buffers;
        if saved_len > b.saved.len() || scratch_len > b.scratch.len() {
            return Err(crate::Error::Invalid(format!(
                "adapter blk.{layer}.{}: workspace for {n} tokens exceeds the buffers for {}",
                target.gguf_stem(),
                b.max_tokens
            )));
        }
        a.forward(
            pass,
            x,
            y,
            &mut b.saved[..saved_len],
            &mut b.scratch[..scratch_len],
        )
    }
}
