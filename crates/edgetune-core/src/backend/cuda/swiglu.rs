//! SwiGLU forward and backward on the device (`et_swiglu_fwd` / `et_swiglu_bwd`,
//! kernels/swiglu.cu): element-wise over `n` values, 256 per block.
//!
//! `out = silu(gate) · up`; backward `dgate = dh · up · silu'(gate)`, `dup = dh · silu(gate)`
//! (crates/edgetune-core/src/backend/cpu/swiglu.rs).

use super::launch::{Grid, int, kernel_args};
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::Result;
use crate::backend::check_len;

pub fn swiglu(
    be: &CudaBackend,
    gate: CudaView<'_>,
    up: CudaView<'_>,
    out: CudaViewMut<'_>,
) -> Result<()> {
    let op = "swiglu";
    let n = gate.len();
    check_len(op, "up", up.len(), 1, n)?;
    check_len(op, "out", out.len(), 1, n)?;
    if n == 0 {
        return Ok(());
    }
    be.bind()?;
    let n_i = int(op, "n", n)?;
    // SAFETY: parameters as kernels/README.md (swiglu.cu); lengths checked above.
    unsafe {
        be.launch(
            be.kernels().swiglu_fwd,
            Grid::elementwise(op, n)?,
            kernel_args![gate.ptr(), up.ptr(), out.ptr(), n_i],
        )
    }
}

pub fn swiglu_backward(
    be: &CudaBackend,
    gate: CudaView<'_>,
    up: CudaView<'_>,
    dh: CudaView<'_>,
    dgate: CudaViewMut<'_>,
    dup: CudaViewMut<'_>,
) -> Result<()> {
    let op = "swiglu_backward";
    let n = gate.len();
    check_len(op, "up", up.len(), 1, n)?;
    check_len(op, "dh", dh.len(), 1, n)?;
    check_len(op, "dgate", dgate.len(), 1, n)?;
    check_len(op, "dup", dup.len(), 1, n)?;
    if n == 0 {
        return Ok(());
    }
    be.bind()?;
    let n_i = int(op, "n", n)?;
    // SAFETY: parameters as kernels/README.md (swiglu.cu); lengths checked above.
    unsafe {
        be.launch(
            be.kernels().swiglu_bwd,
            Grid::elementwise(op, n)?,
            kernel_args![gate.ptr(), up.ptr(), dh.ptr(), dgate.ptr(), dup.ptr(), n_i],
        )
    }
}
