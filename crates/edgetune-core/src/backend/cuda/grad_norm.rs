//! The global gradient norm on the device (kernels/grad_norm.cu), as an inherent method of
//! [`CudaBackend`]: per tensor `et_sum_squares` writes f64 partial sums of `g²` per block, then
//! `et_reduce_f64` adds them (first tensor overwriting, the rest accumulating) into one f64; the
//! host downloads it once and takes the square root — `optim::clip::global_norm` on the device.
//! Deterministic for given sizes (fixed grid and tree order).

use super::launch::{Grid, cdiv, int, kernel_args};
use super::{CudaBackend, CudaView};
use crate::Result;

/// Most partial sums one tensor produces (the partials scratch holds this many f64).
pub const MAX_PARTIALS: usize = 1024;

/// Blocks of `et_sum_squares` for `n` values: `min(1024, ceil(n / 2048))`, at least 1.
pub fn partial_blocks(n: usize) -> usize {
    cdiv(n, 2048).clamp(1, MAX_PARTIALS)
}

impl CudaBackend {
    /// `sqrt(Σ_tensors Σ_i g_i²)` over `grads` (f64 sums), one synchronization.
    pub fn global_norm(&self, grads: &[CudaView<'_>]) -> Result<f64> {
        let op = "global_norm";
        self.bind()?;
        let mut total = [0.0f64];
        self.with_scratch(8 * (MAX_PARTIALS + 1), |scratch| {
            let (partials, out) = (scratch, scratch + 8 * MAX_PARTIALS as u64);
            let mut first = true;
            for g in grads.iter().filter(|g| !g.is_empty()) {
                let blocks = partial_blocks(g.len());
                let (n, m) = (int(op, "n", g.len())?, blocks as i32);
                let accumulate: i32 = if first { 0 } else { 1 };
                first = false;
                // SAFETY: parameters as kernels/README.md (grad_norm.cu): `partials` holds
                // MAX_PARTIALS ≥ blocks f64, `out` one f64, both in the scratch.
                unsafe {
                    self.launch(
                        self.kernels().sum_squares,
                        Grid::new(op, blocks, 1, 256)?,
                        kernel_args![g.ptr(), n, partials],
                    )?;
                    self.launch(
                        self.kernels().reduce_f64,
                        Grid::new(op, 1, 1, 256)?,
                        kernel_args![partials, m, out, accumulate],
                    )?;
                }
            }
            if first {
                return Ok(()); // no values: the norm is 0
            }
            self.copy_to_host(out, &mut total)
        })?;
        Ok(total[0].sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_blocks_follow_the_abi() {
        assert_eq!(partial_blocks(0), 1);
        assert_eq!(partial_blocks(1), 1);
        assert_eq!(partial_blocks(2048), 1);
        assert_eq!(partial_blocks(2049), 2);
        assert_eq!(partial_blocks(1 << 30), 1024);
    }
}
