//! Device storage: one device allocation per [`Backend::alloc`](crate::backend::Backend::alloc)
//! call (the plan's arena, the KV cache) and borrowed `(pointer, length)` views of it.
//!
//! Views carry a raw `CUdeviceptr` and a length in f32, with a lifetime tying them to the
//! buffer they came from, so the borrow checker keeps the same discipline as `&[f32]` /
//! `&mut [f32]` on the CPU backend: a [`CudaViewMut`] is unique, [`CudaView`]s are `Copy`.
//! Sub-ranging is pointer arithmetic (`ptr + 4·start`), checked against the view's length, so
//! the memory planner can carve every buffer of a step out of one allocation without the
//! driver seeing more than one (each separate allocation costs events,
//! docs/ARCHITECTURE.md#cuda-without-an-installation).

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use cudarc::driver::CudaContext;
use cudarc::driver::result as cu;
use cudarc::driver::sys::CUdeviceptr;

use super::device::driver_err;
use crate::{Error, Result};

/// Bytes per element of every buffer (activations are f32).
const F32: u64 = 4;

/// One device allocation (raw `cuMemAlloc`), freed on drop. Holds its context alive.
pub struct DeviceAlloc {
    ptr: CUdeviceptr,
    bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: a device address is plain data; the driver API is thread-safe once the context is
// bound, which `Drop` does.
unsafe impl Send for DeviceAlloc {}
unsafe impl Sync for DeviceAlloc {}

impl DeviceAlloc {
    /// `bytes` of device memory, zeroed (a zero-length request gets no allocation, address 0).
    pub fn zeroed(ctx: &Arc<CudaContext>, bytes: usize) -> Result<DeviceAlloc> {
        let mut a = DeviceAlloc {
            ptr: 0,
            bytes,
            ctx: ctx.clone(),
        };
        if bytes == 0 {
            return Ok(a);
        }
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: plain allocation; freed once in Drop.
        a.ptr = unsafe { cu::malloc_sync(bytes) }.map_err(|e| {
            driver_err(
                &format!(
                    "allocating {bytes} bytes ({:.1} MiB)",
                    bytes as f64 / 1048576.0
                ),
                e,
            )
        })?;
        // SAFETY: the range was just allocated.
        unsafe { cu::memset_d8_sync(a.ptr, 0, bytes) }
            .map_err(|e| driver_err("zeroing a new allocation", e))?;
        Ok(a)
    }

    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for DeviceAlloc {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        // Errors cannot be returned from drop; the context records them for the next call.
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: allocated by `zeroed`, freed once; the synchronous free waits for work on it.
        self.ctx.record_err(unsafe { cu::free_sync(self.ptr) });
    }
}

/// An owned f32 buffer on the device.
pub struct CudaBuffer {
    alloc: DeviceAlloc,
    len: usize,
}

impl CudaBuffer {
    pub(crate) fn zeroed(ctx: &Arc<CudaContext>, len: usize) -> Result<CudaBuffer> {
        let bytes = len.checked_mul(F32 as usize).ok_or_else(|| {
            Error::Invalid(format!(
                "cuda: a buffer of {len} f32 overflows the address space"
            ))
        })?;
        Ok(CudaBuffer {
            alloc: DeviceAlloc::zeroed(ctx, bytes)?,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn view(&self) -> CudaView<'_> {
        CudaView::from_raw(self.alloc.ptr(), self.len)
    }

    pub fn view_mut(&mut self) -> CudaViewMut<'_> {
        CudaViewMut::from_raw(self.alloc.ptr(), self.len)
    }
}

/// A read-only range of a device buffer: `len` f32 from `ptr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CudaView<'a> {
    ptr: CUdeviceptr,
    len: usize,
    _buffer: PhantomData<&'a CudaBuffer>,
}

/// A writable range of a device buffer: `len` f32 from `ptr`, unique like `&mut [f32]`.
#[derive(Debug, PartialEq, Eq)]
pub struct CudaViewMut<'a> {
    ptr: CUdeviceptr,
    len: usize,
    _buffer: PhantomData<&'a mut CudaBuffer>,
}

fn range_err(range: &Range<usize>, len: usize) -> Error {
    Error::Invalid(format!(
        "view range {}..{} is outside a view of {len} values",
        range.start, range.end
    ))
}

/// The device address of `range` inside a view at `ptr` of `len` values, if it fits.
fn sub_range(ptr: CUdeviceptr, len: usize, range: &Range<usize>) -> Result<(CUdeviceptr, usize)> {
    if range.start > range.end || range.end > len {
        return Err(range_err(range, len));
    }
    Ok((ptr + range.start as u64 * F32, range.end - range.start))
}

impl<'a> CudaView<'a> {
    /// A view of `len` f32 at device address `ptr`. Crate-internal: the caller guarantees the
    /// range is allocated for `'a` (tests use arbitrary addresses that are never dereferenced).
    pub(crate) fn from_raw(ptr: CUdeviceptr, len: usize) -> Self {
        CudaView {
            ptr,
            len,
            _buffer: PhantomData,
        }
    }

    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `self[range]`.
    pub fn slice(self, range: Range<usize>) -> Result<CudaView<'a>> {
        let (ptr, len) = sub_range(self.ptr, self.len, &range)?;
        Ok(CudaView::from_raw(ptr, len))
    }
}

impl<'a> CudaViewMut<'a> {
    /// As [`CudaView::from_raw`], writable.
    pub(crate) fn from_raw(ptr: CUdeviceptr, len: usize) -> Self {
        CudaViewMut {
            ptr,
            len,
            _buffer: PhantomData,
        }
    }

    pub fn ptr(&self) -> CUdeviceptr {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `self[range]`, consuming the view (like re-borrowing `&mut v[range]`).
    pub fn slice(self, range: Range<usize>) -> Result<CudaViewMut<'a>> {
        let (ptr, len) = sub_range(self.ptr, self.len, &range)?;
        Ok(CudaViewMut::from_raw(ptr, len))
    }

    /// The same range, read-only, for as long as this borrow.
    pub fn as_view(&self) -> CudaView<'_> {
        CudaView::from_raw(self.ptr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Views are address arithmetic: these run without a device (the addresses are never used).

    #[test]
    fn slices_offset_by_four_bytes_per_value() {
        let v = CudaView::from_raw(0x1000, 100);
        let s = v.slice(10..30).unwrap();
        assert_eq!((s.ptr(), s.len()), (0x1000 + 40, 20));
        let s2 = s.slice(5..5).unwrap();
        assert_eq!((s2.ptr(), s2.len()), (0x1000 + 60, 0));
        let m = CudaViewMut::from_raw(0x2000, 8).slice(2..8).unwrap();
        assert_eq!((m.ptr(), m.len()), (0x2008, 6));
        assert_eq!(m.as_view().ptr(), 0x2008);
    }

    #[test]
    fn out_of_range_slices_are_errors_naming_the_range() {
        let v = CudaView::from_raw(0x1000, 10);
        let e = v.slice(5..11).unwrap_err().to_string();
        assert!(e.contains("5..11") && e.contains("10 values"), "{e}");
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 6..5;
        assert!(v.slice(reversed).is_err());
        assert!(CudaViewMut::from_raw(0, 3).slice(0..4).is_err());
        assert!(v.slice(10..10).is_ok());
    }
}
