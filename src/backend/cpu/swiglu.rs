//! SwiGLU, the Llama feed-forward gate: `out = silu(gate) · up`, `silu(g) = g / (1 + e^(−g))`.
//!
//! `gate`, `up` and `out` are `[n_tokens, ffn]` (any matching lengths: the op is element-wise).
//! The inputs stay untouched because the backward needs both.

use rayon::prelude::*;

use crate::Result;
use crate::backend::check_len;

const PAR_MIN: usize = 1 << 14;
const CHUNK: usize = 1 << 12;

/// Fast version: parallel over chunks, f32 throughout.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("swiglu", "up", up.len(), 1, gate.len())?;
    check_len("swiglu", "out", out.len(), 1, gate.len())?;
    if out.len() < PAR_MIN {
        swiglu_chunk(gate, up, out);
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .for_each(|(o, (g, u))| swiglu_chunk(g, u, o));
    }
    Ok(())
}

#[inline]
fn swiglu_chunk(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        // exp(−g) overflows to +inf for g < −88: g / inf = −0, the correct limit.
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// Scalar specification, in f64.
pub fn swiglu_ref(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<()> {
    check_len("swiglu", "up", up.len(), 1, gate.len())?;
    check_len("swiglu", "out", out.len(), 1, gate.len())?;
    for i in 0..gate.len() {
        let g = gate[i] as f64;
        out[i] = (g / (1.0 + (-g).exp()) * up[i] as f64) as f32;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::test_util::{assert_close, random};

    #[test]
    fn matches_ref() {
        // f32 exp is within a few ulp and there are three roundings (exp, divide, multiply):
        // 1e-6 relative covers them with room.
        for n in [1, 31, PAR_MIN + 2 * CHUNK + 3] {
            let g = random(n, 12.0, 3);
            let u = random(n, 3.0, 4);
            let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
            swiglu(&g, &u, &mut a).unwrap();
            swiglu_ref(&g, &u, &mut b).unwrap();
            assert_close(&a, &b, 1e-6, "swiglu");
        }
    }

    #[test]
    fn hand_computed_and_extremes() {
        let g = [0.0f32, 1.0, -200.0, 200.0];
        let u = [5.0f32, 2.0, 1.0, 0.5];
        let mut o = [9.0f32; 4];
        swiglu(&g, &u, &mut o).unwrap();
        // silu(0) = 0; silu(1) = 1/(1+e^-1) = 0.7310586; silu(−200) → 0; silu(200) → 200.
        assert_eq!(o[0], 0.0);
        assert!((o[1] - 2.0 * 0.731_058_6).abs() < 1e-6);
        assert_eq!(o[2], 0.0);
        assert_eq!(o[3], 100.0);
        assert!(swiglu(&g, &u[..3], &mut o).is_err());
    }
}
