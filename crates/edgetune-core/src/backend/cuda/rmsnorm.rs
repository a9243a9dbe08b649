//! RMSNorm forward and input gradient on the device (`et_rmsnorm_fwd` / `et_rmsnorm_bwd`,
//! kernels/rmsnorm.cu): one block of 256 threads per row of `dim` values.
//!
//! Shapes as the CPU backend (crates/edgetune-core/src/backend/cpu/rmsnorm.rs): `x`, `y`, `dy`, `dx` `[n, dim]`,
//! `w` `[dim]`, `rstd` `[n]`; the same length checks run before any launch.

use super::launch::{Grid, int, kernel_args};
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::backend::check_len;
use crate::{Error, Result};

/// Rows of `x` for a weight of `dim` values (an error when `dim` is 0 or does not divide).
fn rows(op: &str, x: usize, dim: usize) -> Result<usize> {
    if dim == 0 {
        return Err(Error::Invalid(format!("{op}: empty weight")));
    }
    let n = x / dim;
    check_len(op, "x", x, n, dim)?;
    Ok(n)
}

pub fn rmsnorm(
    be: &CudaBackend,
    x: CudaView<'_>,
    w: CudaView<'_>,
    eps: f32,
    y: CudaViewMut<'_>,
    rstd: Option<CudaViewMut<'_>>,
) -> Result<()> {
    let op = "rmsnorm";
    let n = rows(op, x.len(), w.len())?;
    check_len(op, "y", y.len(), n, w.len())?;
    if let Some(r) = &rstd {
        check_len(op, "rstd", r.len(), n, 1)?;
    }
    if n == 0 {
        return Ok(());
    }
    be.bind()?;
    let (n_i, dim) = (int(op, "rows", n)?, int(op, "dim", w.len())?);
    let rstd_ptr: u64 = rstd.map_or(0, |r| r.ptr());
    let grid = Grid::new(op, n, 1, 256)?;
    // SAFETY: parameters as kernels/README.md (rmsnorm.cu); lengths checked above.
    unsafe {
        be.launch(
            be.kernels().rmsnorm_fwd,
            grid,
            kernel_args![x.ptr(), w.ptr(), y.ptr(), rstd_ptr, n_i, dim, eps],
        )
    }
}

pub fn rmsnorm_backward(
    be: &CudaBackend,
    x: CudaView<'_>,
    w: CudaView<'_>,
    rstd: CudaView<'_>,
    dy: CudaView<'_>,
    dx: CudaViewMut<'_>,
) -> Result<()> {
    let op = "rmsnorm_backward";
    let n = rows(op, x.len(), w.len())?;
    check_len(op, "dy", dy.len(), n, w.len())?;
    check_len(op, "dx", dx.len(), n, w.len())?;
    check_len(op, "rstd", rstd.len(), n, 1)?;
    if n == 0 {
        return Ok(());
    }
    be.bind()?;
    let (n_i, dim) = (int(op, "rows", n)?, int(op, "dim", w.len())?);
    let grid = Grid::new(op, n, 1, 256)?;
    // SAFETY: parameters as kernels/README.md (rmsnorm.cu); lengths checked above.
    unsafe {
        be.launch(
            be.kernels().rmsnorm_bwd,
            grid,
            kernel_args![x.ptr(), w.ptr(), rstd.ptr(), dy.ptr(), dx.ptr(), n_i, dim],
        )
    }
}
