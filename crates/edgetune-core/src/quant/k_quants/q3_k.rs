//! Q3_K (ggml type 11): 256 elements in 110 bytes — 3-bit quants (2 low bits in `qs`, the
//! third in `hmask`) in 16 sub-blocks of 16 with signed 6-bit scales, under one f16 `d`.
//! Read-only in edgetune.
//!
//! Element value: `(d·(sc − 32))·(q − 4·(1 − hbit))`, ggml's and gguf-py's order (a set hmask
//! bit means *no* offset). Element 128n+32j+l (n < 2, j < 4, l < 32) takes bits 2j..2j+2 of
//! `qs[32n + l]` and bit 4n+j of `hmask[l]`; its scale is number 8n+2j+(l ≥ 16). Scale i has
//! its low nibble in `scales[i % 8]` (high nibble for i ≥ 8) and its top two bits at bit
//! 2·(i / 4) of `scales[8 + i % 4]`.
//!
//! `dot` decodes each block with the reference and runs the shared f32 vector dot (no dedicated
//! kernel for this rare format).

use super::{QK_K, dot_decoded, dot_ref_with, f16_le};
use bytemuck::{Pod, Zeroable};

/// Bytes per 256-element block.
pub const BLOCK_BYTES: usize = 110;

/// One Q3_K super-block, byte-compatible with ggml's `block_q3_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    /// Third bits of the quants (set = no −4 offset).
    pub hmask: [u8; 32],
    /// Low two bits of the quants, four per byte.
    pub qs: [u8; 64],
    /// Sixteen 6-bit scales (offset by 32), packed.
    pub scales: [u8; 12],
    /// f16 super-scale.
    pub d: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == BLOCK_BYTES);
const _: () = assert!(std::mem::align_of::<BlockQ3K>() == 1);

/// The sixteen signed scales (−32..31) of a block.
pub fn unpack_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (i, s) in out.iter_mut().enumerate() {
        let low = (packed[i % 8] >> (4 * (i / 8))) & 0x0f;
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Reference dequantizer, bit-exact with ggml's `dequantize_row_q3_K` and gguf-py.
pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / BLOCK_BYTES * QK_K, dst.len());
    for (raw, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let b: &BlockQ3K = bytemuck::from_bytes(raw);
        let d = f16_le(b.d);
        let scales = unpack_scales(&b.scales);
        for (i, y16) in y.chunks_exact_mut(16).enumerate() {
            let (n, j, s) = (i / 8, (i % 8) / 2, i % 2);
            let dl = d * f32::from(scales[i]);
            for l in 16 * s..16 * s + 16 {
                let low = ((b.qs[32 * n + l] >> (2 * j)) & 3) as i8;
                let offset = if b.hmask[l] & (1 << (4 * n + j)) != 0 {
                    0
                } else {
                    4
                };
                y16[l - 16 * s] = dl * f32::from(low - offset);
            }
        }
    }
}

/// Fastest dequantizer: the reference (no dedicated kernel for this rare format).
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_ref(src, dst)
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

    fn random_block(rng: &mut Rng) -> BlockQ3K {
        let mut b = BlockQ3K::zeroed();
        fill_bytes(rng, &mut b.hmask);
        fill_bytes(rng, &mut b.qs);
        fill_bytes(rng, &mut b.scales);
        b.d = sane_f16(rng);
        b
    }

    fn edge_blocks() -> Vec<BlockQ3K> {
        let max = BlockQ3K {
            hmask: [0xff; 32],
            qs: [0xff; 64],
            scales: [0xff; 12],
            d: [0xff, 0x7b],
        };
        vec![
            BlockQ3K::zeroed(), // d = 0 but scales −32 and q −4
            max,
            BlockQ3K {
                hmask: [0; 32],
                qs: [0; 64],
                scales: [0; 12],
                ..max
            }, // (−32)·(−4)
            BlockQ3K { d: [1, 0], ..max },
            BlockQ3K {
                d: [0, 0xbc],
                ..max
            },
        ]
    }

    #[test]
    fn dot_matches_dot_ref() {
        let mut rng = rng(0x3b);
        for nb in 1..=12 {
            for _ in 0..3 {
                let row: Vec<BlockQ3K> = (0..nb).map(|_| random_block(&mut rng)).collect();
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
        let edges = edge_blocks();
        let bytes: &[u8] = bytemuck::cast_slice(&edges);
        let x = gaussian(&mut rng, edges.len() * QK_K, 1.0);
        check_dot(
            bytes,
            &x,
            edges.len(),
            dequantize_ref,
            &vec![0.0; x.len()],
            dot,
            dot_ref,
        );
    }

    #[test]
    fn dequantize_is_bitwise_ref() {
        let mut rng = rng(11);
        let mut row: Vec<BlockQ3K> = (0..5).map(|_| random_block(&mut rng)).collect();
        row.extend(edge_blocks());
        check_dequantize_bitwise(
            bytemuck::cast_slice(&row),
            BLOCK_BYTES,
            dequantize,
            dequantize_ref,
        );
    }

    #[test]
    fn hand_built_block_decodes_to_known_values() {
        // d = 0.5; scale i = i − 8 (stored i + 24); element e gets the signed quant
        // v = (e % 8) − 4, i.e. low bits (v mod 4) and hmask bit set iff v ≥ 0.
        let mut b = BlockQ3K::zeroed();
        b.d = half::f16::from_f32(0.5).to_le_bytes();
        for i in 0..16 {
            let stored = (i + 24) as u8;
            b.scales[i % 8] |= (stored & 0x0f) << (4 * (i / 8));
            b.scales[8 + i % 4] |= (stored >> 4) << (2 * (i / 4));
        }
        for e in 0..QK_K {
            let v = (e % 8) as i32 - 4;
            let (n, r) = (e / 128, e % 128);
            let (j, l) = (r / 32, r % 32);
            b.qs[32 * n + l] |= (v.rem_euclid(4) as u8) << (2 * j);
            if v >= 0 {
                b.hmask[l] |= 1 << (4 * n + j);
            }
        }
        assert_eq!(
            unpack_scales(&b.scales),
            std::array::from_fn(|i| i as i8 - 8)
        );
        let mut y = [0f32; QK_K];
        dequantize_ref(bytemuck::bytes_of(&b), &mut y);
        for e in 0..QK_K {
            let want = 0.5 * ((e / 16) as f32 - 8.0) * ((e % 8) as f32 - 4.0);
            assert_eq!(y[e], want, "element {e}");
        }
    }
}
