//! Element-wise utilities on the device (kernels/elementwise.cu): `add_assign` (the residual
//! stream, a `Backend` op) and `scale`, `zero`, `copy` (inherent: clipping, cross-entropy's
//! ignored chunks, staging).

use super::launch::{Grid, int, kernel_args};
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::Result;
use crate::backend::check_len;

/// `x += y`.
pub fn add_assign(be: &CudaBackend, x: CudaViewMut<'_>, y: CudaView<'_>) -> Result<()> {
    let op = "add_assign";
    check_len(op, "y", y.len(), 1, x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    be.bind()?;
    let n = int(op, "n", x.len())?;
    // SAFETY: parameters as kernels/README.md (elementwise.cu); lengths checked above.
    unsafe {
        be.launch(
            be.kernels().add_assign,
            Grid::elementwise(op, x.len())?,
            kernel_args![x.ptr(), y.ptr(), n],
        )
    }
}

/// `x *= s`.
pub fn scale(be: &CudaBackend, x: CudaViewMut<'_>, s: f32) -> Result<()> {
    let op = "scale";
    if x.is_empty() {
        return Ok(());
    }
    be.bind()?;
    let n = int(op, "n", x.len())?;
    // SAFETY: parameters as kernels/README.md (elementwise.cu).
    unsafe {
        be.launch(
            be.kernels().scale,
            Grid::elementwise(op, x.len())?,
            kernel_args![x.ptr(), s, n],
        )
    }
}

/// `x = 0`.
pub fn zero(be: &CudaBackend, x: CudaViewMut<'_>) -> Result<()> {
    let op = "zero";
    if x.is_empty() {
        return Ok(());
    }
    be.bind()?;
    let n = int(op, "n", x.len())?;
    // SAFETY: parameters as kernels/README.md (elementwise.cu).
    unsafe {
        be.launch(
            be.kernels().zero,
            Grid::elementwise(op, x.len())?,
            kernel_args![x.ptr(), n],
        )
    }
}

/// `dst = src` (distinct buffers: a `ViewMut` and a `View` cannot alias).
pub fn copy(be: &CudaBackend, dst: CudaViewMut<'_>, src: CudaView<'_>) -> Result<()> {
    let op = "copy";
    check_len(op, "src", src.len(), 1, dst.len())?;
    if dst.is_empty() {
        return Ok(());
    }
    be.bind()?;
    let n = int(op, "n", dst.len())?;
    // SAFETY: parameters as kernels/README.md (elementwise.cu); lengths checked above.
    unsafe {
        be.launch(
            be.kernels().copy,
            Grid::elementwise(op, dst.len())?,
            kernel_args![dst.ptr(), src.ptr(), n],
        )
    }
}

impl CudaBackend {
    /// `x *= s` (see [`scale`]).
    pub fn scale(&self, x: CudaViewMut<'_>, s: f32) -> Result<()> {
        scale(self, x, s)
    }

    /// `x = 0` (see [`zero`]).
    pub fn zero(&self, x: CudaViewMut<'_>) -> Result<()> {
        zero(self, x)
    }

    /// `dst = src` (see [`copy`]).
    pub fn copy(&self, dst: CudaViewMut<'_>, src: CudaView<'_>) -> Result<()> {
        copy(self, dst, src)
    }
}
