//! Quantized products on the device (kernels/matmul.cu): `y[n, out] = x[n, in] · Ŵᵀ` and the
//! input gradient `dx[n, in] = dy[n, out] · Ŵ`, reading the GGUF blocks of `W` `[out, in]`
//! directly (every ggml type of `crates/edgetune-core/src/quant`).
//!
//! Kernel choice (kernels/README.md): the bf16 tensor-core `_mma` kernels (64×64 output tiles)
//! when the PTX build has them (sm_87 build) and `n ≥ 16`; otherwise the f32 `_simple` kernels
//! (one warp per W row, 4 tokens per block row — generation's n = 1 reads W once per 4
//! tokens). Requirement: `in % 16 == 0`.

use super::launch::{Grid, cdiv, int, kernel_args};
use super::module::Func;
use super::{CudaBackend, CudaView, CudaViewMut, CudaWeight};
use crate::backend::check_len;
use crate::{Error, Result};

/// Tokens from which the tensor-core kernels pay off.
pub const MMA_MIN_TOKENS: usize = 16;

/// Which kernel runs a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Mma,
    Simple,
}

/// The kernel for `n` tokens on a build with (`has_mma`) or without the tensor-core kernels.
pub fn variant(has_mma: bool, n: usize) -> Variant {
    if has_mma && n >= MMA_MIN_TOKENS {
        Variant::Mma
    } else {
        Variant::Simple
    }
}

/// Launch grid of the forward `x·Wᵀ` (kernels/README.md, matmul.cu).
pub fn xwt_grid(v: Variant, n: usize, out: usize) -> Result<Grid> {
    match v {
        Variant::Mma => Grid::new("matmul x·Wᵀ", cdiv(out, 64), cdiv(n, 64), 128),
        Variant::Simple => Grid::new("matmul x·Wᵀ", cdiv(out, 8), cdiv(n, 4), 256),
    }
}

/// Launch grid of the input gradient `dy·W`.
pub fn dyw_grid(v: Variant, n: usize, inp: usize) -> Result<Grid> {
    match v {
        Variant::Mma => Grid::new("matmul dy·W", cdiv(inp, 64), cdiv(n, 64), 128),
        Variant::Simple => Grid::new("matmul dy·W", cdiv(inp, 256), cdiv(n, 4), 256),
    }
}

/// The kernels' requirement on `W`'s shape.
fn check_weight(op: &str, w: &CudaWeight<'_>) -> Result<()> {
    if !w.cols.is_multiple_of(16) {
        return Err(Error::Invalid(format!(
            "{op}: the CUDA kernels need in % 16 == 0, W is [{} × {}] ({})",
            w.rows, w.cols, w.ty
        )));
    }
    Ok(())
}

/// Queues the product in direction `fwd` (`x·Wᵀ`) or not (`dy·W`); lengths already checked.
fn launch(
    be: &CudaBackend,
    fwd: bool,
    src: u64,
    n: usize,
    w: &CudaWeight<'_>,
    dst: u64,
) -> Result<()> {
    let op = if fwd {
        "matmul x·Wᵀ"
    } else {
        "matmul dy·W"
    };
    if n == 0 || w.rows == 0 || w.cols == 0 {
        return Ok(());
    }
    be.bind()?;
    let k = be.kernels();
    let v = variant(k.target.has_mma(), n);
    let (f, grid): (Func, Grid) = match (fwd, v) {
        (true, Variant::Mma) => (
            k.matmul_xwt_mma.unwrap_or(k.matmul_xwt_simple),
            xwt_grid(v, n, w.rows)?,
        ),
        (false, Variant::Mma) => (
            k.matmul_dyw_mma.unwrap_or(k.matmul_dyw_simple),
            dyw_grid(v, n, w.cols)?,
        ),
        (true, Variant::Simple) => (k.matmul_xwt_simple, xwt_grid(v, n, w.rows)?),
        (false, Variant::Simple) => (k.matmul_dyw_simple, dyw_grid(v, n, w.cols)?),
    };
    let wtype = w.ty as u32 as i32;
    let row_bytes = int(op, "row_bytes", w.row_bytes())?;
    let (n_i, out, inp) = (
        int(op, "n", n)?,
        int(op, "out", w.rows)?,
        int(op, "in", w.cols)?,
    );
    // SAFETY: parameters as kernels/README.md (matmul.cu): (src, w, wtype, row_bytes, dst, n,
    // out, in); `src`/`dst` lengths checked by the callers, `w` covers rows × row_bytes.
    unsafe {
        be.launch(
            f,
            grid,
            kernel_args![src, w.ptr, wtype, row_bytes, dst, n_i, out, inp],
        )
    }
}

/// `y[n, out] = x[n, in] · Ŵᵀ`.
pub fn matmul_xwt(
    be: &CudaBackend,
    x: CudaView<'_>,
    n: usize,
    w: &CudaWeight<'_>,
    y: CudaViewMut<'_>,
) -> Result<()> {
    let op = "matmul x·Wᵀ";
    check_len(op, "x", x.len(), n, w.cols)?;
    check_len(op, "y", y.len(), n, w.rows)?;
    check_weight(op, w)?;
    launch(be, true, x.ptr(), n, w, y.ptr())
}

/// `dx[n, in] = dy[n, out] · Ŵ` (overwrites `dx`).
pub fn matmul_dyw(
    be: &CudaBackend,
    dy: CudaView<'_>,
    n: usize,
    w: &CudaWeight<'_>,
    dx: CudaViewMut<'_>,
) -> Result<()> {
    let op = "matmul dy·W";
    check_len(op, "dy", dy.len(), n, w.rows)?;
    check_len(op, "dx", dx.len(), n, w.cols)?;
    check_weight(op, w)?;
    if n > 0 && w.rows == 0 {
        // An empty reduction: dx = 0 (no kernel reads an empty W).
        return super::elementwise::zero(be, dx);
    }
    launch(be, false, dy.ptr(), n, w, dx.ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_cores_from_sixteen_tokens_on_the_sm87_build() {
        assert_eq!(variant(true, 1), Variant::Simple);
        assert_eq!(variant(true, 15), Variant::Simple);
        assert_eq!(variant(true, 16), Variant::Mma);
        assert_eq!(variant(false, 512), Variant::Simple);
    }

    #[test]
    fn grids_cover_the_output_tiles() {
        // Llama 3.2 1B q projection, 512 tokens: 2048 outputs in 64-wide tiles.
        assert_eq!(xwt_grid(Variant::Mma, 512, 2048).unwrap().grid, (32, 8, 1));
        assert_eq!(
            xwt_grid(Variant::Simple, 1, 2048).unwrap().grid,
            (256, 1, 1)
        );
        assert_eq!(xwt_grid(Variant::Simple, 5, 10).unwrap().grid, (2, 2, 1));
        assert_eq!(dyw_grid(Variant::Mma, 17, 2048).unwrap().grid, (32, 1, 1));
        assert_eq!(dyw_grid(Variant::Simple, 4, 257).unwrap().grid, (2, 1, 1));
        assert_eq!(xwt_grid(Variant::Mma, 1, 1).unwrap().block, 128);
        assert_eq!(dyw_grid(Variant::Simple, 1, 1).unwrap().block, 256);
    }
}
