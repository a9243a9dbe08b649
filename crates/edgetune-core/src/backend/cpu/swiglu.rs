//! SwiGLU, the Llama feed-forward gate: `out = silu(gate) · up`, `silu(g) = g / (1 + e^(−g))`.
//!
//! `gate`, `up` and `out` are `[n_tokens, ffn]` (any matching lengths: the op is element-wise).
//! The inputs stay untouched because the backward needs both.
//!
//! Backward, with `σ = 1 / (1 + e^(−g))`, `silu(g) = g·σ`, `silu'(g) = σ·(1 + g·(1 − σ))`:
//! `dgate = dh · up · silu'(gate)`, `dup = dh · silu(gate)`.

use rayon::prelude::*;

use super::Real;
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

fn check_backward<T>(gate: &[T], up: &[T], dh: &[T], dgate: &[T], dup: &[T]) -> Result<()> {
    let n = gate.len();
    check_len("swiglu_backward", "up", up.len(), 1, n)?;
    check_len("swiglu_backward", "dh", dh.len(), 1, n)?;
    check_len("swiglu_backward", "dgate", dgate.len(), 1, n)?;
    check_len("swiglu_backward", "dup", dup.len(), 1, n)
}

/// Gradients of [`swiglu`] (overwrite `dgate` and `dup`); all five slices have one length.
pub fn swiglu_backward(
    gate: &[f32],
    up: &[f32],
    dh: &[f32],
    dgate: &mut [f32],
    dup: &mut [f32],
) -> Result<()> {
    check_backward(gate, up, dh, dgate, dup)?;
    if gate.len() < PAR_MIN {
        swiglu_backward_chunk(gate, up, dh, dgate, dup);
    } else {
        dgate
            .par_chunks_mut(CHUNK)
            .zip(dup.par_chunks_mut(CHUNK))
            .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
            .zip(dh.par_chunks(CHUNK))
            .for_each(|(((dg, du), (g, u)), d)| swiglu_backward_chunk(g, u, d, dg, du));
    }
    Ok(())
}

#[inline]
fn swiglu_backward_chunk(gate: &[f32], up: &[f32], dh: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    for i in 0..gate.len() {
        let g = gate[i];
        // g < −88: e^(−g) = inf, σ = 0, so silu = −0 and silu' = 0·(1 + g) = −0 (finite g).
        let sig = 1.0 / (1.0 + (-g).exp());
        let silu = g * sig;
        dup[i] = dh[i] * silu;
        dgate[i] = dh[i] * up[i] * (sig * (1.0 + g * (1.0 - sig)));
    }
}

/// Scalar specification of [`swiglu_backward`], generic over the element type (f64 inside).
pub fn swiglu_backward_ref<T: Real>(
    gate: &[T],
    up: &[T],
    dh: &[T],
    dgate: &mut [T],
    dup: &mut [T],
) -> Result<()> {
    check_backward(gate, up, dh, dgate, dup)?;
    for i in 0..gate.len() {
        let (g, u, d) = (gate[i].to_f64(), up[i].to_f64(), dh[i].to_f64());
        let sig = 1.0 / (1.0 + (-g).exp());
        dup[i] = T::from_f64(d * g * sig);
        dgate[i] = T::from_f64(d * u * sig * (1.0 + g * (1.0 - sig)));
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
    fn backward_matches_ref() {
        // f32 exp (a few ulp), then ~6 roundings in silu' and the products: 2e-6 relative to
        // max(1, |d|) covers them. Gates up to ±120 exercise the e^(−g) overflow branch.
        for n in [1, 31, PAR_MIN + 2 * CHUNK + 3] {
            let g = random(n, 120.0, 3);
            let u = random(n, 3.0, 4);
            let dh = random(n, 2.0, 5);
            let (mut dga, mut dua) = (vec![0.0; n], vec![0.0; n]);
            let (mut dgb, mut dub) = (vec![0.0; n], vec![0.0; n]);
            swiglu_backward(&g, &u, &dh, &mut dga, &mut dua).unwrap();
            swiglu_backward_ref(&g, &u, &dh, &mut dgb, &mut dub).unwrap();
            assert_close(&dga, &dgb, 2e-6, "swiglu dgate");
            assert_close(&dua, &dub, 2e-6, "swiglu dup");
        }
        let g = random(8, 12.0, 6);
        let (mut a, mut b) = (vec![0.0; 8], vec![0.0; 8]);
        assert!(swiglu_backward(&g, &g, &g[..7], &mut a, &mut b).is_err());
        assert!(swiglu_backward(&g, &g, &g, &mut a[..7], &mut b).is_err());
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
