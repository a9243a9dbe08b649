//! IQ4_NL: 32 weights per 18-byte block, value = d·K[q] with q a nibble indexing the fixed
//! non-linear table K (ggml's `kvalues_iq4nl`).
//!
//! Block layout (`block_iq4_nl`): f16 `d`, 16 bytes of nibbles (element j low, j + 16 high).

use super::simd::{self, QK, as_blocks, as_blocks_mut, f16_bytes, f16_le};
use bytemuck::{Pod, Zeroable};

/// ggml's `kvalues_iq4nl`: the 16 levels, sorted ascending.
pub const KVALUES: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/// One IQ4_NL block (18 bytes, align 1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockIq4Nl {
    /// Scale, IEEE half, little-endian.
    pub d: [u8; 2],
    /// Packed level indices: element j low, element j + 16 high.
    pub qs: [u8; QK / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIq4Nl>() == 18);
const _: () = assert!(std::mem::align_of::<BlockIq4Nl>() == 1);

/// Scale-search width of llama.cpp's `quantize_iq4_nl` (what `llama-quantize` writes when no
/// importance matrix is given).
const NTRY: i32 = 7;

/// Blocks whose largest magnitude is below this get d = 0 (ggml's `GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's decoding: `K[q] as f32 · d`.
#[inline(always)]
fn decode_block(b: &BlockIq4Nl, out: &mut [f32]) {
    let d = f16_le(b.d);
    for (j, &byte) in b.qs.iter().enumerate() {
        out[j] = KVALUES[(byte & 0x0F) as usize] as f32 * d;
        out[j + QK / 2] = KVALUES[(byte >> 4) as usize] as f32 * d;
    }
}

/// Scalar specification of the decoder (bit-exact with ggml and gguf-py).
pub fn dequantize_ref(src: &[u8], dst: &mut [f32]) {
    debug_assert_eq!(src.len() / 18 * QK, dst.len());
    for (b, out) in as_blocks::<BlockIq4Nl>(src)
        .iter()
        .zip(dst.chunks_exact_mut(QK))
    {
        decode_block(b, out);
    }
}

/// Decoder used by the fast paths: the reference.
pub fn dequantize(src: &[u8], dst: &mut [f32]) {
    dequantize_ref(src, dst)
}

/// Index of the level of K nearest to `x`, ties to the upper level (ggml's
/// `best_index_int8`): level i wins once 2x ≥ K[i−1] + K[i]; both sides are exact in f32.
#[inline(always)]
fn best_index(x: f32) -> usize {
    let x2 = x + x;
    let mut idx = 0;
    let mut step = 8;
    while step > 0 {
        let j = idx + step;
        if x2 >= (KVALUES[j - 1] as i32 + KVALUES[j] as i32) as f32 {
            idx = j;
        }
        step >>= 1;
    }
    idx
}

/// Σ w·q·x and Σ w·q² with w = x² (no importance weights) for the levels chosen with
/// inverse scale `id`, in ggml's f32 operation order ((w·q)·x, (w·q)·q).
#[inline(always)]
fn sums_for(xb: &[f32], id: f32) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0.0f32, 0.0f32);
    for &v in xb {
        let q = KVALUES[best_index(id * v)] as f32;
        let w = v * v;
        sumqx += w * q * v;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

/// One block as llama.cpp's `quantize_row_iq4_nl_impl(32, 32, …, quant_weights = NULL, ntry)`:
/// a least-squares scale for the levels nearest to x·127/max, then (ntry > 0) 2·ntry + 1 more
/// trial scales (itry − 127)/max keeping the one with the largest (Σwqx)²/Σwq², and the final
/// levels chosen with the winning f32 scale.
fn quantize_block(xb: &[f32], ntry: i32) -> BlockIq4Nl {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let k0 = KVALUES[0] as f32;
    let mut l = [0u8; QK];
    let d = if amax < GROUP_MAX_EPS {
        0.0
    } else {
        let d0 = if ntry > 0 { -max / k0 } else { max / k0 };
        let id0 = 1.0 / d0;
        for (lj, &v) in l.iter_mut().zip(xb) {
            *lj = best_index(id0 * v) as u8;
        }
        let (sumqx, sumq2) = sums_for(xb, id0);
        let mut d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            let id = (itry + KVALUES[0] as i32) as f32 / max;
            let (sumqx, sumq2) = sums_for(xb, id);
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        d
    };
    if ntry > 0 {
        // Final levels from the f32 scale (also for an all-zero block: id = 0 picks level 8).
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (lj, &v) in l.iter_mut().zip(xb) {
            *lj = best_index(id * v) as u8;
        }
    }
    BlockIq4Nl {
        d: f16_bytes(d),
        qs: std::array::from_fn(|j| l[j] | (l[j + 16] << 4)),
    }
}

/// llama.cpp's IQ4_NL quantizer without importance weights and with the ±7 scale search
/// (`quantize_iq4_nl(…, quant_weights = NULL)`, which is what `llama-quantize` writes and what
/// `quantize_row_iq4_nl_ref` computed before llama.cpp switched it to no search).
pub fn quantize_ref(src: &[f32], dst: &mut [u8]) {
    debug_assert_eq!(src.len() / QK * 18, dst.len());
    for (xb, b) in src.chunks_exact(QK).zip(as_blocks_mut::<BlockIq4Nl>(dst)) {
        *b = quantize_block(xb, NTRY);
    }
}

/// Σ dequantize_ref(row)[i]·x[i] in f64, rounded once: the specification of [`dot`].
pub fn dot_ref(row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0.0f32; row.len() / 18 * QK];
    dequantize_ref(row, &mut w);
    simd::dot_f64(&w, x)
}

/// Σ w[i]·x[i] for an IQ4_NL row, SIMD chosen at run time (table lookup by byte shuffle).
pub fn dot(row: &[u8], x: &[f32]) -> f32 {
    debug_assert_eq!(row.len() / 18 * QK, x.len());
    #[cfg(target_arch = "x86_64")]
    if simd::x86::has_avx2_fma_f16c() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked just above).
        return unsafe { dot_avx2(row, x) };
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of the aarch64 baseline.
    return unsafe { dot_neon(row, x) };
    #[allow(unreachable_code)]
    simd::dot_decoded_scalar(row, x, decode_block)
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2(row: &[u8], x: &[f32]) -> f32 {
    use simd::x86::{block_dot_i8, f16_scale, load16, nibbles, sum_blocks};
    use std::arch::x86_64::*;
    let table = load16(&KVALUES.map(|k| k as u8));
    sum_blocks(row, x, |b: &BlockIq4Nl, xb, acc| {
        let (lo, hi) = nibbles(load16(&b.qs));
        let sum = block_dot_i8(_mm_shuffle_epi8(table, lo), _mm_shuffle_epi8(table, hi), xb);
        _mm256_fmadd_ps(_mm256_set1_ps(f16_scale(b.d)), sum, acc)
    })
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
fn dot_neon(row: &[u8], x: &[f32]) -> f32 {
    use simd::neon::{block_dot_i8, load16, nibbles, sum_blocks};
    use std::arch::aarch64::*;
    let table = vreinterpretq_s8_u8(load16(&KVALUES.map(|k| k as u8)));
    sum_blocks(row, x, |b: &BlockIq4Nl, xb, acc| {
        let (lo, hi) = nibbles(load16(&b.qs));
        let sum = block_dot_i8(vqtbl1q_s8(table, lo), vqtbl1q_s8(table, hi), xb);
        vfmaq_n_f32(acc, sum, f16_le(b.d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::simd::test_util::*;

    const K: Kernels = Kernels {
        block_bytes: 18,
        scale_offsets: &[0],
        dequantize_ref,
        dequantize,
        dot_ref,
        dot,
        magnitude: None,
    };

    #[test]
    fn hand_built_block_decodes_to_known_values() {
        // d = 2: byte j = (j low, 15 − j high) → element j = 2·K[j], j + 16 = 2·K[15 − j].
        let mut blk = vec![0x00, 0x40];
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut out = [0.0f32; 32];
        dequantize_ref(&blk, &mut out);
        for j in 0..16 {
            assert_eq!(out[j], 2.0 * KVALUES[j] as f32);
            assert_eq!(out[j + 16], 2.0 * KVALUES[15 - j] as f32);
        }
        let x = [0.5f32; 32];
        let want = 2.0 * KVALUES.iter().map(|&k| k as f32).sum::<f32>();
        assert_eq!(dot_ref(&blk, &x), want);
        assert_eq!(dot(&blk, &x), want);
    }

    #[test]
    fn best_index_picks_the_nearest_level_ties_up() {
        for (i, &k) in KVALUES.iter().enumerate() {
            assert_eq!(best_index(k as f32), i);
        }
        assert_eq!(best_index(-1000.0), 0);
        assert_eq!(best_index(1000.0), 15);
        assert_eq!(best_index(-4.5), 8); // midpoint of −10 and 1: ties go up
        assert_eq!(best_index(-4.5001), 7);
        assert_eq!(best_index(101.0), 15); // midpoint of 89 and 113
        assert_eq!(best_index(0.0), 8);
    }

    #[test]
    fn dot_matches_ref_on_random_rows() {
        check_random_rows(&K, 70, 0.01);
    }

    #[test]
    fn dot_matches_ref_on_edge_blocks() {
        check_edge_rows(&K, 71);
    }

    #[test]
    fn quantize_reproduces_table_levels_exactly() {
        // x = 0.5·K[q] for a permutation of levels: the first least-squares scale is exactly 0.5
        // (sumqx/sumq2 = 0.5), which fits every element with zero error, so no trial scale can
        // beat it and the block must decode back to x exactly.
        let q: [usize; 32] = std::array::from_fn(|j| (j * 7 + 3) % 16);
        let x: Vec<f32> = q.iter().map(|&i| 0.5 * KVALUES[i] as f32).collect();
        let mut b = [0u8; 18];
        quantize_ref(&x, &mut b);
        assert_eq!(f16_le([b[0], b[1]]).abs(), 0.5);
        let mut back = [0.0f32; 32];
        dequantize_ref(&b, &mut back);
        assert_eq!(back.as_slice(), x.as_slice());
    }

    #[test]
    fn quantize_zero_and_tiny_blocks() {
        // Below GROUP_MAX_EPS: d = 0 and, with the scale search, every index 8 (level 1).
        let mut b = [0u8; 18];
        quantize_ref(&[1e-16; 32], &mut b);
        assert_eq!(b[..2], [0, 0]);
        assert!(b[2..].iter().all(|&v| v == 0x88));
        let blk = quantize_block(&[0.0; 32], -1);
        assert_eq!(bytemuck::bytes_of(&blk), &[0u8; 18]);
    }

    #[test]
    fn quantize_picks_the_nearest_level_for_its_scale() {
        // Whatever scale the search picks, each element is then encoded with the level nearest
        // to x/d for the f32 d; the stored d16 differs from d by at most 2^-11·|d|, which moves
        // any level value d·K by at most 127·2^-11·|d|, so (with d16 in place of d)
        // |x − d16·K[q]| ≤ min_k |x − d16·K_k| + 2·127·2^-11·|d16| (+ f32 rounding).
        let mut r = rng(72);
        let src = values(&mut r, 64 * QK, 1.5);
        for (bi, xb) in src.chunks_exact(QK).enumerate() {
            let b = quantize_block(xb, NTRY);
            let d16 = f16_le(b.d);
            assert!(d16 != 0.0);
            let mut back = [0.0f32; 32];
            decode_block(&b, &mut back);
            for (j, (&v, &w)) in xb.iter().zip(&back).enumerate() {
                let best = KVALUES
                    .iter()
                    .map(|&k| (v - d16 * k as f32).abs())
                    .fold(f32::MAX, f32::min);
                let slack = 2.0 * 127.0 * d16.abs() / 2048.0 + 1e-6 * v.abs();
                assert!(
                    (v - w).abs() <= best + slack,
                    "block {bi} elem {j}: {v} → {w}, best {best}"
                );
            }
        }
    }
}
