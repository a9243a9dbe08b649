//! 8-bit blockwise AdamW state (docs/METHODS.md#8-bit-adamw-state, bitsandbytes
//! `create_dynamic_map` and the blockwise 8-bit Adam): the signed and unsigned dynamic quantization
//! maps, nearest-level quantization, and the per-tensor update that dequantizes a block, runs the
//! f32 AdamW update, and requantizes.
//!
//! Layout of one tensor's 8-bit state (`n` elements, `nb = ceil(n / 256)` blocks):
//! `absmax_m: [f32; nb]`, `absmax_v: [f32; nb]`, `q_m: [u8; n]`, `q_v: [u8; n]`, where element
//! `j` of block `b` stands for `m = SIGNED[q_m] · absmax_m[b]`, `v = UNSIGNED[q_v] · absmax_v[b]`.
//! That is 2 bytes per element plus 8 bytes per 256 elements, against 8 for f32 state.

use super::adamw::{AdamWStep, adamw_element};

/// Elements per quantization block (bitsandbytes since PR #1365; it was 2048 before).
pub const BLOCK: usize = 256;

/// Tensors with fewer elements keep f32 state (bitsandbytes `min_8bit_size`).
pub const MIN_8BIT_NUMEL: usize = 4096;

/// Number of blocks for `n` elements.
pub fn n_blocks(n: usize) -> usize {
    n.div_ceil(BLOCK)
}

/// Bytes of 8-bit state for a tensor of `n` elements (both moments, codes and absmax).
pub fn state_bytes_8bit(n: usize) -> usize {
    2 * n + 2 * 4 * n_blocks(n)
}

/// Half the widest gap between neighbouring levels of the signed map, relative to the block's
/// absmax: the top decade (levels `(0.1 + 0.9·(k + ½)/64)`) is spaced `0.9/64` apart, and the
/// edge cases (`−1 → −0.99296875`, `1 → 1`) are no worse. The largest rounding error of `m` is
/// `SIGNED_HALF_GAP · absmax_m`.
pub const SIGNED_HALF_GAP: f64 = 0.9 / 64.0 / 2.0;

/// Half the widest gap of the unsigned map (top decade spaced `0.9/128`): the largest rounding
/// error of `v` is `UNSIGNED_HALF_GAP · absmax_v`.
pub const UNSIGNED_HALF_GAP: f64 = 0.9 / 128.0 / 2.0;

/// bitsandbytes' `create_dynamic_map(signed, max_exponent_bits = 7, total_bits = 8)`:
///
/// for `i = 0..7`, take `k_i` evenly spaced boundaries on [0.1, 1] (`2^i + 1` when signed,
/// `2^(i+1) + 1` when unsigned), and add the midpoints of neighbouring boundaries times
/// `10^(i − 6)` as levels (and their negatives when signed); then add 0 and 1 and sort.
/// Both maps have exactly 256 levels. Computed in f64 and rounded once to f32 (bitsandbytes
/// builds the boundaries with an f32 `torch.linspace`, so a level may differ in its last bit).
pub fn create_dynamic_map(signed: bool) -> [f32; 256] {
    const MAX_EXPONENT_BITS: i32 = 7;
    let mut levels = [0.0f64; 256];
    let mut len = 0;
    for i in 0..MAX_EXPONENT_BITS {
        let boundaries = if signed {
            (1usize << i) + 1
        } else {
            (1usize << (i + 1)) + 1
        };
        let scale = 10f64.powi(i - (MAX_EXPONENT_BITS - 1));
        let step = 0.9 / (boundaries - 1) as f64;
        for k in 0..boundaries - 1 {
            let lo = 0.1 + step * k as f64;
            let hi = 0.1 + step * (k + 1) as f64;
            let mid = (lo + hi) / 2.0;
            levels[len] = scale * mid;
            len += 1;
            if signed {
                levels[len] = -scale * mid;
                len += 1;
            }
        }
    }
    // 127 (signed, ×2) or 254 (unsigned) levels so far; 0 and 1 complete the 256.
    levels[len] = 0.0;
    levels[len + 1] = 1.0;
    debug_assert_eq!(len + 2, 256);
    levels.sort_by(f64::total_cmp);
    let mut out = [0.0f32; 256];
    for (o, l) in out.iter_mut().zip(levels) {
        *o = l as f32;
    }
    out
}

/// The two maps of docs/METHODS.md#8-bit-adamw-state: `signed` for `m`, `unsigned` for `v` (each
/// sorted ascending).
#[derive(Clone, Debug)]
pub struct DynamicMaps {
    pub signed: [f32; 256],
    pub unsigned: [f32; 256],
    /// Code of the level 0 in `signed` (the state of a fresh tensor).
    pub signed_zero: u8,
}

impl DynamicMaps {
    pub fn new() -> Self {
        let signed = create_dynamic_map(true);
        let unsigned = create_dynamic_map(false);
        let signed_zero = quantize_nearest(&signed, 0.0);
        Self {
            signed,
            unsigned,
            signed_zero,
        }
    }
}

impl Default for DynamicMaps {
    fn default() -> Self {
        Self::new()
    }
}

/// Code of the level of `map` (sorted ascending) nearest to `x`; a tie goes to the lower level,
/// values beyond the ends go to the end levels, NaN to code 0.
#[inline]
pub fn quantize_nearest(map: &[f32; 256], x: f32) -> u8 {
    // First level >= x, then compare with its lower neighbour.
    let hi = map.partition_point(|&level| level < x);
    if hi == 0 {
        return 0;
    }
    if hi == 256 {
        return 255;
    }
    let lo = hi - 1;
    if x - map[lo] <= map[hi] - x {
        lo as u8
    } else {
        hi as u8
    }
}

/// Resets a tensor's 8-bit state to `m = v = 0`.
pub fn reset_8bit(maps: &DynamicMaps, absmax: &mut [f32], q_m: &mut [u8], q_v: &mut [u8]) {
    absmax.fill(0.0);
    q_m.fill(maps.signed_zero);
    // The unsigned map's level 0 is its first entry.
    q_v.fill(0);
}

/// One AdamW update of a tensor with 8-bit blockwise state.
///
/// Per block of [`BLOCK`] elements (the last may be shorter): dequantize `m`, `v`; run the f32
/// AdamW element update of adamw.rs (the parameter moves by the **new unquantized** `m`, `v`, as
/// in bitsandbytes); take the new absmax of each moment over the block; store each moment as the
/// nearest level of its map after dividing by that absmax (all-zero blocks store absmax 0).
///
/// `absmax` holds `absmax_m` in its first `nb` entries and `absmax_v` in the next `nb`.
/// Lengths are validated by the caller (`p`, `g`, `q_m`, `q_v`: n; `absmax`: 2·nb).
pub fn adamw_update_8bit(
    param: &mut [f32],
    grad: &[f32],
    absmax: &mut [f32],
    q_m: &mut [u8],
    q_v: &mut [u8],
    k: &AdamWStep,
    maps: &DynamicMaps,
) {
    let n = param.len();
    let nb = n_blocks(n);
    debug_assert!(grad.len() == n && q_m.len() == n && q_v.len() == n && absmax.len() == 2 * nb);
    let (absmax_m, absmax_v) = absmax.split_at_mut(nb);
    // The new moments of one block, unquantized (stack scratch: no allocation).
    let mut m_new = [0.0f32; BLOCK];
    let mut v_new = [0.0f32; BLOCK];
    for b in 0..nb {
        let start = b * BLOCK;
        let end = (start + BLOCK).min(n);
        let len = end - start;
        let (am, av) = (absmax_m[b], absmax_v[b]);
        let mut max_m = 0.0f32;
        let mut max_v = 0.0f32;
        for j in 0..len {
            let i = start + j;
            let mut m = maps.signed[q_m[i] as usize] * am;
            let mut v = maps.unsigned[q_v[i] as usize] * av;
            adamw_element(&mut param[i], grad[i], &mut m, &mut v, k);
            m_new[j] = m;
            v_new[j] = v;
            max_m = max_m.max(m.abs());
            max_v = max_v.max(v.abs());
        }
        absmax_m[b] = max_m;
        absmax_v[b] = max_v;
        for j in 0..len {
            let i = start + j;
            q_m[i] = if max_m > 0.0 {
                quantize_nearest(&maps.signed, m_new[j] / max_m)
            } else {
                maps.signed_zero
            };
            q_v[i] = if max_v > 0.0 {
                quantize_nearest(&maps.unsigned, v_new[j] / max_v)
            } else {
                0
            };
        }
    }
}

/// Dequantizes one moment of a tensor (for tests and inspection): `out[i] = map[q[i]] ·
/// absmax[i / 256]`.
pub fn dequantize_ref(map: &[f32; 256], q: &[u8], absmax: &[f32], out: &mut [f32]) {
    for (i, (o, &c)) in out.iter_mut().zip(q).enumerate() {
        *o = map[c as usize] * absmax[i / BLOCK];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_have_the_documented_levels() {
        let s = create_dynamic_map(true);
        let u = create_dynamic_map(false);
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "signed map strictly ascending"
        );
        assert!(
            u.windows(2).all(|w| w[0] < w[1]),
            "unsigned map strictly ascending"
        );
        // Ranges and smallest nonzero magnitudes from docs/METHODS.md#8-bit-adamw-state.
        assert_eq!(s[0], -0.99296875);
        assert_eq!(s[255], 1.0);
        assert_eq!(u[0], 0.0);
        assert_eq!(u[255], 1.0);
        let smallest = |m: &[f32; 256]| {
            m.iter()
                .filter(|x| **x != 0.0)
                .fold(f32::INFINITY, |a, x| a.min(x.abs()))
        };
        assert!((smallest(&s) - 5.5e-7).abs() < 1e-12);
        assert!((smallest(&u) - 3.25e-7).abs() < 1e-12);
        // Signed map: symmetric apart from 0 and +1.
        let neg = s.iter().filter(|x| **x < 0.0).count();
        assert_eq!(neg, 127);
        for x in s.iter().filter(|x| **x < 0.0) {
            assert!(s.contains(&-*x));
        }
        // Top decade of the unsigned map: 128 levels in [0.1, 1) spaced 0.9/128.
        let top: Vec<f32> = u
            .iter()
            .copied()
            .filter(|x| *x >= 0.1 && *x < 1.0)
            .collect();
        assert_eq!(top.len(), 128);
        assert!((top[1] - top[0] - 0.9 / 128.0).abs() < 1e-6);
    }

    #[test]
    fn largest_gap_matches_the_half_gap_constants() {
        let gap = |m: &[f32; 256]| {
            m.windows(2)
                .fold(0.0f64, |a, w| a.max((w[1] - w[0]) as f64))
        };
        let s = create_dynamic_map(true);
        let u = create_dynamic_map(false);
        assert!((gap(&s) / 2.0 - SIGNED_HALF_GAP).abs() < 1e-7);
        assert!((gap(&u) / 2.0 - UNSIGNED_HALF_GAP).abs() < 1e-7);
    }

    #[test]
    fn quantize_picks_the_nearest_level() {
        let maps = DynamicMaps::new();
        for map in [&maps.signed, &maps.unsigned] {
            // Every level maps to itself; points between levels go to the nearer one.
            for (c, &l) in map.iter().enumerate() {
                assert_eq!(quantize_nearest(map, l) as usize, c);
            }
            let lo = map[0];
            for i in 0..2001 {
                let x = lo + (1.0 - lo) * i as f32 / 2000.0;
                let c = quantize_nearest(map, x) as usize;
                let best = map
                    .iter()
                    .map(|l| (l - x).abs())
                    .fold(f32::INFINITY, f32::min);
                assert_eq!((map[c] - x).abs(), best, "x = {x}");
            }
        }
        assert_eq!(maps.signed[maps.signed_zero as usize], 0.0);
        assert_eq!(quantize_nearest(&maps.signed, -5.0), 0);
        assert_eq!(quantize_nearest(&maps.unsigned, 5.0), 255);
    }
}
