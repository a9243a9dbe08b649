//! The Q/K row order of GGUF against Hugging Face (docs/FORMATS.md#qk-row-order).
//!
//! llama.cpp's RoPE rotates adjacent pairs `(2i, 2i+1)` of each head; HF's rotates `(i, i+d/2)`.
//! The HF → GGUF converter therefore reorders the output rows of `q_proj` (per query head) and
//! `k_proj` (per KV head) with `reshape(n_head, 2, d/2, cols).swapaxes(1, 2)`:
//! GGUF row `h·d + 2i + s` is HF row `h·d + s·d/2 + i` (`s` ∈ {0, 1}, `i` < d/2).
//! A LoRA `B` `[out, r]` has the linear's output rows, so it moves the same way (`A` does not:
//! its rows are rank, its columns the unpermuted input).

use edgetune_core::{Error, Result};

/// Checks `len` values as rows of `cols` in `n_head` heads of an even width; returns the head
/// width `d`.
fn head_width(len: usize, n_head: usize, cols: usize) -> Result<usize> {
    let bad = || {
        Error::Invalid(format!(
            "Q/K permutation: {len} values are not rows of {cols} in {n_head} heads of an even width"
        ))
    };
    if cols == 0 || n_head == 0 || !len.is_multiple_of(cols) {
        return Err(bad());
    }
    let rows = len / cols;
    if !rows.is_multiple_of(n_head) || !(rows / n_head).is_multiple_of(2) {
        return Err(bad());
    }
    Ok(rows / n_head)
}

/// `(gguf row, hf row)` pairs of one head of width `d`, offset by `base`.
fn row_pairs(base: usize, d: usize) -> impl Iterator<Item = (usize, usize)> {
    let half = d / 2;
    (0..half).flat_map(move |i| (0..2).map(move |s| (base + 2 * i + s, base + s * half + i)))
}

fn reorder(src: &[f32], n_head: usize, cols: usize, to_gguf: bool) -> Result<Vec<f32>> {
    let d = head_width(src.len(), n_head, cols)?;
    let mut out = vec![0.0f32; src.len()];
    for h in 0..n_head {
        for (g, f) in row_pairs(h * d, d) {
            let (dst, from) = if to_gguf { (g, f) } else { (f, g) };
            out[dst * cols..(dst + 1) * cols].copy_from_slice(&src[from * cols..(from + 1) * cols]);
        }
    }
    Ok(out)
}

/// HF row order → GGUF row order (what the converter does to `q_proj`/`k_proj`).
pub fn hf_to_gguf_rows(src: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    reorder(src, n_head, cols, true)
}

/// GGUF row order → HF row order (the inverse).
pub fn gguf_to_hf_rows(src: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    reorder(src, n_head, cols, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_converter_on_a_hand_worked_case() {
        // Two heads of width 4, one column; values are the HF row numbers. Per head, the
        // converter's reshape(2, 2, 1).swapaxes → rows (s=0,i=0), (s=1,i=0), (s=0,i=1), (s=1,i=1)
        // = HF rows 0, 2, 1, 3.
        let hf: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let gguf = hf_to_gguf_rows(&hf, 2, 1).unwrap();
        assert_eq!(gguf, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(gguf_to_hf_rows(&gguf, 2, 1).unwrap(), hf);
    }

    #[test]
    fn moves_whole_rows_and_inverts() {
        // One head of width 6, rows of 2: GGUF rows = HF rows 0,3,1,4,2,5.
        let hf: Vec<f32> = (0..12).map(|v| v as f32).collect();
        let gguf = hf_to_gguf_rows(&hf, 1, 2).unwrap();
        assert_eq!(gguf, [0., 1., 6., 7., 2., 3., 8., 9., 4., 5., 10., 11.]);
        assert_eq!(gguf_to_hf_rows(&gguf, 1, 2).unwrap(), hf);
        assert!(hf_to_gguf_rows(&hf, 4, 2).is_err()); // 6 rows in 4 heads
        assert!(hf_to_gguf_rows(&hf, 2, 2).is_err()); // heads of width 3
    }
}
