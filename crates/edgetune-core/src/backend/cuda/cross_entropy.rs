//! Chunked next-token cross-entropy on the device, forward and backward fused (as
//! crates/edgetune-core/src/backend/cpu/cross_entropy.rs): per chunk of `c ≤ chunk` tokens,
//!
//! 1. `logits[c, vocab] = h_chunk · Wᵀ` (matmul.rs);
//! 2. `et_ce_softmax_grad` in place: rows become `(softmax − onehot(target)) · scale`, row
//!    losses `lse − logit[target]` go to a device array (0 for an ignored row);
//! 3. `dh_chunk = dlogits · W` (matmul.rs);
//!
//! and a chunk whose targets are all ignored gets `dh = 0` and no products. The targets are
//! uploaded once per call into the backend's scratch (`[n]` i32, then `[n]` f32 row losses);
//! the row losses are downloaded once at the end and summed in row order in f64, so the result
//! is deterministic (the one synchronization of the op).

use super::launch::{Grid, int, kernel_args};
use super::{CudaBackend, CudaView, CudaViewMut, CudaWeight};
use crate::backend::check_len;
use crate::backend::cpu::cross_entropy::IGNORE;
use crate::{Error, Result};

/// Lengths, chunk, scale and target ids, as the CPU backend checks them; returns `n`.
fn check(
    h: usize,
    w: &CudaWeight<'_>,
    targets: &[i32],
    scale: f32,
    chunk: usize,
    logits: usize,
    dh: usize,
) -> Result<usize> {
    let op = "cross_entropy";
    let n = targets.len();
    check_len(op, "h", h, n, w.cols)?;
    check_len(op, "dh", dh, n, w.cols)?;
    if let Some((i, &t)) = targets
        .iter()
        .enumerate()
        .find(|&(_, &t)| t != IGNORE && (t < 0 || t as usize >= w.rows))
    {
        return Err(Error::Invalid(format!(
            "cross_entropy: target {t} of token {i} is outside the vocabulary of {} (or {IGNORE})",
            w.rows
        )));
    }
    if chunk == 0 || w.rows == 0 {
        return Err(Error::Invalid(format!(
            "cross_entropy: chunk {chunk} and vocabulary {} must be ≥ 1",
            w.rows
        )));
    }
    check_len(op, "logits scratch", logits, chunk, w.rows)?;
    if !scale.is_finite() {
        return Err(Error::Invalid(format!(
            "cross_entropy: scale {scale} is not finite"
        )));
    }
    Ok(n)
}

#[allow(clippy::too_many_arguments)]
pub fn cross_entropy(
    be: &CudaBackend,
    h: CudaView<'_>,
    w: &CudaWeight<'_>,
    targets: &[i32],
    scale: f32,
    chunk: usize,
    logits: CudaViewMut<'_>,
    dh: CudaViewMut<'_>,
) -> Result<f64> {
    let n = check(h.len(), w, targets, scale, chunk, logits.len(), dh.len())?;
    if n == 0 {
        return Ok(0.0);
    }
    be.bind()?;
    let (dim, vocab) = (w.cols, w.rows);
    let vocab_i = int("cross_entropy", "vocab", vocab)?;
    let (lg_ptr, dh_ptr) = (logits.ptr(), dh.ptr());
    let mut row_loss = vec![0.0f32; n];
    be.with_scratch(8 * n, |scratch| {
        let (t_dev, loss_dev) = (scratch, scratch + 4 * n as u64);
        be.copy_to_device(targets, t_dev)?;
        let mut i0 = 0;
        while i0 < n {
            let c = chunk.min(n - i0);
            let dh_c = CudaViewMut::from_raw(dh_ptr, n * dim).slice(i0 * dim..(i0 + c) * dim)?;
            if targets[i0..i0 + c].iter().all(|&t| t == IGNORE) {
                super::elementwise::zero(be, dh_c)?;
                i0 += c;
                continue;
            }
            let h_c = h.slice(i0 * dim..(i0 + c) * dim)?;
            let lg = CudaViewMut::from_raw(lg_ptr, c * vocab);
            super::matmul::matmul_xwt(be, h_c, c, w, lg)?;
            let rows = int("cross_entropy", "chunk", c)?;
            let (t_c, loss_c) = (t_dev + 4 * i0 as u64, loss_dev + 4 * i0 as u64);
            // SAFETY: parameters as kernels/README.md (cross_entropy.cu): logits [c, vocab] in
            // the checked scratch, c targets and c losses inside the 8n-byte device scratch.
            unsafe {
                be.launch(
                    be.kernels().ce_softmax_grad,
                    Grid::new("cross_entropy", c, 1, 256)?,
                    kernel_args![lg_ptr, t_c, loss_c, rows, vocab_i, scale],
                )?;
            }
            let dlogits = CudaView::from_raw(lg_ptr, c * vocab);
            super::matmul::matmul_dyw(be, dlogits, c, w, dh_c)?;
            i0 += c;
        }
        be.copy_to_host(loss_dev, &mut row_loss)
    })?;
    // Rows of skipped chunks were never written: count only the non-ignored targets.
    Ok(row_loss
        .iter()
        .zip(targets)
        .filter(|&(_, &t)| t != IGNORE)
        .map(|(&l, _)| l as f64)
        .sum())
}
