//! The two quantized products training needs: `y = x·Wᵀ` (forward) and `dx = dy·W` (input
//! gradient; the frozen base gets no weight gradient).
//!
//! W is a ggml matrix `[out, in]` in row-major terms (GGUF dims `[in, out]`): `out` rows of `in`
//! elements, each row a whole number of blocks. x/y/dy/dx are f32 row-major: x `[n, in]`,
//! y `[n, out]`, dy `[n, out]`, dx `[n, in]`.
//!
//! Strategy (parallel over W with rayon; each task writes a disjoint set of output columns):
//! - forward, one token: bandwidth-bound; one quantized `dot` per row, reading W
//!   once straight from its blocks;
//! - forward, `2 ≤ n ≤ 12` (several sequences decoding together): each W row is dequantized
//!   once into a row buffer and dotted with every token in f32;
//! - forward, `n > 12`: compute-bound; each task dequantizes a panel of 16 W rows (all of `in`),
//!   interleaved so the 16 values of one input column are adjacent, then runs the 6×16 register
//!   tile of [`microkernel`](super::microkernel) over the tokens — W is dequantized once per call;
//! - input gradient: each task owns a strip of 256 input columns (a whole number of blocks of any
//!   type), dequantizes W row-tiles of that strip and accumulates `dy_tile · W_tile` into dx.
//!
//! Scratch panels are per-thread and reused across calls, so steady-state calls do not allocate.

use std::cell::RefCell;

use rayon::prelude::*;

use super::microkernel::{self, MR, NR};
use super::{Compute, GgmlType};
use crate::{Error, Result};

/// A borrowed quantized matrix: `rows` rows of `cols` elements of type `ty`.
#[derive(Clone, Copy, Debug)]
pub struct QuantMatrix<'a> {
    pub ty: GgmlType,
    /// Output features (`out`).
    pub rows: usize,
    /// Input features (`in`): the contiguous dimension, a multiple of the block size.
    pub cols: usize,
    pub data: &'a [u8],
    /// Arithmetic of [`matmul_xwt`] with this matrix (`F32` from [`QuantMatrix::new`]).
    pub compute: Compute,
}

impl<'a> QuantMatrix<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        let row_bytes = ty.bytes_for(cols as u64).ok_or_else(|| {
            Error::Invalid(format!(
                "{ty} matrix: row length {cols} is not a multiple of the block size {}",
                ty.block_elems()
            ))
        })?;
        let want = row_bytes.checked_mul(rows as u64);
        if want != Some(data.len() as u64) {
            return Err(Error::Invalid(format!(
                "{ty} matrix [{rows} × {cols}] needs {} bytes, got {}",
                want.map_or("an overflowing number of".into(), |w| w.to_string()),
                data.len()
            )));
        }
        Ok(QuantMatrix {
            ty,
            rows,
            cols,
            data,
            compute: Compute::F32,
        })
    }

    /// The same view, multiplied with `compute` arithmetic by [`matmul_xwt`].
    pub fn with_compute(self, compute: Compute) -> Self {
        QuantMatrix { compute, ..self }
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    /// The blocks of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// The blocks of row `r` covering columns `c0..c1` (both multiples of the block size).
    fn row_segment(&self, r: usize, c0: usize, c1: usize) -> &'a [u8] {
        let (be, bb) = (self.ty.block_elems(), self.ty.block_bytes());
        let row = self.row(r);
        &row[c0 / be * bb..c1 / be * bb]
    }
}

fn check_dims(what: &str, a: usize, n: usize, width: usize, a_name: &str) -> Result<()> {
    if Some(a) != n.checked_mul(width) {
        return Err(Error::Invalid(format!(
            "{what}: {a_name} has {a} values, expected n × {width} = {n} × {width}"
        )));
    }
    Ok(())
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

impl SharedOut {
    /// A method (not a field access) so closures capture the whole `Sync` wrapper rather than
    /// the raw pointer inside it.
    fn ptr(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: every task writes a disjoint set of indices (its own columns), and the slice outlives
// the parallel section (it is borrowed mutably for the whole call).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

thread_local! {
    /// Per-thread panel + row buffer, grown on first use and then reused.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Grows every thread's scratch of the current rayon pool to what a matrix of `max_cols`
/// columns needs (both kernels), so a thread that meets the widest matrix only in a later
/// step does not allocate then (the training step's zero-allocation rule; which thread takes
/// which matrix first varies from run to run).
pub fn reserve_scratch(max_cols: usize) {
    let xwt = max_cols * NR + max_cols;
    let dyw = ROW_TILE * STRIP.min(max_cols).next_multiple_of(NR);
    let len = xwt.max(dyw);
    rayon::broadcast(|_| with_scratch(len, |_| ()));
}

fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < len {
            s.resize(len, 0.0);
        }
        f(&mut s[..len])
    })
}

/// `y[n, out] = x[n, in] · Wᵀ`, parallel over W's rows; with `w.compute == Int8`, the integer
/// kernels of [`super::int8::matmul`] where this CPU and W's type have them.
pub fn matmul_xwt(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<()> {
    check_dims("matmul x·Wᵀ", x.len(), n, w.cols, "x")?;
    check_dims("matmul x·Wᵀ", y.len(), n, w.rows, "y")?;
    if n == 0 || w.rows == 0 {
        return Ok(());
    }
    if w.compute == Compute::Int8 && super::int8::matmul::matmul_xwt(x, n, w, y)? {
        return Ok(());
    }
    let out = SharedOut(y.as_mut_ptr());
    if n == 1 {
        xwt_dots(x, n, w, out);
    } else if n <= ROWDOT_MAX_TOKENS {
        xwt_rowdots(x, n, w, out);
    } else {
        xwt_panels(x, n, w, out);
    }
    Ok(())
}

/// Most tokens [`xwt_rowdots`] takes: past it, the panel's register tile makes up for building
/// the panel (measured on SmolLM2's Q4_1 shapes, 1536 × 576 and its output head: at 8 tokens
/// the row dots take 0.26 ms against the panel's 0.44, at 16 the two are even).
pub const ROWDOT_MAX_TOKENS: usize = 12;

/// Some tokens (a decoding step of several sequences): each W row is dequantized once into a
/// row buffer and taken against every token with an f32 SIMD dot. Building a panel costs more
/// than these products, and the per-token quantized dots would decode each row `n` times.
fn xwt_rowdots(x: &[f32], n: usize, w: &QuantMatrix, out: SharedOut) {
    let dequantize = w.ty.traits().dequantize;
    let (rows, cols) = (w.rows, w.cols);
    let chunk = 32;
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        with_scratch(cols, |row_buf| {
            for r in c * chunk..((c + 1) * chunk).min(rows) {
                dequantize(w.row(r), row_buf);
                for i in 0..n {
                    let v = super::simd::dot_f32(row_buf, &x[i * cols..(i + 1) * cols]);
                    // SAFETY: index i·rows + r < n·rows = y.len(); row r belongs to this task
                    // only.
                    unsafe { *out.ptr().add(i * rows + r) = v };
                }
            }
        })
    });
}

/// One token: one quantized dot per row (and per token, were there more), chunks of rows per task.
fn xwt_dots(x: &[f32], n: usize, w: &QuantMatrix, out: SharedOut) {
    let dot = w.ty.traits().dot;
    let (rows, cols) = (w.rows, w.cols);
    let chunk = 64;
    if let Some(dot_rows) = w.ty.traits().dot_rows {
        let rb = w.row_bytes();
        (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let (r0, r1) = (c * chunk, ((c + 1) * chunk).min(rows));
            for i in 0..n {
                // SAFETY: y[i·rows + r0 .. i·rows + r1] lies inside y (i < n, r1 ≤ rows) and
                // rows r0..r1 belong to this task only.
                let y = unsafe {
                    std::slice::from_raw_parts_mut(out.ptr().add(i * rows + r0), r1 - r0)
                };
                dot_rows(
                    &w.data[r0 * rb..r1 * rb],
                    rb,
                    &x[i * cols..(i + 1) * cols],
                    y,
                );
            }
        });
        return;
    }
    (0..rows.div_ceil(chunk)).into_par_iter().for_each(|c| {
        for r in c * chunk..((c + 1) * chunk).min(rows) {
            let row = w.row(r);
            for i in 0..n {
                let v = dot(row, &x[i * cols..(i + 1) * cols]);
                // SAFETY: index i·rows + r < n·rows = y.len(); row r belongs to this task only.
                unsafe { *out.ptr().add(i * rows + r) = v };
            }
        }
    });
}

/// Many tokens: dequantize 16-row panels and run the register tile over all tokens.
fn xwt_panels(x: &[f32], n: usize, w: &QuantMatrix, out: SharedOut) {
    let (rows, cols) = (w.rows, w.cols);
    let dequantize = w.ty.traits().dequantize;
    (0..rows.div_ceil(NR)).into_par_iter().for_each(|p| {
        let r0 = p * NR;
        let nr = NR.min(rows - r0);
        with_scratch(cols * NR + cols, |scratch| {
            // panel[c·16 + j] = W[r0 + j, c]; rows past the end stay zero and are not stored.
            let (panel, row_buf) = scratch.split_at_mut(cols * NR);
            if nr < NR {
                panel.fill(0.0);
            }
            for j in 0..nr {
                dequantize(w.row(r0 + j), row_buf);
                for (c, v) in row_buf.iter().enumerate() {
                    panel[c * NR + j] = *v;
                }
            }
            let mut i0 = 0;
            while i0 < n {
                let m = MR.min(n - i0);
                microkernel::with_tile(m, cols, &x[i0 * cols..], cols, panel, NR, |acc| {
                    for (i, acc_row) in acc.iter().enumerate() {
                        for (j, v) in acc_row.iter().take(nr).enumerate() {
                            // SAFETY: (i0+i) < n and r0+j < rows: inside y; columns r0..r0+nr
                            // belong to this task only.
                            unsafe { *out.ptr().add((i0 + i) * rows + r0 + j) = *v };
                        }
                    }
                });
                i0 += m;
            }
        });
    });
}

/// Width of the input-column strip one task of [`matmul_dyw`] owns: a multiple of every block size.
const STRIP: usize = 256;
/// W rows dequantized at a time per strip (the reduction tile).
const ROW_TILE: usize = 128;

/// `dx[n, in] = dy[n, out] · W`, parallel over strips of input columns.
pub fn matmul_dyw(dy: &[f32], n: usize, w: &QuantMatrix, dx: &mut [f32]) -> Result<()> {
    check_dims("matmul dy·W", dy.len(), n, w.rows, "dy")?;
    check_dims("matmul dy·W", dx.len(), n, w.cols, "dx")?;
    dx.fill(0.0);
    if n == 0 || w.rows == 0 || w.cols == 0 {
        return Ok(());
    }
    let (rows, cols) = (w.rows, w.cols);
    let dequantize = w.ty.traits().dequantize;
    let out = SharedOut(dx.as_mut_ptr());
    (0..cols.div_ceil(STRIP)).into_par_iter().for_each(|s| {
        let c0 = s * STRIP;
        let width = STRIP.min(cols - c0);
        // Row stride of the tile, padded to whole 16-column register tiles (padding stays 0).
        let stride = width.next_multiple_of(NR);
        with_scratch(ROW_TILE * stride, |tile| {
            tile.fill(0.0);
            let mut r0 = 0;
            while r0 < rows {
                let nr = ROW_TILE.min(rows - r0);
                for r in 0..nr {
                    let seg = w.row_segment(r0 + r, c0, c0 + width);
                    dequantize(seg, &mut tile[r * stride..r * stride + width]);
                }
                let mut i0 = 0;
                while i0 < n {
                    let m = MR.min(n - i0);
                    for j0 in (0..width).step_by(NR) {
                        let a = &dy[i0 * rows + r0..];
                        microkernel::with_tile(m, nr, a, rows, &tile[j0..], stride, |acc| {
                            for (i, acc_row) in acc.iter().enumerate() {
                                for (j, v) in acc_row.iter().take(width - j0).enumerate() {
                                    // SAFETY: (i0+i) < n, c0+j0+j < cols: inside dx; columns
                                    // c0..c0+width belong to this task only.
                                    unsafe { *out.ptr().add((i0 + i) * cols + c0 + j0 + j) += *v };
                                }
                            }
                        });
                    }
                    i0 += m;
                }
                r0 += nr;
            }
        });
    });
    Ok(())
}

/// Scalar specification of [`matmul_xwt`]: `y[i, r] = dot_ref(W[r], x[i])` (f64 sums).
pub fn matmul_xwt_ref(x: &[f32], n: usize, w: &QuantMatrix, y: &mut [f32]) -> Result<()> {
    check_dims("matmul x·Wᵀ", x.len(), n, w.cols, "x")?;
    check_dims("matmul x·Wᵀ", y.len(), n, w.rows, "y")?;
    let dot_ref = w.ty.traits().dot_ref;
    for i in 0..n {
        for r in 0..w.rows {
            y[i * w.rows + r] = dot_ref(w.row(r), &x[i * w.cols..(i + 1) * w.cols]);
        }
    }
    Ok(())
}

/// Scalar specification of [`matmul_dyw`]: W dequantized with the reference, f64 sums.
pub fn matmul_dyw_ref(dy: &[f32], n: usize, w: &QuantMatrix, dx: &mut [f32]) -> Result<()> {
    check_dims("matmul dy·W", dy.len(), n, w.rows, "dy")?;
    check_dims("matmul dy·W", dx.len(), n, w.cols, "dx")?;
    let dequantize_ref = w.ty.traits().dequantize_ref;
    let mut acc = vec![0.0f64; n * w.cols];
    let mut row = vec![0.0f32; w.cols];
    for r in 0..w.rows {
        dequantize_ref(w.row(r), &mut row);
        for i in 0..n {
            let g = dy[i * w.rows + r] as f64;
            for (a, v) in acc[i * w.cols..(i + 1) * w.cols].iter_mut().zip(&row) {
                *a += g * *v as f64;
            }
        }
    }
    for (d, a) in dx.iter_mut().zip(acc) {
        *d = a as f32;
    }
    Ok(())
}
