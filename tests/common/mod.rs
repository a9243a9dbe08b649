//! Helpers shared by the integration tests: seeded data and valid random blocks of every type.
#![allow(dead_code)]

use edgetune::quant::{self, GgmlType};
use half::f16;
use rand::{Rng, SeedableRng, rngs::StdRng};

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// Gaussian-ish values (sum of uniforms), scaled.
pub fn gaussian(rng: &mut StdRng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let s: f32 = (0..4).map(|_| rng.random_range(-1.0f32..1.0)).sum();
            s * scale * 0.866
        })
        .collect()
}

fn put_f16(block: &mut [u8], at: usize, v: f32) {
    block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// `n` elements of type `ty` as valid blocks: quantized from Gaussian data where we have a
/// quantizer, otherwise random bit patterns with the scale fields set to sane finite values.
pub fn random_tensor(ty: GgmlType, n: usize, rng: &mut StdRng) -> Vec<u8> {
    let t = ty.traits();
    let mut out = vec![0u8; ty.bytes_for(n as u64).expect("whole blocks") as usize];
    if t.quantize_ref.is_some() {
        let src = gaussian(rng, n, 0.5);
        quant::quantize(ty, &src, &mut out).expect("quantize");
        return out;
    }
    rng.fill(&mut out[..]);
    for block in out.chunks_exact_mut(t.block_bytes) {
        let d = rng.random_range(0.001f32..0.05);
        let m = rng.random_range(0.001f32..0.05);
        match ty {
            GgmlType::Q8_1 => {
                put_f16(block, 0, d);
                put_f16(block, 2, m);
            }
            // Q2_K: scales[16], qs[64], d, dmin.
            GgmlType::Q2_K => {
                put_f16(block, 80, d);
                put_f16(block, 82, m);
            }
            // Q3_K: hmask[32], qs[64], scales[12], d.
            GgmlType::Q3_K => put_f16(block, 108, d),
            // Q8_K: f32 d, then 256 i8 and 16 i16 sums.
            GgmlType::Q8_K => block[0..4].copy_from_slice(&d.to_le_bytes()),
            other => unreachable!("{other} has a quantizer"),
        }
    }
    out
}
