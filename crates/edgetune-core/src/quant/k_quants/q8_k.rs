//! Q8_K (ggml type 15): 256 elements in 292 bytes — an f32 scale, 256 signed 8-bit quants and
//! 16 i16 sums of groups of 16 quants. ggml uses it for quantized activations; edgetune only
//! reads it (training keeps activations in f32).
//!
//! Element value: `d·q` (one f32 product). The `bsums` are redundant and not read.

use super::{QK_K, dot_decoded, dot_ref_with, nearest_int};
use bytemuck::{Pod, Zeroable};

/// Bytes per 256-element block.
pub const BLOCK_BYTES: usize = 292;

/// One Q8_K block, byte-compatible with ggml's `block_q8_K` (alignment 1: fields are bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    /// f32 scale, little-endian.
    pub d: [u8; 4],
    /// Signed quants.
    pub qs: [i8; 256],
    /// Σ of each group of 16 quants, as little-endian i16.
    pub bsums: [u8; 32],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == BLOCK_BYTES);
const _: () = assert!(std::mem::align_of::<BlockQ8K>() == 1);

/// Reference dequantizer, bit-exact with ggml's `dequantize_row_q8_K`.
pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / BLOCK_BYTES * QK_K, dst.len());
    for (raw, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let b: &BlockQ8K = bytemuck::from_bytes(raw);
        let d = f32::from_le_bytes(b.d);
        for (v, &q) in y.iter_mut().zip(&b.qs) {
            *v = d * f32::from(q);
        }
    }
}

/// Fastest dequantizer: the reference loop (one multiply per element, vectorized by the
/// compiler).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_ref(src, dst)
}

/// ggml's `quantize_row_q8_K_ref`: scale −max/127 from the largest-magnitude value (so that
/// value maps to −127), round with `nearest_int`, clamp to 127, and store the group sums.
pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / QK_K * BLOCK_BYTES, dst.len());
    for (x, out) in src
        .chunks_exact(QK_K)
        .zip(dst.chunks_exact_mut(BLOCK_BYTES))
    {
        let y = bytemuck::from_bytes_mut::<BlockQ8K>(out);
        let (mut max, mut amax) = (0f32, 0f32);
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        if amax == 0.0 {
            *y = BlockQ8K::zeroed();
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in y.qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (g, sum) in y.bsums.chunks_exact_mut(2).enumerate() {
            let s: i32 = y.qs[16 * g..16 * g + 16]
                .iter()
                .map(|&q| i32::from(q))
                .sum();
            sum.copy_from_slice(&(s as i16).to_le_bytes());
        }
        y.d = (1.0 / iscale).to_le_bytes();
    }
}

/// Σ dequantize_ref(row)·x with f64 products and sum (the specification of [`dot`]).
pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
    dot_ref_with(row, x, BLOCK_BYTES, dequantize_ref)
}

/// Σ dequantized(row)·x: blocks decoded by the reference, then a SIMD f32 dot.
pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    dot_decoded(row, x, BLOCK_BYTES, dequantize_ref)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn random_block(rng: &mut Rng) -> BlockQ8K {
        let mut b = BlockQ8K::zeroed();
        fill_bytes(rng, bytemuck::cast_slice_mut(&mut b.qs));
        b.d = f32::from(half::f16::from_le_bytes(sane_f16(rng))).to_le_bytes();
        b
    }

    #[test]
    fn dot_matches_dot_ref() {
        let mut rng = rng(0x8b);
        for nb in 1..=12 {
            for trial in 0..4 {
                let row: Vec<BlockQ8K> = if trial % 2 == 0 {
                    (0..nb).map(|_| random_block(&mut rng)).collect()
                } else {
                    let src = gaussian(&mut rng, nb * QK_K, 3.0);
                    let mut bytes = vec![0u8; nb * BLOCK_BYTES];
                    quantize_ref(&src, &mut bytes);
                    bytemuck::cast_slice(&bytes).to_vec()
                };
                let bytes: &[u8] = bytemuck::cast_slice(&row);
                let x = gaussian(&mut rng, nb * QK_K, 1.0);
                check_dot(
                    bytes,
                    &x,
                    nb,
                    dequantize_ref,
                    &vec![0.0; x.len()],
                    dot,
                    dot_ref,
                );
            }
        }
        let mut edge = BlockQ8K {
            d: 1e30f32.to_le_bytes(),
            qs: [-128; 256],
            bsums: [0; 32],
        };
        let x = gaussian(&mut rng, QK_K, 1.0);
        for d in [0.0f32, 1e30, f32::from_bits(1), -2.5] {
            edge.d = d.to_le_bytes();
            check_dot(
                bytemuck::bytes_of(&edge),
                &x,
                1,
                dequantize_ref,
                &[0.0; QK_K],
                dot,
                dot_ref,
            );
        }
    }

    #[test]
    fn dequantize_is_bitwise_ref_and_decodes_known_values() {
        let mut rng = rng(12);
        let row: Vec<BlockQ8K> = (0..4).map(|_| random_block(&mut rng)).collect();
        check_dequantize_bitwise(
            bytemuck::cast_slice(&row),
            BLOCK_BYTES,
            dequantize,
            dequantize_ref,
        );
        let mut b = BlockQ8K::zeroed();
        b.d = 0.5f32.to_le_bytes();
        for (i, q) in b.qs.iter_mut().enumerate() {
            *q = (i as i32 - 128) as i8;
        }
        let mut y = [0f32; QK_K];
        dequantize_ref(bytemuck::bytes_of(&b), &mut y);
        for i in 0..QK_K {
            assert_eq!(y[i], 0.5 * (i as f32 - 128.0));
        }
    }

    #[test]
    fn quantize_round_trip_and_group_sums() {
        // 8-bit symmetric with the block's max at ±127: error ≤ half a step, d·0.5, per
        // element (plus float rounding), and each bsum equals the sum of its 16 quants.
        let mut rng = rng(47);
        let x = gaussian(&mut rng, 4 * QK_K, 2.0);
        let mut q = vec![0u8; 4 * BLOCK_BYTES];
        quantize_ref(&x, &mut q);
        let mut y = vec![0f32; x.len()];
        dequantize_ref(&q, &mut y);
        for (blk, (xb, yb)) in q
            .chunks_exact(BLOCK_BYTES)
            .zip(x.chunks(QK_K).zip(y.chunks(QK_K)))
        {
            let b: &BlockQ8K = bytemuck::from_bytes(blk);
            let d = f32::from_le_bytes(b.d).abs();
            for (a, c) in xb.iter().zip(yb) {
                assert!((a - c).abs() <= 0.5 * d * 1.0001, "{a} vs {c} (d = {d})");
            }
            for g in 0..16 {
                let s: i32 = b.qs[16 * g..16 * g + 16]
                    .iter()
                    .map(|&v| i32::from(v))
                    .sum();
                let stored = i16::from_le_bytes([b.bsums[2 * g], b.bsums[2 * g + 1]]);
                assert_eq!(i32::from(stored), s);
            }
        }
    }
}
