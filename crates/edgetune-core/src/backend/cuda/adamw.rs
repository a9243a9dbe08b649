//! AdamW on the device (kernels/adamw.cu), as inherent methods of [`CudaBackend`] (not a
//! `Backend` op: the paged optimizer in pages.rs calls them): the f32-state update and the
//! 8-bit blockwise one, both the same maths as crates/edgetune-core/src/optim/adamw.rs / state8bit.rs (the kernels
//! avoid FMA contraction, so the f32 update is bit-identical to the CPU's `adamw_element`).
//!
//! 8-bit state on the device ([`Adam8bitState`]): one allocation holding `absmax [2·nb]` f32
//! (`absmax_m` then `absmax_v`), then `q_m [n]` and `q_v [n]` u8 codes, the CPU layout; the two
//! dynamic maps live in [`DeviceMaps`] (512 f32, uploaded once).

use super::buffer::DeviceAlloc;
use super::launch::{Grid, cdiv, int, kernel_args};
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::backend::{Backend, check_len};
use crate::optim::adamw::AdamWStep;
use crate::optim::state8bit::{BLOCK, DynamicMaps, n_blocks};
use crate::{Error, Result};

/// The signed and unsigned dynamic maps on the device, and the signed map's code for 0.
pub struct DeviceMaps {
    alloc: DeviceAlloc,
    signed_zero: u8,
}

/// One tensor's 8-bit AdamW state on the device (layout in the module docs).
pub struct Adam8bitState {
    alloc: DeviceAlloc,
    n: usize,
}

impl Adam8bitState {
    /// Elements of the tensor.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Byte offsets of `absmax`, `q_m`, `q_v` for `n` elements.
    pub fn offsets(n: usize) -> (usize, usize, usize) {
        let nb = n_blocks(n);
        (0, 8 * nb, 8 * nb + n)
    }

    /// Total bytes for `n` elements (= `state8bit::state_bytes_8bit(n)`).
    pub fn bytes(n: usize) -> usize {
        8 * n_blocks(n) + 2 * n
    }
}

fn check_state(op: &str, n: usize, absmax: usize, q_m: usize, q_v: usize) -> Result<()> {
    check_len(op, "absmax", absmax, 2, n_blocks(n))?;
    check_len(op, "q_m", q_m, n, 1)?;
    check_len(op, "q_v", q_v, n, 1)
}

impl CudaBackend {
    /// `p`, `m`, `v` updated in place from `g` by one AdamW step with scalars `k`.
    pub fn adamw_f32(
        &self,
        p: CudaViewMut<'_>,
        g: CudaView<'_>,
        m: CudaViewMut<'_>,
        v: CudaViewMut<'_>,
        k: &AdamWStep,
    ) -> Result<()> {
        let op = "adamw";
        let n = p.len();
        check_len(op, "grad", g.len(), n, 1)?;
        check_len(op, "m", m.len(), n, 1)?;
        check_len(op, "v", v.len(), n, 1)?;
        if n == 0 {
            return Ok(());
        }
        self.bind()?;
        let n_i = int(op, "n", n)?;
        // SAFETY: parameters as kernels/README.md (adamw.cu); lengths checked above.
        unsafe {
            self.launch(
                self.kernels().adamw_f32,
                Grid::elementwise(op, n)?,
                kernel_args![
                    p.ptr(),
                    g.ptr(),
                    m.ptr(),
                    v.ptr(),
                    n_i,
                    k.decay,
                    k.one_minus_beta1,
                    k.beta2,
                    k.one_minus_beta2,
                    k.step_size,
                    k.bc2_sqrt,
                    k.eps
                ],
            )
        }
    }

    /// Uploads the dynamic maps (once per run).
    pub fn dynamic_maps(&self, maps: &DynamicMaps) -> Result<DeviceMaps> {
        let alloc = DeviceAlloc::zeroed(self.ctx(), 512 * 4)?;
        self.bind()?;
        let mut both = [0.0f32; 512];
        both[..256].copy_from_slice(&maps.signed);
        both[256..].copy_from_slice(&maps.unsigned);
        self.copy_to_device(&both, alloc.ptr())?;
        self.synchronize()?;
        Ok(DeviceMaps {
            alloc,
            signed_zero: maps.signed_zero,
        })
    }

    /// A device copy of one tensor's 8-bit state (`absmax [2·nb]`, `q_m [n]`, `q_v [n]`).
    pub fn upload_8bit_state(
        &self,
        absmax: &[f32],
        q_m: &[u8],
        q_v: &[u8],
    ) -> Result<Adam8bitState> {
        let n = q_m.len();
        check_state("upload_8bit_state", n, absmax.len(), q_m.len(), q_v.len())?;
        let alloc = DeviceAlloc::zeroed(self.ctx(), Adam8bitState::bytes(n))?;
        self.bind()?;
        let (oa, om, ov) = Adam8bitState::offsets(n);
        self.copy_to_device(absmax, alloc.ptr() + oa as u64)?;
        self.copy_to_device(q_m, alloc.ptr() + om as u64)?;
        self.copy_to_device(q_v, alloc.ptr() + ov as u64)?;
        self.synchronize()?;
        Ok(Adam8bitState { alloc, n })
    }

    /// Copies a device 8-bit state back into host arrays of the same layout.
    pub fn download_8bit_state(
        &self,
        s: &Adam8bitState,
        absmax: &mut [f32],
        q_m: &mut [u8],
        q_v: &mut [u8],
    ) -> Result<()> {
        check_state(
            "download_8bit_state",
            s.n,
            absmax.len(),
            q_m.len(),
            q_v.len(),
        )?;
        self.bind()?;
        let (oa, om, ov) = Adam8bitState::offsets(s.n);
        self.copy_to_host(s.alloc.ptr() + oa as u64, absmax)?;
        self.copy_to_host(s.alloc.ptr() + om as u64, q_m)?;
        self.copy_to_host(s.alloc.ptr() + ov as u64, q_v)
    }

    /// One AdamW step on `p` with 8-bit state `s` (one kernel block per 256-element block).
    pub fn adamw_8bit(
        &self,
        p: CudaViewMut<'_>,
        g: CudaView<'_>,
        s: &mut Adam8bitState,
        maps: &DeviceMaps,
        k: &AdamWStep,
    ) -> Result<()> {
        let op = "adamw_8bit";
        let n = p.len();
        check_len(op, "grad", g.len(), n, 1)?;
        if s.n != n {
            return Err(Error::Invalid(format!(
                "{op}: state for {} elements, parameter has {n}",
                s.n
            )));
        }
        if n == 0 {
            return Ok(());
        }
        self.bind()?;
        let n_i = int(op, "n", n)?;
        let (oa, om, ov) = Adam8bitState::offsets(n);
        let base = s.alloc.ptr();
        let (absmax, q_m, q_v) = (base + oa as u64, base + om as u64, base + ov as u64);
        let signed_zero = maps.signed_zero as i32;
        let grid = Grid::new(op, cdiv(n, BLOCK), 1, BLOCK as u32)?;
        // SAFETY: parameters as kernels/README.md (adamw.cu); `s` holds the state of n
        // elements in the documented layout, `maps` 512 floats; lengths checked above.
        unsafe {
            self.launch(
                self.kernels().adamw_8bit,
                grid,
                kernel_args![
                    p.ptr(),
                    g.ptr(),
                    absmax,
                    q_m,
                    q_v,
                    maps.alloc.ptr(),
                    signed_zero,
                    n_i,
                    k.decay,
                    k.one_minus_beta1,
                    k.beta2,
                    k.one_minus_beta2,
                    k.step_size,
                    k.bc2_sqrt,
                    k.eps
                ],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::state8bit::state_bytes_8bit;

    #[test]
    fn device_layout_matches_the_cpu_state_size() {
        for n in [1, 255, 256, 257, 4096, 10_000] {
            assert_eq!(Adam8bitState::bytes(n), state_bytes_8bit(n), "n = {n}");
            let (a, m, v) = Adam8bitState::offsets(n);
            assert_eq!((a, m - a, v - m), (0, 8 * n_blocks(n), n));
        }
    }
}
