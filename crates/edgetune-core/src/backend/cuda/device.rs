//! CUDA driver detection and the device's properties (compute capability, integrated or
//! discrete, host-register support), read once when the backend opens.
//!
//! cudarc loads `libcuda.so.1` at its first call and **panics** when the library is missing
//! (docs/ARCHITECTURE.md#cuda-without-an-installation), so every entry point here first asks
//! [`driver_present`], which only tries to `dlopen` it. A CPU-only machine therefore gets an
//! [`Error`] naming the problem and the way out (`--backend cpu`), never a panic.

use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, DriverError};

use crate::{Error, Result};

/// The message for a machine without the driver library (the CLI prints it as is).
pub const NO_DRIVER: &str = "no CUDA driver found (libcuda.so.1 not loadable); use --backend cpu";

/// Whether the CUDA driver library can be loaded (no CUDA call is made).
pub fn driver_present() -> bool {
    // SAFETY: only tries `dlopen` on the candidate names; nothing is called through it.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether cuBLAS can be loaded (dense GEMMs need it; checked before the first handle).
pub fn cublas_present() -> bool {
    // SAFETY: as `driver_present`.
    unsafe { cudarc::cublas::sys::is_culib_present() }
}

/// A driver error as a crate error, naming what was being done.
pub(crate) fn driver_err(what: &str, e: DriverError) -> Error {
    Error::Invalid(format!("cuda: {what}: {e:?}"))
}

/// What the backend needs to know about its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// `(major, minor)`: (8, 7) on Jetson Orin, (7, 2) on Xavier, (9, 0) on H100/H200.
    pub compute_capability: (i32, i32),
    /// An integrated GPU shares the host's DRAM (Jetson): mapping weights beats copying them.
    pub integrated: bool,
    /// `CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED`: `cuMemHostRegister` works on this device
    /// (the condition for `--weights map`).
    pub host_register: bool,
    /// The device can read registered host memory with the read-only flag
    /// (`CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED`).
    pub read_only_host_register: bool,
    /// Bytes of device memory.
    pub total_mem: usize,
    pub multiprocessors: i32,
}

impl DeviceInfo {
    /// One line for logs and the CLI's notice.
    pub fn summary(&self) -> String {
        format!(
            "{} (cuda:{}, sm_{}{}, {}, {:.1} GiB)",
            self.name,
            self.ordinal,
            self.compute_capability.0,
            self.compute_capability.1,
            if self.integrated {
                "integrated"
            } else {
                "discrete"
            },
            self.total_mem as f64 / (1u64 << 30) as f64
        )
    }
}

/// Opens device `ordinal`: checks the driver first (see the module docs), then creates (retains)
/// its primary context and reads the properties.
pub fn open(ordinal: usize) -> Result<(Arc<CudaContext>, DeviceInfo)> {
    if !driver_present() {
        return Err(Error::Invalid(NO_DRIVER.into()));
    }
    let count = CudaContext::device_count().map_err(|e| {
        Error::Invalid(format!(
            "cuda: the driver is present but cuInit/cuDeviceGetCount failed ({e:?}); \
             use --backend cpu"
        ))
    })?;
    if ordinal >= count.max(0) as usize {
        return Err(Error::Invalid(format!(
            "cuda: device {ordinal} asked for, {count} present; use --backend cpu"
        )));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| driver_err("creating the context", e))?;
    let attr = |a: Attr| {
        ctx.attribute(a)
            .map_err(|e| driver_err(&format!("reading {a:?}"), e))
    };
    let info = DeviceInfo {
        ordinal,
        name: ctx.name().map_err(|e| driver_err("reading the name", e))?,
        compute_capability: ctx
            .compute_capability()
            .map_err(|e| driver_err("reading the compute capability", e))?,
        integrated: attr(Attr::CU_DEVICE_ATTRIBUTE_INTEGRATED)? != 0,
        host_register: attr(Attr::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED)? != 0,
        read_only_host_register: attr(Attr::CU_DEVICE_ATTRIBUTE_READ_ONLY_HOST_REGISTER_SUPPORTED)?
            != 0,
        total_mem: ctx
            .total_mem()
            .map_err(|e| driver_err("reading the memory size", e))?,
        multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
    };
    log::info!("cuda: {}", info.summary());
    Ok((ctx, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_without_a_driver_is_an_error_not_a_panic() {
        // On a machine with a driver this opens the device (or names why it cannot); without
        // one it must be the NO_DRIVER error. Either way it returns.
        match open(0) {
            Ok((_, info)) => assert!(info.compute_capability.0 >= 3, "{info:?}"),
            Err(e) if !driver_present() => assert_eq!(e.to_string(), NO_DRIVER),
            Err(e) => assert!(e.to_string().contains("cuda"), "{e}"),
        }
    }

    #[test]
    fn summary_names_the_capability_and_kind() {
        let info = DeviceInfo {
            ordinal: 0,
            name: "Orin".into(),
            compute_capability: (8, 7),
            integrated: true,
            host_register: true,
            read_only_host_register: true,
            total_mem: 8 << 30,
            multiprocessors: 8,
        };
        assert_eq!(info.summary(), "Orin (cuda:0, sm_87, integrated, 8.0 GiB)");
    }
}
