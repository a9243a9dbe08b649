//! Scale searches of llama.cpp's reference K-quant quantizers (`make_qkx2_quants`,
//! `make_qx_quants`), rewritten in Rust with the same f32 operation order.
//!
//! They pick, for one sub-block of 16 or 32 values, the scale (and min) that minimises a
//! weighted squared error over a small grid of candidate inverse scales. Matching ggml's
//! arithmetic step by step (f32 products in the same association, ggml's `nearest_int`, strict
//! comparisons) keeps our quantized blocks and their error statistics comparable with files
//! llama.cpp writes. Nothing here panics on NaN or infinite input: it just produces the same
//! meaningless codes C would.

use super::{QK_K, f16_le, f16_le_from_f32, get_scale_min_k4, nearest_int, pack_scales_mins_k4};

/// What the Q4_K / Q5_K reference quantizers decide for one 256-element block before packing
/// the quants: f16 `d` and `dmin`, the 12 packed scale/min bytes, and one level per element.
pub(crate) struct ScaleMinFit {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub levels: [u8; QK_K],
}

/// The shared part of llama.cpp's `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref` for one
/// block `x` (256 values): per 32-element sub-block a [`make_qkx2_quants`] fit with weights
/// `rms(sub-block) + |x|`; the scales and mins rounded to 6 bits against the largest of each
/// (super-scales `max/63` in f16); then every element re-quantized to `0..=nmax` with the
/// scales as they will decode. Sub-blocks whose decoded scale is 0 keep the fit's levels, as in
/// ggml.
pub(crate) fn fit_scale_min_block(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ScaleMinFit {
    debug_assert_eq!(x.len(), QK_K);
    let mut levels = [0u8; QK_K];
    let mut weights = [0f32; 32];
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    let (mut max_scale, mut max_min) = (0f32, 0f32);
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let lv = &mut levels[32 * j..32 * j + 32];
        (scales[j], mins[j]) = make_qkx2_quants(nmax, xs, &weights, lv, rmin, rdelta, nstep);
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    for j in 0..8 {
        // `as u8` wraps like C's int → uint8_t conversion before the clamp to 63.
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scales_mins_k4(&ls, &lm);
    let (d16, dmin16) = (
        f16_le_from_f32(max_scale / 63.0),
        f16_le_from_f32(max_min / 63.0),
    );

    // Re-quantize with the scales as they will be decoded.
    let (d, dmin) = (f16_le(d16), f16_le(dmin16));
    for j in 0..8 {
        let (sc, m) = get_scale_min_k4(j, &packed);
        let dj = d * f32::from(sc);
        if dj == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest_int((x[i] + dm) / dj).clamp(0, nmax) as u8;
        }
    }
    ScaleMinFit {
        d: d16,
        dmin: dmin16,
        scales: packed,
        levels,
    }
}

/// Asymmetric fit `x ≈ scale·L − min` with `L` in `0..=nmax`, ggml's `make_qkx2_quants`.
///
/// `x`, `weights`, `levels` have the same length (16 or 32). Returns `(scale, min)` where `min`
/// is ≥ 0 and is *subtracted* on dequantization (ggml's `the_min`). `levels` receives the codes
/// for the returned scale and min. `rmin`, `rdelta`, `nstep`: the candidate inverse scales are
/// `(rmin + rdelta·is + nmax)/(max − min)` for `is` in `0..=nstep`.
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    debug_assert!(n > 0 && n <= 32 && weights.len() == n && levels.len() == n);
    let mut laux = [0u8; 32];
    let laux = &mut laux[..n.min(32)];

    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let nmax_f = nmax as f32;
    let mut iscale = nmax_f / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax_f) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let wl = weights[i] * l as f32;
            sum_l += wl;
            sum_l2 += wl * l as f32;
            sum_xl += wl * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let diff = this_scale * laux[i] as f32 + this_min - x[i];
                cur_error += weights[i] * (diff * diff);
            }
            if cur_error < best_error {
                levels.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Symmetric fit `x ≈ scale·(L − nmax)` with `L` in `0..2·nmax`, ggml's `make_qx_quants` with
/// `rmse_type = 1` and no importance weights: the error weights are `x²`, and 18 candidate
/// inverse scales `−(nmax + 0.1·is)/max` (is = ±1…±9) are tried after the plain one.
///
/// Returns the scale (negative when the largest-magnitude value is positive, as in ggml);
/// `levels` receives the codes `L`.
pub(crate) fn make_qx_quants_rmse1(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    const GROUP_MAX_EPS: f32 = 1e-15;
    let n = x.len();
    debug_assert!(levels.len() == n);
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let nmax_f = nmax as f32;
    let quantize = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);

    let mut iscale = -nmax_f / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for (i, &v) in x.iter().enumerate() {
        let l = quantize(iscale, v);
        levels[i] = (l + nmax) as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax_f + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = quantize(iscale, v);
            let w = v * v;
            sumlx += w * v * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (i, &v) in x.iter().enumerate() {
                levels[i] = (quantize(iscale, v) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qkx2_fits_an_exact_grid_exactly() {
        // x = 0.25·L − 0.5 for L = 0..15 twice: the fit must recover scale 0.25, min 0.5 and
        // the levels themselves (the grid search's first candidate already has zero error).
        let x: Vec<f32> = (0..32).map(|i| 0.25 * (i % 16) as f32 - 0.5).collect();
        let w: Vec<f32> = x.iter().map(|v| 1.0 + v.abs()).collect();
        let mut l = [0u8; 32];
        let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, -1.0, 0.1, 20);
        assert!((scale - 0.25).abs() < 1e-6, "scale {scale}");
        assert!((min - 0.5).abs() < 1e-6, "min {min}");
        for i in 0..32 {
            assert_eq!(l[i] as usize, i % 16);
        }
    }

    #[test]
    fn qkx2_constant_block_has_zero_scale() {
        let x = [0.75f32; 32];
        let w = [1.0f32; 32];
        let mut l = [9u8; 32];
        // min is clamped to 0 from above, so max (0.75) != min (0): a positive constant block
        // is a scale fit with min 0. A zero block is the degenerate case.
        let (scale, min) = make_qkx2_quants(15, &[0.0; 32], &w, &mut l, -1.0, 0.1, 20);
        assert_eq!((scale, min), (0.0, 0.0));
        assert!(l.iter().all(|&v| v == 0));
        let (scale, min) = make_qkx2_quants(15, &x, &w, &mut l, -1.0, 0.1, 20);
        assert_eq!(min, 0.0);
        assert!((scale * l[0] as f32 - 0.75).abs() < 1e-6);
    }

    #[test]
    fn qx_symmetric_fit_is_close_on_a_grid() {
        // x = 0.1·(L − 32) with L spread over 0..63: the fit reproduces the values to within
        // half a step of the returned scale.
        let x: Vec<f32> = (0..16).map(|i| 0.1 * (i as f32 * 4.0 - 32.0)).collect();
        let mut l = [0i8; 16];
        let scale = make_qx_quants_rmse1(32, &x, &mut l);
        for i in 0..16 {
            let y = scale * (l[i] as f32 - 32.0);
            assert!(
                (y - x[i]).abs() <= 0.5 * scale.abs() + 1e-6,
                "{i}: {y} vs {}",
                x[i]
            );
        }
        let mut l0 = [5i8; 16];
        assert_eq!(make_qx_quants_rmse1(32, &[0.0; 16], &mut l0), 0.0);
        assert!(l0.iter().all(|&v| v == 0));
    }
}
