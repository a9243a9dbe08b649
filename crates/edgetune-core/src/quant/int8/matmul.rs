//! `y[n, out] = x[n, in]·Wᵀ` with integer kernels (the int8 counterpart of
//! [`crate::quant::matmul::matmul_xwt`], same shapes and layout).
//!
//! 1. The activations are quantized once per call to the type's block format (on the calling
//!    thread, or the pool for many tokens) into a per-thread buffer.
//! 2. Few tokens (≤ [`GEMV_MAX_TOKENS`]), or no tile kernel for this CPU: the rows of W are split
//!    into equal contiguous ranges, a few per worker, and each weight row is read once, straight
//!    from its blocks, by the type's matrix-vector kernel for every token.
//! 3. More tokens: each task unpacks 16 rows of W into a panel (per-thread scratch) and runs
//!    the register tile over all tokens, 8 at a time.
//!
//! Scratch buffers grow on first use and are then reused: steady-state calls do not allocate.

use std::cell::RefCell;

use rayon::prelude::*;

use super::panel::{self, Encoding, MR, PR, RowScratch, TileIn};
use super::{IntType, Level, QuantActs, int_type};
use crate::quant::matmul::QuantMatrix;
use crate::{Error, Result};

/// Up to this many tokens the matrix-vector kernels run; above, the panels.
pub const GEMV_MAX_TOKENS: usize = 2;

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// A method (not a field access) so closures capture the whole `Sync` wrapper.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: every task writes a disjoint set of indices (its own rows of W, i.e. columns of y),
// and y outlives the parallel section (it is borrowed mutably for the whole call).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

thread_local! {
    /// The calling thread's quantized activations.
    static ACTS: RefCell<QuantActs> = RefCell::new(QuantActs::new());
    /// A worker's panel (8-byte words, so the f32 scales inside are aligned) and row scratch.
    static PANEL: RefCell<(Vec<u64>, RowScratch)> = RefCell::new((Vec::new(), RowScratch::default()));
}

/// Whether [`matmul_xwt`] has integer kernels for `w`'s type on this CPU.
pub fn supported(ty: crate::quant::GgmlType) -> bool {
    let level = Level::detect();
    int_type(ty).is_some_and(|it| (it.gemv)(level).is_some())
}

/// `y = x·Wᵀ` with the integer kernels of this CPU; `Ok(false)` (y untouched) when there are
/// none for `w`'s type here, so the caller can use the f32 product.
pub fn matmul_xwt(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<bool> {
    matmul_xwt_at(Level::detect(), x, n, w, y)
}

/// [`matmul_xwt`] with the kernels of `level` (for tests and benchmarks of each level).
pub fn matmul_xwt_at(
    level: Level,
    x: &[f32],
    n: usize,
    w: &QuantMatrix,
    y: &mut [f32],
) -> Result<bool> {
    let (rows, cols) = (w.rows, w.cols);
    if Some(x.len()) != n.checked_mul(cols) || Some(y.len()) != n.checked_mul(rows) {
        return Err(Error::Invalid(format!(
            "int8 matmul x·Wᵀ: x has {} values and y {}, expected n × {cols} and n × {rows} \
             (n = {n})",
            x.len(),
            y.len()
        )));
    }
    let Some(it) = int_type(w.ty) else {
        return Ok(false);
    };
    let Some(gemv) = (it.gemv)(level) else {
        return Ok(false);
    };
    if cols % it.act.block() != 0 || cols % it.sub != 0 {
        return Ok(false);
    }
    if n == 0 || rows == 0 {
        return Ok(true);
    }
    let tile = panel::tile_kernel(level).filter(|_| n > GEMV_MAX_TOKENS);
    let out = SharedOut(y.as_mut_ptr());
    ACTS.with(|acts| {
        // Not re-entered: the kernels below do not call back into this function.
        let Ok(mut acts) = acts.try_borrow_mut() else {
            return Err(Error::Invalid(
                "int8 matmul re-entered on one thread".into(),
            ));
        };
        if n * cols >= 1 << 16 {
            acts.quantize_par(level, x, n, cols, it.act, it.sub);
        } else {
            acts.quantize(level, x, n, cols, it.act, it.sub);
        }
        let acts = &*acts;
        match tile {
            Some((kernel, enc)) => panels(it, w, acts, n, kernel, enc, out),
            None => rows_gemv(w, acts, n, gemv, out),
        }
        Ok(true)
    })
}

/// Matrix-vector path: contiguous ranges of rows, a few per worker.
fn rows_gemv(w: &QuantMatrix, acts: &QuantActs, n: usize, gemv: super::GemvFn, out: SharedOut) {
    let (rows, rb) = (w.rows, w.row_bytes());
    // Equal ranges, 4 per worker: even work, and a busy core's share can still be taken over.
    let parts = (4 * rayon::current_num_threads()).clamp(1, rows);
    let chunk = rows.div_ceil(parts);
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(rows));
        for t in 0..n {
            // SAFETY: t·rows + r1 ≤ n·rows = y.len(); rows r0..r1 belong to this task only.
            let y =
                unsafe { std::slice::from_raw_parts_mut(out.ptr().add(t * rows + r0), r1 - r0) };
            gemv(&w.data[r0 * rb..r1 * rb], rb, &acts.row(t), y);
        }
    });
}

/// Matrix-matrix path: one task per panel of 16 rows.
fn panels(
    it: &IntType,
    w: &QuantMatrix,
    acts: &QuantActs,
    n: usize,
    kernel: panel::TileFn,
    enc: Encoding,
    out: SharedOut,
) {
    let (rows, cols) = (w.rows, w.cols);
    let bytes = cols / it.sub * panel::stride(it.sub);
    (0..rows.div_ceil(PR)).into_par_iter().for_each(|p| {
        let r0 = p * PR;
        let nr = PR.min(rows - r0);
        PANEL.with(|s| {
            let mut s = s.borrow_mut();
            let (words, scratch) = &mut *s;
            if words.len() * 8 < bytes {
                words.resize(bytes.div_ceil(8), 0);
            }
            let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(words)[..bytes];
            let row_refs: [&[u8]; PR] =
                std::array::from_fn(|j| if j < nr { w.row(r0 + j) } else { &[][..] });
            panel::build(it, it.unpack, &row_refs[..nr], cols, enc, scratch, buf);
            let mut tile_out = [[0.0f32; PR]; MR];
            let mut t0 = 0;
            while t0 < n {
                let m = MR.min(n - t0);
                let t = TileIn::new(buf, it.sub, acts, cols, t0, m);
                kernel(&t, m, &mut tile_out);
                for (k, o) in tile_out.iter().take(m).enumerate() {
                    // SAFETY: (t0+k)·rows + r0 + nr ≤ n·rows = y.len(); columns r0..r0+nr of
                    // y belong to this task only.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(out.ptr().add((t0 + k) * rows + r0), nr)
                    };
                    dst.copy_from_slice(&o[..nr]);
                }
                t0 += m;
            }
        });
    });
}

/// Bytes of the panel scratch a matrix of `cols` columns needs (at most, over the types).
pub fn panel_bytes(cols: usize) -> usize {
    panel::stride(16) * cols.div_ceil(16)
}

/// Specification: `y[t, r] = dot_ref(W[r], quantize_ref(x[t]))` (f64 sums).
pub fn matmul_xwt_ref(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<bool> {
    let Some(it) = int_type(w.ty) else {
        return Ok(false);
    };
    let cols = w.cols;
    if Some(x.len()) != n.checked_mul(cols) || Some(y.len()) != n.checked_mul(w.rows) {
        return Err(Error::Invalid("int8 matmul reference: wrong sizes".into()));
    }
    let mut acts = QuantActs::new();
    acts.quantize(Level::Scalar, x, n, cols, it.act, it.sub);
    for t in 0..n {
        for r in 0..w.rows {
            y[t * w.rows + r] = super::dot_ref(w.ty, w.row(r), &acts.row(t), it.sub);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::random_rows;
    use super::*;
    use crate::quant::GgmlType;
    use crate::quant::simd::test_util::{rng, values};

    /// Both paths (1, 2 tokens: matrix-vector; 3, 8, 13 tokens: panels with a remainder), every
    /// level of this CPU, every integer type, a last panel of 5 rows, against the reference.
    #[test]
    fn matmul_matches_the_reference() {
        let (rows, cols) = (37, 768);
        for ty in GgmlType::ALL {
            if int_type(ty).is_none() {
                continue;
            }
            let data = random_rows(ty, rows, cols, 5);
            let w = QuantMatrix::new(ty, rows, cols, &data).unwrap();
            for n in [1, 2, 3, 8, 13] {
                let x = values(&mut rng(n as u64), n * cols, 1.0);
                let mut want = vec![0.0; n * rows];
                assert!(matmul_xwt_ref(&x, n, &w, &mut want).unwrap());
                let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                for level in Level::available() {
                    let mut got = vec![f32::NAN; n * rows];
                    if !matmul_xwt_at(level, &x, n, &w, &mut got).unwrap() {
                        assert_eq!(level, Level::Scalar, "{ty}: no kernel at {}", level.name());
                        continue;
                    }
                    for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-5 * (scale + 1.0),
                            "{ty} n={n} {} [{i}]: {g} vs {e}",
                            level.name()
                        );
                    }
                }
            }
            let mut y = vec![0.0; rows];
            assert!(matmul_xwt(&[0.0; 5], 1, &w, &mut y).is_err());
        }
    }
}
