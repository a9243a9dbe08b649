//! Kernel launches: the launch geometry of kernels/README.md as plain arithmetic (unit-tested
//! without a device), checked conversions of sizes to the kernels' `int`, and the one `unsafe`
//! entry point that queues a kernel on the compute stream.
//!
//! Arguments are passed as the driver wants them: an array of pointers to each value, each value
//! of exactly the C parameter's type (`CUdeviceptr` = u64 for pointers, `i32` for `int`, `f32`
//! for `float`). [`kernel_args!`] builds that array from already-typed locals.

use std::ffi::c_void;

use cudarc::driver::result as cu;

use super::CudaBackend;
use super::device::driver_err;
use super::module::Func;
use crate::{Error, Result};

/// `ceil(a / b)`.
pub(crate) fn cdiv(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

/// `v` as a kernel `int`, or an error naming the op and the quantity.
pub(crate) fn int(op: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        Error::Invalid(format!(
            "{op}: {what} = {v} exceeds the kernels' 32-bit int"
        ))
    })
}

/// A launch geometry: grid `(x, y, z)` blocks of `block` threads with `shmem` bytes of dynamic
/// shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    pub grid: (u32, u32, u32),
    pub block: u32,
    pub shmem: u32,
}

impl Grid {
    /// `(x, y, 1)` blocks of `block` threads, no dynamic shared memory; the driver's limits
    /// (x < 2³¹, y < 2¹⁶) are checked.
    pub fn new(op: &str, x: usize, y: usize, block: u32) -> Result<Grid> {
        if x == 0 || y == 0 {
            return Err(Error::Invalid(format!(
                "{op}: empty launch grid ({x} × {y})"
            )));
        }
        if x > i32::MAX as usize || y > 65535 {
            return Err(Error::Invalid(format!(
                "{op}: launch grid {x} × {y} exceeds the device limits (2³¹−1 × 65535)"
            )));
        }
        Ok(Grid {
            grid: (x as u32, y as u32, 1),
            block,
            shmem: 0,
        })
    }

    /// One block of 256 threads per 256 elements (the element-wise kernels).
    pub fn elementwise(op: &str, n: usize) -> Result<Grid> {
        Grid::new(op, cdiv(n, 256), 1, 256)
    }

    pub fn with_shmem(self, bytes: usize) -> Grid {
        Grid {
            shmem: bytes as u32,
            ..self
        }
    }
}

/// `&mut [*mut c_void]` of pointers to each argument (locals of the exact C types). Use it
/// inside the launch call's argument list, so the temporaries live for the whole statement.
macro_rules! kernel_args {
    ($($a:expr),* $(,)?) => {
        &mut [$( (&$a) as *const _ as *mut ::std::ffi::c_void ),*]
    };
}
pub(crate) use kernel_args;

impl CudaBackend {
    /// Queues `f` on the compute stream.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number and type (kernels/README.md), every
    /// device pointer among them must cover the range the kernel touches for these sizes (the
    /// op files check lengths with `check_len` first), and the pointees must outlive the queued
    /// work (they are views of buffers the caller borrows; downloads synchronize).
    pub(crate) unsafe fn launch(&self, f: Func, g: Grid, args: &mut [*mut c_void]) -> Result<()> {
        // SAFETY: forwarded to the caller's contract above.
        unsafe {
            cu::launch_kernel(
                f.0,
                g.grid,
                (g.block, 1, 1),
                g.shmem,
                self.stream().cu_stream(),
                args,
            )
        }
        .map_err(|e| driver_err(&format!("launching a kernel on grid {g:?}"), e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_follow_the_abi_and_reject_bad_sizes() {
        assert_eq!(
            Grid::elementwise("x", 257).unwrap(),
            Grid {
                grid: (2, 1, 1),
                block: 256,
                shmem: 0
            }
        );
        assert_eq!(Grid::elementwise("x", 256).unwrap().grid, (1, 1, 1));
        assert!(Grid::elementwise("x", 0).is_err());
        assert!(Grid::new("x", 1, 70000, 128).is_err());
        assert!(Grid::new("x", 1 << 31, 1, 128).is_err());
        assert_eq!(
            Grid::new("x", 3, 2, 128).unwrap().with_shmem(100).shmem,
            100
        );
        assert_eq!(int("op", "n", 5).unwrap(), 5);
        let e = int("op", "n", 1 << 31).unwrap_err().to_string();
        assert!(e.contains("op") && e.contains("2147483648"), "{e}");
    }

    #[test]
    fn kernel_args_point_at_each_value() {
        let (a, b, c) = (7u64, -3i32, 1.5f32);
        let args: &mut [*mut c_void] = kernel_args![a, b, c];
        // SAFETY: the pointers were just taken from live locals of these types.
        unsafe {
            assert_eq!(*(args[0] as *const u64), 7);
            assert_eq!(*(args[1] as *const i32), -3);
            assert_eq!(*(args[2] as *const f32), 1.5);
        }
    }
}
