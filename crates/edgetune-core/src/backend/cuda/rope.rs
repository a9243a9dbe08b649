//! RoPE forward and backward on the device (`et_rope`, kernels/rope.cu): in place, one block
//! per token; `sign` = +1 rotates by θ (forward), −1 by −θ (the input gradient).
//!
//! Shapes as crates/edgetune-core/src/backend/cpu/rope.rs: `x` `[n_tokens, n_head · head_dim]`, `inv_freq`
//! `[rope_dim / 2]`, `rope_dim` even and ≤ `head_dim`.

use super::launch::{Grid, int, kernel_args};
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::backend::cpu::rope::MAX_ROPE_DIM;
use crate::backend::{RopeDims, check_len};
use crate::{Error, Result};

pub fn rope(
    be: &CudaBackend,
    x: CudaViewMut<'_>,
    inv_freq: CudaView<'_>,
    d: RopeDims,
    sign: f32,
) -> Result<()> {
    let op = if sign > 0.0 { "rope" } else { "rope_backward" };
    if !d.rope_dim.is_multiple_of(2) || d.rope_dim > d.head_dim || d.rope_dim > MAX_ROPE_DIM {
        return Err(Error::Invalid(format!(
            "{op}: rope_dim {} must be even and ≤ head_dim {} (and ≤ {MAX_ROPE_DIM})",
            d.rope_dim, d.head_dim
        )));
    }
    check_len(op, "inv_freq", inv_freq.len(), d.rope_dim / 2, 1)?;
    check_len(
        op,
        "x",
        x.len(),
        d.n_tokens,
        d.n_head.saturating_mul(d.head_dim),
    )?;
    if d.n_tokens == 0 || d.n_head == 0 || d.rope_dim == 0 {
        return Ok(());
    }
    be.bind()?;
    let n_tokens = int(op, "n_tokens", d.n_tokens)?;
    // Positions reach pos0 + n_tokens inside the kernel.
    int(op, "last position", d.pos0.saturating_add(d.n_tokens))?;
    let (pos0, n_head) = (int(op, "pos0", d.pos0)?, int(op, "n_head", d.n_head)?);
    let (head_dim, rope_dim) = (
        int(op, "head_dim", d.head_dim)?,
        int(op, "rope_dim", d.rope_dim)?,
    );
    let grid = Grid::new(op, d.n_tokens, 1, 256)?;
    // SAFETY: parameters as kernels/README.md (rope.cu); lengths checked above.
    unsafe {
        be.launch(
            be.kernels().rope,
            grid,
            kernel_args![
                x.ptr(),
                inv_freq.ptr(),
                n_tokens,
                pos0,
                n_head,
                head_dim,
                rope_dim,
                sign
            ],
        )
    }
}
