//! ICQ for GGUF Q4_1 (IR-QLoRA's information calibration quantization,
//! docs/METHODS.md#ir-qlora-icq, adapted to Q4_1's affine levels — a new method, labelled as such):
//! each 32-weight block's scale `d` and offset `m` are chosen to maximise the entropy of the
//! block's 4-bit codes, so the file stays a standard Q4_1 GGUF that any reader dequantizes as `d·q
//! + m`.
//!
//! # The search, per block `w[0..32]`
//!
//! IR-QLoRA's ICQ shifts NF4's symmetric absmax grid by an offset `τ` searched around the block
//! median. Q4_1's 16 levels `m + d·q` are the affine analogue: centred on `τ` and just covering the
//! block, `d = 2·R(τ)/15`, `m = τ − R(τ)` with `R(τ) = max_i |w_i − τ|`. The candidates are
//! - `c_0`: ggml's plain rule (`d = (max − min)/15`, `m = min`: the grid centred on the
//!   mid-range, the tightest covering grid), exactly as [`super::q4_1::quantize_ref`] writes
//!   the block, so no ICQ block has less code entropy than the plain one;
//! - then `τ = τ0 + f·a` for the `2n + 1` values `f` evenly spaced on `[−λσ, +λσ]` in
//!   ascending order, `τ0` the lower median (torch's), `a = max_i |w_i − τ0|`,
//!   `σ = 1/Φ⁻¹(0.9677083)`.
//!
//! Each candidate's codes are those the file will hold (`d` and `m` rounded to f16 first,
//! `q = clamp(round((w − m)/d), 0, 15)`), `H = −Σ_v p_v·log2 p_v` over the 16 code counts, and
//! the first candidate reaching the maximum wins (strict `>`).
//! Cost: `(2n + 2)·64` operations per block (n = 100: ≈ 13k), an offline tool's budget.

use rayon::prelude::*;

use super::q4_1::BlockQ4_1;
use super::simd::{QK, as_blocks, as_blocks_mut, f16_bytes, f16_le};

/// `σ = 1 / Φ⁻¹(0.9677083)` (the NF4 code's normal quantile at its outermost level).
pub const SIGMA: f64 = 0.541_087_20;

/// The ICQ search grid (defaults: `λ = 0.1`, `n = 100`, 201 offsets).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IcqParams {
    /// Half-width of the offset grid in units of `σ·a`.
    pub lambda: f32,
    /// The grid has `2n + 1` offsets.
    pub n: usize,
}

impl Default for IcqParams {
    fn default() -> Self {
        IcqParams {
            lambda: 0.1,
            n: 100,
        }
    }
}

/// Which candidate a block got (for statistics).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockChoice {
    /// `None`: the plain min/max grid; `Some(k)`: the k-th offset of the grid.
    pub offset: Option<usize>,
    /// Entropy of the chosen codes, bits.
    pub entropy: f64,
}

/// Entropy in bits of the 16-bin histogram of `codes` (`0·log 0 = 0`).
pub fn code_entropy(codes: &[u8]) -> f64 {
    let mut counts = [0usize; 16];
    for &q in codes {
        counts[(q & 15) as usize] += 1;
    }
    let n = codes.len().max(1) as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// The 32 codes of a Q4_1 block, element order (`j` low nibble, `j + 16` high).
pub fn block_codes(b: &BlockQ4_1) -> [u8; QK] {
    let mut q = [0u8; QK];
    for (j, &byte) in b.qs.iter().enumerate() {
        q[j] = byte & 15;
        q[j + QK / 2] = byte >> 4;
    }
    q
}

/// Mean code entropy (bits) over the blocks of Q4_1 bytes `src`.
pub fn mean_code_entropy(src: &[u8]) -> f64 {
    let blocks = as_blocks::<BlockQ4_1>(src);
    let sum: f64 = blocks.iter().map(|b| code_entropy(&block_codes(b))).sum();
    sum / blocks.len().max(1) as f64
}

/// The f16-rounded `(d, m)` of a candidate, and the codes it gives `w`.
fn codes_for(w: &[f32], d: f32, m: f32, codes: &mut [u8; QK]) -> ([u8; 2], [u8; 2]) {
    let (db, mb) = (f16_bytes(d), f16_bytes(m));
    let (d, m) = (f16_le(db), f16_le(mb));
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in codes.iter_mut().zip(w) {
        // round half up of a value in [0, 15] (up to f16 rounding), clamped like ggml.
        *q = ((v - m) * id + 0.5).floor().clamp(0.0, 15.0) as u8;
    }
    (db, mb)
}

/// Quantizes one block by the ICQ search (module doc) into `b`; returns the choice.
pub fn quantize_block_ref(w: &[f32], b: &mut BlockQ4_1, p: &IcqParams) -> BlockChoice {
    debug_assert_eq!(w.len(), QK);
    // c_0: ggml's plain rule, exactly the block `q4_1::quantize_ref` writes.
    let mut plain = [0u8; 20];
    super::q4_1::quantize_ref(w, &mut plain);
    let plain: BlockQ4_1 = bytemuck::cast(plain);
    let mut codes = block_codes(&plain);
    let mut best = (code_entropy(&codes), None, plain.d, plain.m, codes);
    // τ0: torch's lower median of 32 values (the 16th smallest).
    let mut sorted = [0f32; QK];
    sorted.copy_from_slice(w);
    sorted.sort_unstable_by(f32::total_cmp);
    let tau0 = sorted[(QK - 1) / 2] as f64;
    let a = w
        .iter()
        .map(|&v| (v as f64 - tau0).abs())
        .fold(0.0, f64::max);
    let half = p.lambda as f64 * SIGMA;
    let steps = 2 * p.n;
    for k in 0..=steps {
        let f = if steps == 0 {
            0.0
        } else {
            -half + 2.0 * half * k as f64 / steps as f64
        };
        let tau = tau0 + f * a;
        let r = w
            .iter()
            .map(|&v| (v as f64 - tau).abs())
            .fold(0.0, f64::max);
        let (db, mb) = codes_for(w, (2.0 * r / 15.0) as f32, (tau - r) as f32, &mut codes);
        let h = code_entropy(&codes);
        if h > best.0 {
            best = (h, Some(k), db, mb, codes);
        }
    }
    let (entropy, offset, db, mb, codes) = best;
    b.d = db;
    b.m = mb;
    for j in 0..QK / 2 {
        b.qs[j] = codes[j] | (codes[j + QK / 2] << 4);
    }
    BlockChoice { offset, entropy }
}

/// Scalar specification: ICQ-quantizes `src` (whole 32-blocks) into Q4_1 bytes `dst`, block by
/// block in order; returns each block's choice.
pub fn quantize_ref(src: &[f32], dst: &mut [u8], p: &IcqParams) -> Vec<BlockChoice> {
    debug_assert_eq!(src.len() / QK * 20, dst.len());
    src.chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ4_1>(dst))
        .map(|(w, b)| quantize_block_ref(w, b, p))
        .collect()
}

/// [`quantize_ref`] over rayon's threads (blocks are independent; bit-identical output).
pub fn quantize(src: &[f32], dst: &mut [u8], p: &IcqParams) -> Vec<BlockChoice> {
    debug_assert_eq!(src.len() / QK * 20, dst.len());
    src.par_chunks_exact(QK)
        .zip(as_blocks_mut::<BlockQ4_1>(dst).par_iter_mut())
        .map(|(w, b)| quantize_block_ref(w, b, p))
        .collect()
}
