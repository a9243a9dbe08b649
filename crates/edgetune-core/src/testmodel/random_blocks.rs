//! Valid random quantized blocks, generated at memory speed: random bytes with each block's
//! scale fields (the f16 `d`, `dmin`/`m`, and the K-quant sub-block scales) overwritten with
//! sane values, so that the dequantized weights are finite, roughly zero-mean and have a chosen
//! standard deviation.
//!
//! The large presets (8B: 4.3 GiB in Q4_0, 70B: ~40 GB) are written this way because quantizing
//! billions of random f32 values would take far longer than the disk write. The values are not a
//! quantization of anything: they exist to measure memory and speed with real shapes.

use half::{bf16, f16};

use crate::quant::GgmlType;
use crate::{Error, Result};

/// wyrand: a tiny, fast, seedable generator (64-bit state, one multiply per 8 bytes). Quality
/// is ample for filler weights and it keeps the 4 GiB files disk-bound, not generator-bound.
#[derive(Clone, Debug)]
pub struct FastRng(u64);

impl FastRng {
    pub fn new(seed: u64) -> FastRng {
        FastRng(seed ^ 0x2545_F491_4F6C_DD1D)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.0) * u128::from(self.0 ^ 0xe703_7ed1_a0b4_28db);
        (t >> 64) as u64 ^ t as u64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

fn put_f16(block: &mut [u8], at: usize, v: f32) {
    block[at..at + 2].copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

/// Packs eight 6-bit sub-block scales and eight 6-bit mins the way ggml's `get_scale_min_k4`
/// unpacks them (Q4_K and Q5_K): bytes 0–3 hold scales 0–3 (low 6 bits) and the top 2 bits of
/// scales 4–7; bytes 4–7 the same for the mins; bytes 8–11 the low nibbles of scale and min 4–7.
pub fn pack_k4_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..4 {
        q[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 15) | ((mn[j + 4] & 15) << 4);
    }
    q
}

/// Root mean square of IQ4_NL's 16 code values (`{-127, …, 113}`, docs/FORMATS.md#iq4_nl).
const IQ4_NL_CODE_RMS: f32 = 67.4;
/// RMS of a uniform 4-bit code centred at 8 (q − 8, q in 0..16), and of a 5-bit one at 16.
const Q4_CODE_RMS: f32 = 4.61;
const Q5_CODE_RMS: f32 = 9.23;
/// RMS of a uniform random i8.
const I8_RMS: f32 = 73.9;
/// RMS of a 6-bit sub-block scale drawn uniformly from 1..64.
const K_SCALE_RMS: f32 = 36.9;

/// Fills `out` (whole blocks of `ty`) with random valid blocks whose values have standard
/// deviation ≈ `std` (each block's scale jittered by ±25 % so blocks are not all alike).
pub fn fill_random_blocks(ty: GgmlType, std: f32, rng: &mut FastRng, out: &mut [u8]) -> Result<()> {
    let bb = ty.block_bytes();
    if !out.len().is_multiple_of(bb) {
        return Err(Error::Invalid(format!(
            "random {ty} blocks: {} bytes is not a whole number of {bb}-byte blocks",
            out.len()
        )));
    }
    // The float types: every element is a value (uniform with the requested std).
    let half_width = std * 3f32.sqrt();
    match ty {
        GgmlType::F32 => {
            for v in out.chunks_exact_mut(4) {
                v.copy_from_slice(&rng.range(-half_width, half_width).to_le_bytes());
            }
            return Ok(());
        }
        GgmlType::F16 => {
            for v in out.chunks_exact_mut(2) {
                let x = f16::from_f32(rng.range(-half_width, half_width));
                v.copy_from_slice(&x.to_le_bytes());
            }
            return Ok(());
        }
        GgmlType::BF16 => {
            for v in out.chunks_exact_mut(2) {
                let x = bf16::from_f32(rng.range(-half_width, half_width));
                v.copy_from_slice(&x.to_le_bytes());
            }
            return Ok(());
        }
        _ => {}
    }
    rng.fill(out);
    for block in out.chunks_exact_mut(bb) {
        let s = std * rng.range(0.75, 1.25);
        match ty {
            // Q4_0 [d f16 | 16 B nibbles]: value = d·(q − 8).
            GgmlType::Q4_0 => put_f16(block, 0, s / Q4_CODE_RMS),
            // Q4_1 [d | m | 16 B nibbles]: value = d·q + m; m = −7.5·d centres it.
            GgmlType::Q4_1 => {
                let d = s / Q4_CODE_RMS;
                put_f16(block, 0, d);
                put_f16(block, 2, -7.5 * d);
            }
            // Q5_0 [d | 4 B high bits | 16 B nibbles]: value = d·(q − 16).
            GgmlType::Q5_0 => put_f16(block, 0, s / Q5_CODE_RMS),
            // Q5_1 [d | m | 4 B high bits | 16 B nibbles]: value = d·q + m.
            GgmlType::Q5_1 => {
                let d = s / Q5_CODE_RMS;
                put_f16(block, 0, d);
                put_f16(block, 2, -15.5 * d);
            }
            // Q8_0 [d | 32 × i8]: value = d·q.
            GgmlType::Q8_0 => put_f16(block, 0, s / I8_RMS),
            // IQ4_NL [d | 16 B nibbles]: value = d·table[q].
            GgmlType::IQ4_NL => put_f16(block, 0, s / IQ4_NL_CODE_RMS),
            // Q4_K [d | dmin | 12 B scales+mins | 128 B nibbles]: value = d·sc·q − dmin·mn.
            // With mn = sc and dmin = 7.5·d a sub-block is d·sc·(q − 7.5): centred.
            // Q5_K [d | dmin | 12 B scales+mins | 32 B high bits | 128 B nibbles]: q in 0..32,
            // so dmin = 15.5·d.
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let (code_rms, centre) = if ty == GgmlType::Q4_K {
                    (Q4_CODE_RMS, 7.5)
                } else {
                    (Q5_CODE_RMS, 15.5)
                };
                let d = s / (K_SCALE_RMS * code_rms);
                put_f16(block, 0, d);
                put_f16(block, 2, centre * d);
                let mut sc = [0u8; 8];
                for x in &mut sc {
                    *x = 1 + (rng.next_u64() % 63) as u8;
                }
                block[4..16].copy_from_slice(&pack_k4_scales(&sc, &sc));
            }
            // Q6_K [128 B low nibbles | 64 B high 2 bits | 16 × i8 scales | d]:
            // value = d·sc·(q − 32); random bytes give q uniform in 0..64 and sc uniform i8.
            GgmlType::Q6_K => put_f16(block, 208, s / (I8_RMS * 18.5)),
            other => {
                return Err(Error::Invalid(format!(
                    "random {other} blocks are not supported (edgetune does not write {other})"
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant;

    const WRITABLE: [GgmlType; 12] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::IQ4_NL,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ];

    /// The dequantizer (checked against gguf-py elsewhere) decides whether the scale fields
    /// sit where this file puts them: a wrong offset leaves a random f16 there, which shows up
    /// as inf/NaN or a standard deviation off by orders of magnitude.
    #[test]
    fn random_blocks_dequantize_to_finite_centred_values_of_the_requested_std() {
        let mut rng = FastRng::new(7);
        for ty in WRITABLE {
            let n = 256 * 64;
            let mut bytes = vec![0u8; ty.bytes_for(n as u64).unwrap() as usize];
            let target = 0.02f32;
            fill_random_blocks(ty, target, &mut rng, &mut bytes).unwrap();
            let mut values = vec![0f32; n];
            quant::dequantize(ty, &bytes, &mut values).unwrap();
            assert!(values.iter().all(|v| v.is_finite()), "{ty}: non-finite");
            let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
            let var = values
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / n as f64;
            let std = var.sqrt() as f32;
            assert!(
                (0.75 * target..1.33 * target).contains(&std),
                "{ty}: std {std} for target {target}"
            );
            assert!(mean.abs() < 0.1 * f64::from(target), "{ty}: mean {mean}");
        }
    }

    #[test]
    fn k4_scale_packing_round_trips_through_the_dequantizer() {
        // A Q4_K block with all quants = 1, d = 1, dmin = 0: sub-block j's values are sc_j.
        let sc = [1u8, 7, 13, 31, 32, 45, 62, 63];
        let mn = [0u8; 8];
        let mut block = vec![0u8; 144];
        put_f16(&mut block, 0, 1.0);
        block[4..16].copy_from_slice(&pack_k4_scales(&sc, &mn));
        block[16..].fill(0x11);
        let mut values = vec![0f32; 256];
        quant::dequantize(GgmlType::Q4_K, &block, &mut values).unwrap();
        for j in 0..8 {
            assert_eq!(values[32 * j], f32::from(sc[j]), "sub-block {j}");
        }
        // Mins: d = 0, dmin = 1, so values are −mn_j.
        let mut block = vec![0u8; 144];
        put_f16(&mut block, 2, 1.0);
        block[4..16].copy_from_slice(&pack_k4_scales(&mn, &sc));
        let mut values = vec![0f32; 256];
        quant::dequantize(GgmlType::Q4_K, &block, &mut values).unwrap();
        for j in 0..8 {
            assert_eq!(
                values[32 * j + 5],
                -f32::from(sc[j]),
                "min of sub-block {j}"
            );
        }
    }

    #[test]
    fn rejects_partial_blocks_and_unwritable_types() {
        let mut rng = FastRng::new(1);
        assert!(fill_random_blocks(GgmlType::Q4_0, 0.1, &mut rng, &mut [0u8; 17]).is_err());
        assert!(fill_random_blocks(GgmlType::Q2_K, 0.1, &mut rng, &mut [0u8; 84]).is_err());
    }
}
