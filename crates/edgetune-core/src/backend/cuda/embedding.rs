//! Embedding gather on the device (`et_embedding`, kernels/embedding.cu): `out[i, :]` = row
//! `tokens[i]` of the quantized table `[vocab, dim]`, dequantized; one block per token.
//!
//! The ids come from the host: they are validated (< vocab, as the CPU backend does), copied
//! into the backend's small device scratch on the compute stream, then gathered.

use super::launch::{Grid, int, kernel_args};
use super::{CudaBackend, CudaViewMut, CudaWeight};
use crate::backend::check_len;
use crate::{Error, Result};

pub fn embedding(
    be: &CudaBackend,
    table: &CudaWeight<'_>,
    tokens: &[u32],
    out: CudaViewMut<'_>,
) -> Result<()> {
    let op = "embedding";
    check_len(op, "out", out.len(), tokens.len(), table.cols)?;
    if let Some((i, &t)) = tokens
        .iter()
        .enumerate()
        .find(|&(_, &t)| t as usize >= table.rows)
    {
        return Err(Error::Invalid(format!(
            "token id {t} (position {i} of {}) is outside the vocabulary of {} tokens",
            tokens.len(),
            table.rows
        )));
    }
    if !table.cols.is_multiple_of(16) {
        return Err(Error::Invalid(format!(
            "{op}: the CUDA kernel needs dim % 16 == 0, the table is [{} × {}]",
            table.rows, table.cols
        )));
    }
    if tokens.is_empty() || table.cols == 0 {
        return Ok(());
    }
    be.bind()?;
    let wtype = table.ty as u32 as i32;
    let row_bytes = int(op, "row_bytes", table.row_bytes())?;
    let (n, dim) = (
        int(op, "tokens", tokens.len())?,
        int(op, "dim", table.cols)?,
    );
    let grid = Grid::new(op, tokens.len(), 1, 128)?;
    be.with_scratch(std::mem::size_of_val(tokens), |ids| {
        be.copy_to_device(tokens, ids)?;
        // SAFETY: parameters as kernels/README.md (embedding.cu); `ids` holds the n validated
        // ids (copied on the same stream before the launch), `out` is n × dim (checked).
        unsafe {
            be.launch(
                be.kernels().embedding,
                grid,
                kernel_args![table.ptr, wtype, row_bytes, ids, out.ptr(), n, dim],
            )
        }
    })
}
