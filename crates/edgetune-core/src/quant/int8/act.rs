//! Activations quantized per block to 8 bits, the right-hand side of every integer product.
//!
//! A row of `cols` f32 activations is cut into blocks of `block` values (32 for llama.cpp's
//! Q8_0 / Q8_1, 256 for Q8_K); each block gets `d = amax/127` and `q_i = round(x_i·127/amax)`
//! (ties to even), so `x̂_i = d·q_i` and `|x_i − x̂_i| ≤ d/2`. Per sub-block of `sub` values
//! (the weight type's 16 or 32) the row also keeps Σq (integer) and d·Σq (f32, Q8_1's `s`),
//! which the kernels need for the weights' zero levels and mins, and the sub-block's `d`
//! repeated, so every kernel indexes scales by sub-block whatever the block size.
//!
//! Layout for `n` rows: `qs [n, cols]` i8, and `d`, `isum`, `dsum` each `[n, cols/sub]`.

use super::Level;

/// The activation block types llama.cpp pairs with weight types (its `vec_dot_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActType {
    /// 32 values, one scale (paired with Q4_0, Q5_0, Q8_0, IQ4_NL).
    Q8_0,
    /// 32 values, one scale and d·Σq (paired with Q4_1, Q5_1).
    Q8_1,
    /// 256 values, one scale, sums per 16 (paired with the K-quants).
    Q8K,
}

impl ActType {
    /// Values per block (one scale each).
    pub fn block(self) -> usize {
        match self {
            ActType::Q8_0 | ActType::Q8_1 => 32,
            ActType::Q8K => 256,
        }
    }
}

/// One quantized row, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct ActRow<'a> {
    /// `cols` quants.
    pub qs: &'a [i8],
    /// Scale per sub-block (the scale of the block holding it).
    pub d: &'a [f32],
    /// Σq per sub-block.
    pub isum: &'a [i32],
    /// d·Σq per sub-block.
    pub dsum: &'a [f32],
}

/// `n` rows of quantized activations; grows on demand and is reused across calls.
#[derive(Default, Debug)]
pub struct QuantActs {
    n: usize,
    cols: usize,
    sub: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    isum: Vec<i32>,
    dsum: Vec<f32>,
}

impl QuantActs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows held.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Quantizes `x` (`[n, cols]`, `cols` a multiple of `act.block()` and of `sub`) with the
    /// fastest quantizer of `level`; every row gives the same bytes as [`quantize_row_ref`].
    pub fn quantize(
        &mut self,
        level: Level,
        x: &[f32],
        n: usize,
        cols: usize,
        act: ActType,
        sub: usize,
    ) {
        self.resize(n, cols, sub);
        let (ns, block) = (cols / sub, act.block());
        for (t, xr) in x.chunks_exact(cols).take(n).enumerate() {
            let s = t * ns..(t + 1) * ns;
            quantize_row(
                level,
                xr,
                block,
                sub,
                &mut self.qs[t * cols..(t + 1) * cols],
                &mut self.d[s.clone()],
                &mut self.isum[s.clone()],
                &mut self.dsum[s],
            );
        }
    }

    /// Same, on the rayon pool (one task per group of rows): for prompts.
    pub fn quantize_par(
        &mut self,
        level: Level,
        x: &[f32],
        n: usize,
        cols: usize,
        act: ActType,
        sub: usize,
    ) {
        use rayon::prelude::*;
        self.resize(n, cols, sub);
        let (ns, block) = (cols / sub, act.block());
        // Rows per task: enough values per task (≥ 16 Ki) that the split costs little.
        let rows = (16384 / cols.max(1)).clamp(1, n.max(1));
        self.qs[..n * cols]
            .par_chunks_mut(rows * cols)
            .zip(self.d[..n * ns].par_chunks_mut(rows * ns))
            .zip(self.isum[..n * ns].par_chunks_mut(rows * ns))
            .zip(self.dsum[..n * ns].par_chunks_mut(rows * ns))
            .zip(x[..n * cols].par_chunks(rows * cols))
            .for_each(|((((qs, d), isum), dsum), x)| {
                for (t, xr) in x.chunks_exact(cols).enumerate() {
                    let s = t * ns..(t + 1) * ns;
                    quantize_row(
                        level,
                        xr,
                        block,
                        sub,
                        &mut qs[t * cols..(t + 1) * cols],
                        &mut d[s.clone()],
                        &mut isum[s.clone()],
                        &mut dsum[s],
                    );
                }
            });
    }

    fn resize(&mut self, n: usize, cols: usize, sub: usize) {
        let ns = cols / sub;
        (self.n, self.cols, self.sub) = (n, cols, sub);
        if self.qs.len() < n * cols {
            self.qs.resize(n * cols, 0);
        }
        for v in [&mut self.d, &mut self.dsum] {
            if v.len() < n * ns {
                v.resize(n * ns, 0.0);
            }
        }
        if self.isum.len() < n * ns {
            self.isum.resize(n * ns, 0);
        }
    }

    /// Row `t` (< n).
    pub fn row(&self, t: usize) -> ActRow<'_> {
        let ns = self.cols / self.sub;
        ActRow {
            qs: &self.qs[t * self.cols..(t + 1) * self.cols],
            d: &self.d[t * ns..(t + 1) * ns],
            isum: &self.isum[t * ns..(t + 1) * ns],
            dsum: &self.dsum[t * ns..(t + 1) * ns],
        }
    }

    /// All quants, `[n, cols]` (the tile kernels read several rows at once).
    pub(crate) fn qs(&self) -> &[i8] {
        &self.qs[..self.n * self.cols]
    }

    /// All sub-block scales, `[n, cols/sub]`.
    pub(crate) fn d(&self) -> &[f32] {
        &self.d[..self.n * self.cols / self.sub]
    }

    /// All d·Σq, `[n, cols/sub]`.
    pub(crate) fn dsum(&self) -> &[f32] {
        &self.dsum[..self.n * self.cols / self.sub]
    }

    /// Bytes held (for memory reports).
    pub fn bytes(&self) -> usize {
        self.qs.len() + 4 * (self.d.len() + self.isum.len() + self.dsum.len())
    }
}

/// Blocks whose largest magnitude is below this quantize to zero (their `127/amax` would
/// overflow or lose all precision; such values contribute nothing measurable).
const TINY: f32 = 1e-30;

/// `(d, 1/d)` of a block whose largest magnitude is `amax`: `d = amax/127`, and the factor
/// `127/amax` every value is multiplied by (both 0 for an all-zero or negligible block).
#[inline(always)]
fn scales(amax: f32) -> (f32, f32) {
    if amax > TINY {
        (amax / 127.0, 127.0 / amax)
    } else {
        (0.0, 0.0)
    }
}

/// Scalar specification: quantizes one row `x` (`cols` values) in blocks of `block` with sums
/// per sub-block of `sub`. `qs` holds `cols` values; `d`, `isum`, `dsum` hold `cols/sub`.
#[allow(clippy::too_many_arguments)]
pub fn quantize_row_ref(
    x: &[f32],
    block: usize,
    sub: usize,
    qs: &mut [i8],
    d: &mut [f32],
    isum: &mut [i32],
    dsum: &mut [f32],
) {
    for (b, (xb, qb)) in x
        .chunks_exact(block)
        .zip(qs.chunks_exact_mut(block))
        .enumerate()
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let (db, id) = scales(amax);
        for (q, v) in qb.iter_mut().zip(xb) {
            // |v·id| ≤ 127 up to one rounding, which cannot reach 127.5.
            *q = (v * id).round_ties_even() as i8;
        }
        let per = block / sub;
        for s in 0..per {
            let j = b * per + s;
            let sum: i32 = qb[s * sub..(s + 1) * sub].iter().map(|&q| q as i32).sum();
            d[j] = db;
            isum[j] = sum;
            dsum[j] = db * sum as f32;
        }
    }
}

/// [`quantize_row_ref`] with SIMD where `level` has it (same bytes and values).
#[allow(clippy::too_many_arguments)]
pub fn quantize_row(
    level: Level,
    x: &[f32],
    block: usize,
    sub: usize,
    qs: &mut [i8],
    d: &mut [f32],
    isum: &mut [i32],
    dsum: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if level.has_avx2() && sub.is_multiple_of(16) && block.is_multiple_of(sub) {
        // SAFETY: `has_avx2` means the CPU has AVX2, FMA and F16C (levels are only ever made
        // from run-time detection, capped at what the CPU has).
        return unsafe { quantize_row_avx2(x, block, sub, qs, d, isum, dsum) };
    }
    #[cfg(target_arch = "aarch64")]
    if sub.is_multiple_of(16) && block.is_multiple_of(sub) {
        // SAFETY: NEON is part of the aarch64 baseline.
        return unsafe { quantize_row_neon(x, block, sub, qs, d, isum, dsum) };
    }
    let _ = level;
    quantize_row_ref(x, block, sub, qs, d, isum, dsum)
}

/// # Safety
/// The CPU must support AVX2 and FMA; `sub` a multiple of 16 dividing `block`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn quantize_row_avx2(
    x: &[f32],
    block: usize,
    sub: usize,
    qs: &mut [i8],
    d: &mut [f32],
    isum: &mut [i32],
    dsum: &mut [f32],
) {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let per = block / sub;
    for (b, (xb, qb)) in x
        .chunks_exact(block)
        .zip(qs.chunks_exact_mut(block))
        .enumerate()
    {
        let mut m = _mm256_setzero_ps();
        for v in xb.chunks_exact(8) {
            // SAFETY: v holds 8 f32.
            m = _mm256_max_ps(
                m,
                _mm256_andnot_ps(sign, unsafe { _mm256_loadu_ps(v.as_ptr()) }),
            );
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_movehdup_ps(m2)));
        let (db, id) = scales(amax);
        let idv = _mm256_set1_ps(id);
        for s in 0..per {
            let mut sum = _mm256_setzero_si256();
            for k in (0..sub).step_by(16) {
                let i = s * sub + k;
                // SAFETY: i + 16 ≤ block = xb.len() = qb.len().
                unsafe {
                    let p = xb.as_ptr().add(i);
                    // cvtps rounds to nearest even (the default MXCSR mode), as the reference.
                    let a = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p), idv));
                    let c = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(p.add(8)), idv));
                    sum = _mm256_add_epi32(sum, _mm256_add_epi32(a, c));
                    // Values fit i8, so the saturating packs are exact; packs interleave the
                    // 128-bit lanes (a0 c0 a1 c1), which the permute puts back in order.
                    let w = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, c));
                    let b8 = _mm_packs_epi16(
                        _mm256_castsi256_si128(w),
                        _mm256_extracti128_si256::<1>(w),
                    );
                    _mm_storeu_si128(qb.as_mut_ptr().add(i).cast(), b8);
                }
            }
            let s4 = _mm_add_epi32(
                _mm256_castsi256_si128(sum),
                _mm256_extracti128_si256::<1>(sum),
            );
            let s2 = _mm_add_epi32(s4, _mm_unpackhi_epi64(s4, s4));
            let total = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<1>(s2)));
            let j = b * per + s;
            d[j] = db;
            isum[j] = total;
            dsum[j] = db * total as f32;
        }
    }
}

/// # Safety
/// NEON (always present on aarch64); `sub` a multiple of 16 dividing `block`.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
#[allow(clippy::too_many_arguments)]
unsafe fn quantize_row_neon(
    x: &[f32],
    block: usize,
    sub: usize,
    qs: &mut [i8],
    d: &mut [f32],
    isum: &mut [i32],
    dsum: &mut [f32],
) {
    use std::arch::aarch64::*;
    let per = block / sub;
    for (b, (xb, qb)) in x
        .chunks_exact(block)
        .zip(qs.chunks_exact_mut(block))
        .enumerate()
    {
        let mut m = vdupq_n_f32(0.0);
        for v in xb.chunks_exact(4) {
            // SAFETY: v holds 4 f32.
            m = vmaxq_f32(m, vabsq_f32(unsafe { vld1q_f32(v.as_ptr()) }));
        }
        let (db, id) = scales(vmaxvq_f32(m));
        for s in 0..per {
            let mut sum = vdupq_n_s32(0);
            for k in (0..sub).step_by(16) {
                let i = s * sub + k;
                // SAFETY: i + 16 ≤ block = xb.len() = qb.len().
                unsafe {
                    let p = xb.as_ptr().add(i);
                    // vcvtnq rounds to nearest even, as the reference.
                    let q: [int32x4_t; 4] = std::array::from_fn(|k| {
                        vcvtnq_s32_f32(vmulq_n_f32(vld1q_f32(p.add(4 * k)), id))
                    });
                    sum = vaddq_s32(sum, vaddq_s32(vaddq_s32(q[0], q[1]), vaddq_s32(q[2], q[3])));
                    let h0 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
                    let h1 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
                    let b8 = vcombine_s8(vqmovn_s16(h0), vqmovn_s16(h1));
                    vst1q_s8(qb.as_mut_ptr().add(i), b8);
                }
            }
            let total = vaddvq_s32(sum);
            let j = b * per + s;
            d[j] = db;
            isum[j] = total;
            dsum[j] = db * total as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::simd::test_util::{rng, values};

    fn quantize_with(
        level: Level,
        x: &[f32],
        block: usize,
        sub: usize,
    ) -> (Vec<i8>, Vec<f32>, Vec<i32>, Vec<f32>) {
        let ns = x.len() / sub;
        let (mut qs, mut d, mut is, mut ds) = (
            vec![0i8; x.len()],
            vec![0.0; ns],
            vec![0; ns],
            vec![0.0; ns],
        );
        quantize_row(level, x, block, sub, &mut qs, &mut d, &mut is, &mut ds);
        (qs, d, is, ds)
    }

    #[test]
    fn simd_quantizer_equals_the_reference_bit_for_bit() {
        let mut r = rng(5);
        for (block, sub) in [(32, 32), (32, 16), (256, 16), (256, 32)] {
            let mut x = values(&mut r, 4 * 256, 1.5);
            x[..block].fill(0.0); // an all-zero block: d = 0, q = 0
            x[block + 3] = 1e30; // a huge outlier
            let ns = x.len() / sub;
            let (mut qs, mut d, mut is, mut ds) = (
                vec![0i8; x.len()],
                vec![0.0; ns],
                vec![0; ns],
                vec![0.0; ns],
            );
            quantize_row_ref(&x, block, sub, &mut qs, &mut d, &mut is, &mut ds);
            for level in Level::available() {
                let got = quantize_with(level, &x, block, sub);
                assert_eq!(got.0, qs, "{level:?} {block}/{sub} qs");
                assert_eq!(got.2, is, "{level:?} {block}/{sub} isum");
                assert_eq!(
                    got.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    d.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
                assert_eq!(
                    got.3.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    ds.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                );
            }
        }
    }

    #[test]
    fn reference_error_is_at_most_half_a_step() {
        let mut r = rng(6);
        let x = values(&mut r, 512, 0.7);
        for (block, sub) in [(32, 32), (256, 16)] {
            let (qs, d, is, ds) = quantize_with(Level::Scalar, &x, block, sub);
            for (i, (&v, &q)) in x.iter().zip(&qs).enumerate() {
                let db = d[i / sub];
                assert!(q.unsigned_abs() <= 127);
                assert!(
                    (v - db * q as f32).abs() <= 0.5 * db * (1.0 + 1e-6),
                    "{i}: {v} vs {db}·{q}"
                );
            }
            for j in 0..x.len() / sub {
                let sum: i32 = qs[j * sub..(j + 1) * sub].iter().map(|&q| q as i32).sum();
                assert_eq!(is[j], sum);
                assert_eq!(ds[j], d[j] * sum as f32);
            }
        }
    }

    #[test]
    fn quant_acts_rows_match_single_rows() {
        let mut r = rng(7);
        let (n, cols) = (5, 512);
        let x = values(&mut r, n * cols, 1.0);
        let mut a = QuantActs::new();
        let mut b = QuantActs::new();
        a.quantize(Level::detect(), &x, n, cols, ActType::Q8K, 16);
        b.quantize_par(Level::detect(), &x, n, cols, ActType::Q8K, 16);
        for t in 0..n {
            let (qs, d, is, ds) =
                quantize_with(Level::Scalar, &x[t * cols..(t + 1) * cols], 256, 16);
            for q in [&a, &b] {
                let row = q.row(t);
                assert_eq!(row.qs, &qs[..]);
                assert_eq!(row.d, &d[..]);
                assert_eq!(row.isum, &is[..]);
                assert_eq!(row.dsum, &ds[..]);
            }
        }
    }
}
