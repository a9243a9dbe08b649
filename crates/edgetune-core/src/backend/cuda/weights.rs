//! Quantized weights on the device: `--weights map` (use the mapped GGUF pages in place) or
//! `--weights upload` (one copy of the file's bytes into device memory).
//!
//! The weights are never copied on the host (docs/ARCHITECTURE.md#weights-are-never-copied). On an
//! integrated GPU (Jetson: one DRAM) the mapped file is page-locked with
//! `cuMemHostRegister(READ_ONLY | DEVICEMAP)` and the kernels read the same physical pages through
//! `cuMemHostGetDevicePointer`; this needs `CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED` (and the
//! read-only variant, because the map is `PROT_READ`). Elsewhere (discrete GPUs, or registration
//! refused) the bytes are uploaded once.
//!
//! A [`WeightStore`] keeps the attached regions (host range → device address); each
//! [`CudaBackend::weight`](super::CudaBackend) call resolves a [`QuantMatrix`]'s bytes to a device
//! address inside one of them by offset, so attaching the file once covers every tensor. A
//! matrix outside every attached region is uploaded on its own (kept until the backend drops).
//! Registration is raw `sys` (cudarc has no safe wrapper for it).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cudarc::driver::CudaContext;
use cudarc::driver::result as cu;
use cudarc::driver::sys::{self, CUdeviceptr};

use super::buffer::DeviceAlloc;
use super::device::{DeviceInfo, driver_err};
use crate::quant::GgmlType;
use crate::quant::matmul::QuantMatrix;
use crate::{Error, Result};

/// How the weights reach the device (`--weights`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WeightsMode {
    /// `Map` where the device supports read-only host registration and is integrated (it
    /// shares the DRAM, so reading host pages costs nothing extra), else `Upload`.
    #[default]
    Auto,
    /// Register the mapped file and read it in place (falls back to `Upload`, with a log line,
    /// when the device or the driver refuses).
    Map,
    /// One copy into device memory.
    Upload,
}

impl WeightsMode {
    /// The mode actually used on `info`'s device: `(map?, why)`.
    pub fn resolve(self, info: &DeviceInfo) -> (bool, &'static str) {
        let can_map = info.host_register && info.read_only_host_register;
        match self {
            WeightsMode::Upload => (false, "--weights upload"),
            WeightsMode::Map if can_map => (true, "--weights map"),
            WeightsMode::Map => (
                false,
                "--weights map asked for, but the device reports no read-only host registration",
            ),
            WeightsMode::Auto if can_map && info.integrated => {
                (true, "integrated GPU with host registration")
            }
            WeightsMode::Auto if info.integrated => {
                (false, "integrated GPU without read-only host registration")
            }
            WeightsMode::Auto => (false, "discrete GPU"),
        }
    }
}

/// A quantized matrix readable by the device: `rows × cols` of `ty` at `ptr`, borrowed from the
/// mapped file for `'w` (like [`QuantMatrix`]).
#[derive(Clone, Copy, Debug)]
pub struct CudaWeight<'w> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Device address of the first block.
    pub ptr: CUdeviceptr,
    /// Bytes of the whole matrix.
    pub bytes: usize,
    _map: PhantomData<&'w [u8]>,
}

impl CudaWeight<'_> {
    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }
}

enum Backing {
    /// Page-locked host memory starting at this host address (unregistered on detach).
    Registered(usize),
    /// A device copy.
    Uploaded(#[allow(dead_code)] DeviceAlloc),
}

struct Region {
    id: u64,
    host: usize,
    len: usize,
    dev: CUdeviceptr,
    backing: Backing,
}

/// The device address of `bytes` inside one of `regions` (`(host start, length, device
/// start)`), if one holds all of it.
pub(crate) fn locate(
    regions: impl IntoIterator<Item = (usize, usize, CUdeviceptr)>,
    bytes: &[u8],
) -> Option<CUdeviceptr> {
    let (start, len) = (bytes.as_ptr() as usize, bytes.len());
    regions.into_iter().find_map(|(host, rlen, dev)| {
        let off = start.checked_sub(host)?;
        (off.checked_add(len)? <= rlen).then_some(dev + off as u64)
    })
}

/// The attached host regions of one backend.
pub struct WeightStore {
    ctx: Arc<CudaContext>,
    regions: Mutex<Vec<Region>>,
    next_id: Mutex<u64>,
}

impl WeightStore {
    pub(crate) fn new(ctx: Arc<CudaContext>) -> WeightStore {
        WeightStore {
            ctx,
            regions: Mutex::new(Vec::new()),
            next_id: Mutex::new(1),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<Region>>> {
        self.regions
            .lock()
            .map_err(|_| Error::Invalid("cuda: weight registry poisoned by a panic".into()))
    }

    fn add(&self, host: &[u8], dev: CUdeviceptr, backing: Backing) -> Result<u64> {
        let id = {
            let mut n = self
                .next_id
                .lock()
                .map_err(|_| Error::Invalid("cuda: weight registry poisoned".into()))?;
            *n += 1;
            *n
        };
        self.lock()?.push(Region {
            id,
            host: host.as_ptr() as usize,
            len: host.len(),
            dev,
            backing,
        });
        Ok(id)
    }

    /// Makes `bytes` (normally the whole mapped GGUF) readable by the device: registered in
    /// place when `map`, else uploaded once. A refused registration falls back to the upload.
    pub(crate) fn attach(&self, bytes: &[u8], map: bool) -> Result<(u64, bool)> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        if map {
            match register(bytes) {
                Ok(dev) => {
                    log::info!(
                        "cuda: weights mapped in place ({:.1} MiB host-registered read-only)",
                        bytes.len() as f64 / 1048576.0
                    );
                    let id = self.add(bytes, dev, Backing::Registered(bytes.as_ptr() as usize))?;
                    return Ok((id, true));
                }
                Err(e) => log::warn!("cuda: host registration refused ({e}); uploading instead"),
            }
        }
        let alloc = upload(&self.ctx, bytes)?;
        log::info!(
            "cuda: weights uploaded ({:.1} MiB)",
            bytes.len() as f64 / 1048576.0
        );
        let dev = alloc.ptr();
        Ok((self.add(bytes, dev, Backing::Uploaded(alloc))?, false))
    }

    /// Removes region `id`: unregisters host pages (after the device is idle) or frees the copy.
    pub(crate) fn detach(&self, id: u64) -> Result<()> {
        let region = {
            let mut regions = self.lock()?;
            match regions.iter().position(|r| r.id == id) {
                Some(i) => regions.swap_remove(i),
                None => return Ok(()),
            }
        };
        self.ctx
            .synchronize()
            .map_err(|e| driver_err("waiting before detaching weights", e))?;
        if let Backing::Registered(host) = region.backing {
            // SAFETY: `host` was registered by `attach` and is still mapped (the guard that
            // calls this borrows the bytes).
            unsafe { sys::cuMemHostUnregister(host as *mut std::ffi::c_void) }
                .result()
                .map_err(|e| driver_err("unregistering the mapped weights", e))?;
        }
        Ok(())
    }

    /// The device view of `m`: inside an attached region, or else uploaded on its own.
    pub(crate) fn weight<'w>(&self, m: QuantMatrix<'w>) -> Result<CudaWeight<'w>> {
        let found = {
            let regions = self.lock()?;
            locate(regions.iter().map(|r| (r.host, r.len, r.dev)), m.data)
        };
        let ptr = match found {
            Some(p) => p,
            None => {
                let alloc = upload(&self.ctx, m.data)?;
                let dev = alloc.ptr();
                self.add(m.data, dev, Backing::Uploaded(alloc))?;
                dev
            }
        };
        Ok(CudaWeight {
            ty: m.ty,
            rows: m.rows,
            cols: m.cols,
            ptr,
            bytes: m.data.len(),
            _map: PhantomData,
        })
    }
}

impl Drop for WeightStore {
    fn drop(&mut self) {
        let regions = std::mem::take(self.regions.get_mut().unwrap_or_else(|p| p.into_inner()));
        for r in regions {
            if let Backing::Registered(host) = r.backing {
                self.ctx.record_err(self.ctx.bind_to_thread());
                // SAFETY: registered by `attach`; a guard still alive would have borrowed the
                // bytes, so they are mapped (a detached region is no longer in the list).
                let res = unsafe { sys::cuMemHostUnregister(host as *mut std::ffi::c_void) };
                self.ctx.record_err(res.result());
            }
        }
    }
}

/// Registers `bytes` read-only for the device and returns its device address.
fn register(bytes: &[u8]) -> Result<CUdeviceptr> {
    let p = bytes.as_ptr() as *mut std::ffi::c_void;
    let flags = sys::CU_MEMHOSTREGISTER_READ_ONLY | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
    // SAFETY: `bytes` is a live host range; READ_ONLY means the device never writes it (the map
    // is PROT_READ). Unregistered by `detach` or the store's Drop.
    unsafe { sys::cuMemHostRegister_v2(p, bytes.len(), flags) }
        .result()
        .map_err(|e| driver_err("cuMemHostRegister on the mapped weights", e))?;
    let mut dev: CUdeviceptr = 0;
    // SAFETY: `p` was just registered with DEVICEMAP.
    if let Err(e) = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dev, p, 0) }.result() {
        // SAFETY: undo the registration made above.
        let _ = unsafe { sys::cuMemHostUnregister(p) };
        return Err(driver_err("cuMemHostGetDevicePointer", e));
    }
    Ok(dev)
}

/// One device copy of `bytes`.
fn upload(ctx: &Arc<CudaContext>, bytes: &[u8]) -> Result<DeviceAlloc> {
    let alloc = DeviceAlloc::zeroed(ctx, bytes.len())?;
    if !bytes.is_empty() {
        // SAFETY: the allocation holds `bytes.len()` bytes; the copy is synchronous.
        unsafe { cu::memcpy_htod_sync(alloc.ptr(), bytes) }
            .map_err(|e| driver_err("uploading weights", e))?;
    }
    Ok(alloc)
}

/// Weights attached for as long as this guard lives (it borrows the mapped bytes, so the map
/// outlives the registration). Dropping it waits for the device and unregisters / frees.
pub struct AttachedWeights<'a> {
    pub(crate) store: Arc<WeightStore>,
    pub(crate) id: u64,
    /// Whether the bytes are read in place (`true`) or were uploaded.
    pub mapped: bool,
    pub(crate) _bytes: PhantomData<&'a [u8]>,
}

impl Drop for AttachedWeights<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.store.detach(self.id) {
            log::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(integrated: bool, reg: bool, ro: bool) -> DeviceInfo {
        DeviceInfo {
            ordinal: 0,
            name: "test".into(),
            compute_capability: (8, 7),
            integrated,
            host_register: reg,
            read_only_host_register: ro,
            total_mem: 1 << 30,
            multiprocessors: 1,
        }
    }

    #[test]
    fn auto_maps_only_on_integrated_gpus_with_read_only_registration() {
        assert!(WeightsMode::Auto.resolve(&info(true, true, true)).0);
        assert!(!WeightsMode::Auto.resolve(&info(true, true, false)).0);
        assert!(!WeightsMode::Auto.resolve(&info(false, true, true)).0);
        assert!(WeightsMode::Map.resolve(&info(false, true, true)).0);
        assert!(!WeightsMode::Map.resolve(&info(true, false, true)).0);
        assert!(!WeightsMode::Upload.resolve(&info(true, true, true)).0);
    }

    #[test]
    fn locate_offsets_into_the_region_holding_all_the_bytes() {
        let file = vec![0u8; 1000];
        let base = file.as_ptr() as usize;
        let regions = [(base, 1000, 0x7000_0000u64)];
        assert_eq!(locate(regions, &file[100..300]), Some(0x7000_0000 + 100));
        assert_eq!(locate(regions, &file[..]), Some(0x7000_0000));
        // Partly outside (a region covering only the first half).
        let half = [(base, 500, 0x10u64)];
        assert_eq!(locate(half, &file[400..600]), None);
        assert_eq!(locate(half, &file[0..500]), Some(0x10));
        // Before the region.
        let late = [(base + 10, 990, 0x10u64)];
        assert_eq!(locate(late, &file[0..20]), None);
        assert_eq!(locate(std::iter::empty(), &file[..1]), None);
    }
}
