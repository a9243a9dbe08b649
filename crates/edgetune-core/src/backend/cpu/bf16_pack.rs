//! bf16 layer checkpoints (`--checkpoint-dtype bf16`): an f32 activation `[T, D]` packed as
//! bf16, two values per f32 slot of an arena buffer `[⌈T·D/2⌉]`, and unpacked again.
//!
//! Packing also rounds the source in place to the values it packed, so the forward that goes on
//! from the f32 copy and the recompute that starts from the packed one read the same numbers.
//! Rounding is to nearest, ties to even (the `half` crate's `bf16::from_f32`); NaN stays NaN.
//! The packed slots hold raw bf16 bit pairs (element `2i` in the low half of slot `i` in
//! memory order): nothing does arithmetic on them as f32.

use rayon::prelude::*;

use crate::{Error, Result};

/// Elements per parallel task (large enough that the split costs nothing).
const PAR_CHUNK: usize = 1 << 14;

fn check(what: &str, x: usize, packed: usize) -> Result<()> {
    if packed != x.div_ceil(2) {
        return Err(Error::Invalid(format!(
            "{what}: {x} values need {} packed slots, the buffer has {packed}",
            x.div_ceil(2)
        )));
    }
    Ok(())
}

/// Packs `x` into `packed` (`⌈len/2⌉` slots) as bf16 and rounds `x` to those values.
pub fn pack_bf16(x: &mut [f32], packed: &mut [f32]) -> Result<()> {
    check("pack_bf16", x.len(), packed.len())?;
    let halves: &mut [u16] = bytemuck::cast_slice_mut(packed);
    let halves = &mut halves[..x.len()];
    x.par_chunks_mut(PAR_CHUNK)
        .zip(halves.par_chunks_mut(PAR_CHUNK))
        .for_each(|(xs, hs)| {
            for (v, h) in xs.iter_mut().zip(hs.iter_mut()) {
                let b = half::bf16::from_f32(*v);
                *h = b.to_bits();
                *v = b.to_f32();
            }
        });
    Ok(())
}

/// Unpacks `packed` (`⌈len/2⌉` slots) into `x`.
pub fn unpack_bf16(packed: &[f32], x: &mut [f32]) -> Result<()> {
    check("unpack_bf16", x.len(), packed.len())?;
    let halves: &[u16] = bytemuck::cast_slice(packed);
    let halves = &halves[..x.len()];
    x.par_chunks_mut(PAR_CHUNK)
        .zip(halves.par_chunks(PAR_CHUNK))
        .for_each(|(xs, hs)| {
            for (v, &h) in xs.iter_mut().zip(hs) {
                *v = half::bf16::from_bits(h).to_f32();
            }
        });
    Ok(())
}

/// Scalar specification of one value's bf16 bits: the top 16 bits of the f32 after adding
/// `0x7FFF` plus the lowest kept bit (round to nearest, ties to even); a NaN keeps its sign and
/// becomes quiet.
pub fn to_bf16_bits_ref(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7FFF + lsb) >> 16) as u16
}

/// Scalar specification of [`pack_bf16`] followed by [`unpack_bf16`]: `x` rounded to bf16.
pub fn round_bf16_ref(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| f32::from_bits(u32::from(to_bf16_bits_ref(v)) << 16))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_rounds_to_nearest_even_and_round_trips_like_the_reference() {
        // Ties (exactly half an ulp of bf16) both ways, the largest finite values, subnormals,
        // infinities, signed zeros, NaN, and an odd length (the last slot half used).
        let mut x: Vec<f32> = vec![
            1.0,
            f32::from_bits(0x3F80_8000), // 1 + 2^-8: a tie, rounds down to even
            f32::from_bits(0x3F81_8000), // a tie that rounds up to even
            f32::from_bits(0x3F80_8001), // just above a tie: up
            f32::MAX,
            -f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            f32::NAN,
        ];
        let mut s = 0x1234_5678u32;
        for _ in 0..40_001 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            x.push(f32::from_bits(s));
        }
        let expect = round_bf16_ref(&x);
        let mut packed = vec![0.0f32; x.len().div_ceil(2)];
        let mut rounded = x.clone();
        pack_bf16(&mut rounded, &mut packed).unwrap();
        let mut back = vec![0.0f32; x.len()];
        unpack_bf16(&packed, &mut back).unwrap();
        for (i, ((&r, &b), &e)) in rounded.iter().zip(&back).zip(&expect).enumerate() {
            if e.is_nan() {
                assert!(r.is_nan() && b.is_nan(), "element {i}");
            } else {
                assert_eq!(r.to_bits(), e.to_bits(), "element {i}: {}", x[i]);
                assert_eq!(b.to_bits(), e.to_bits(), "element {i}");
            }
        }
        assert_eq!(rounded[1], 1.0);
        assert_eq!(rounded[2], f32::from_bits(0x3F82_0000));
        assert_eq!(rounded[3], f32::from_bits(0x3F81_0000));
        // Relative error at most half a bf16 ulp, 2^-8, for normal values that stay finite.
        for (&v, &r) in x.iter().zip(&rounded) {
            if v.is_normal() && r.is_finite() {
                assert!(((r - v) / v).abs() <= 1.0 / 256.0, "{v} -> {r}");
            }
        }
    }

    #[test]
    fn a_buffer_of_the_wrong_size_is_refused_with_the_numbers() {
        let mut x = vec![1.0f32; 5];
        let mut packed = vec![0.0f32; 2];
        let e = pack_bf16(&mut x, &mut packed).unwrap_err().to_string();
        assert!(e.contains("5 values need 3") && e.contains("has 2"), "{e}");
        let e = unpack_bf16(&packed, &mut x).unwrap_err().to_string();
        assert!(e.contains("unpack_bf16"), "{e}");
    }
}
