//! Q2_K (ggml type 10): 256 elements in 84 bytes — 2-bit quants in 16 sub-blocks of 16, each
//! with a 4-bit scale and a 4-bit min, under f16 `d` and `dmin`. Read-only in edgetune.
//!
//! Element value: `(d·(sc & 15))·q − dmin·(sc >> 4)`, ggml's and gguf-py's order. In half n
//! (elements 128n..128n+128, bytes `qs[32n..32n+32]`), elements 128n+32j+l use bits 2j..2j+2
//! of `qs[32n + l]` for l < 16 with scale byte 8n+2j, and of `qs[32n + l]` for 16 ≤ l < 32
//! with scale byte 8n+2j+1.
//!
//! `dot` decodes each block with the reference and runs the shared f32 vector dot: Q2_K tensors
//! are rare in the models edgetune targets, so it has no dedicated kernel.

use super::{QK_K, dot_decoded, dot_ref_with, f16_le};
use bytemuck::{Pod, Zeroable};

/// Bytes per 256-element block.
pub const BLOCK_BYTES: usize = 84;

/// One Q2_K super-block, byte-compatible with ggml's `block_q2_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Per 16-element sub-block: scale in the low nibble, min in the high nibble.
    pub scales: [u8; 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; 64],
    /// f16 super-scale of the scales.
    pub d: [u8; 2],
    /// f16 super-scale of the mins.
    pub dmin: [u8; 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == BLOCK_BYTES);
const _: () = assert!(std::mem::align_of::<BlockQ2K>() == 1);

/// Reference dequantizer, bit-exact with ggml's `dequantize_row_q2_K` and gguf-py.
pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / BLOCK_BYTES * QK_K, dst.len());
    for (raw, y) in src
        .chunks_exact(BLOCK_BYTES)
        .zip(dst.chunks_exact_mut(QK_K))
    {
        let b: &BlockQ2K = bytemuck::from_bytes(raw);
        let (d, dmin) = (f16_le(b.d), f16_le(b.dmin));
        for (i, y16) in y.chunks_exact_mut(16).enumerate() {
            // Sub-block i = 8n + 2j + s: half n, bit pair j, first/second 16 bytes s.
            let (n, j, s) = (i / 8, (i % 8) / 2, i % 2);
            let sc = b.scales[i];
            let dl = d * f32::from(sc & 0x0f);
            let ml = dmin * f32::from(sc >> 4);
            let q = &b.qs[32 * n + 16 * s..32 * n + 16 * s + 16];
            for l in 0..16 {
                y16[l] = dl * f32::from((q[l] >> (2 * j)) & 3) - ml;
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

    fn random_block(rng: &mut Rng) -> BlockQ2K {
        let mut b = BlockQ2K::zeroed();
        fill_bytes(rng, &mut b.scales);
        fill_bytes(rng, &mut b.qs);
        (b.d, b.dmin) = (sane_f16(rng), sane_f16(rng));
        b
    }

    fn edge_blocks() -> Vec<BlockQ2K> {
        let max = BlockQ2K {
            scales: [0xff; 16],
            qs: [0xff; 64],
            d: [0xff, 0x7b],
            dmin: [0xff, 0x7b],
        };
        vec![
            BlockQ2K::zeroed(),
            max,
            BlockQ2K { qs: [0; 64], ..max },
            BlockQ2K { d: [0, 0], ..max },
            BlockQ2K {
                d: [1, 0],
                dmin: [1, 0],
                ..max
            },
        ]
    }

    fn offsets(row: &[u8]) -> Vec<f32> {
        row.chunks_exact(BLOCK_BYTES)
            .map(bytemuck::from_bytes::<BlockQ2K>)
            .flat_map(|b| b.scales.map(|s| f16_le(b.dmin) * f32::from(s >> 4)))
            .flat_map(|m| [m; 16])
            .collect()
    }

    #[test]
    fn dot_matches_dot_ref() {
        let mut rng = rng(0x2b);
        for nb in 1..=12 {
            for _ in 0..3 {
                let row: Vec<BlockQ2K> = (0..nb).map(|_| random_block(&mut rng)).collect();
                let bytes: &[u8] = bytemuck::cast_slice(&row);
                let x = gaussian(&mut rng, nb * QK_K, 1.0);
                check_dot(bytes, &x, nb, dequantize_ref, &offsets(bytes), dot, dot_ref);
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
            &offsets(bytes),
            dot,
            dot_ref,
        );
    }

    #[test]
    fn dequantize_is_bitwise_ref() {
        let mut rng = rng(10);
        let mut row: Vec<BlockQ2K> = (0..5).map(|_| random_block(&mut rng)).collect();
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
        // d = 0.5, dmin = 0.25, scale byte i = (min i % 16) << 4 | scale (15 − i); element e
        // gets q = (e / 3) % 4, packed by hand per the module doc.
        let mut b = BlockQ2K::zeroed();
        b.d = half::f16::from_f32(0.5).to_le_bytes();
        b.dmin = half::f16::from_f32(0.25).to_le_bytes();
        for i in 0..16 {
            b.scales[i] = ((i as u8 % 16) << 4) | (15 - i as u8);
        }
        for e in 0..QK_K {
            let q = ((e / 3) % 4) as u8;
            let (n, r) = (e / 128, e % 128);
            let (j, l) = (r / 32, r % 32);
            b.qs[32 * n + l] |= q << (2 * j);
        }
        let mut y = [0f32; QK_K];
        dequantize_ref(bytemuck::bytes_of(&b), &mut y);
        for e in 0..QK_K {
            let i = e / 16;
            let want = 0.5 * (15 - i) as f32 * ((e / 3) % 4) as f32 - 0.25 * i as f32;
            assert_eq!(y[e], want, "element {e}");
        }
    }
}
