//! The CUDA backend (feature `cuda`): the [`Backend`] ops as launches of our own PTX kernels
//! (`kernels/`, ABI in kernels/README.md) and cuBLAS for dense GEMMs, through cudarc with the
//! driver loaded at run time (a binary built with the feature runs, and says why it cannot use
//! the GPU, on machines without one).
//!
//! Layout of this directory (one op family per file, mirroring `crates/edgetune-core/src/backend/cpu/`):
//! - `device.rs`: driver detection and device properties; `module.rs`: the embedded PTX and
//!   kernel handles; `buffer.rs`: allocations and `(ptr, len)` views; `weights.rs`: mapped or
//!   uploaded GGUF bytes; `launch.rs`: the launch helper and grid arithmetic;
//! - ops: `matmul.rs`, `rmsnorm.rs`, `rope.rs`, `swiglu.rs`, `attention.rs`,
//!   `cross_entropy.rs`, `embedding.rs`, `elementwise.rs`, `gemm.rs` (cuBLAS);
//! - optimizer: `adamw.rs` and `grad_norm.rs` (inherent methods, not `Backend` ops yet), and
//!   `pages.rs`, staging optimizer state through pinned host memory on a second stream.
//!
//! Every op validates shapes with the same checks as the CPU backend (`check_len`) before it
//! launches, so a bad call is an `Err` naming the op and the numbers, never a device fault.
//! Ops are queued on one compute stream; [`Backend::download`] / [`Backend::synchronize`] wait.
//!
//! Testing: `tests/cuda_parity/ops.rs` runs every op here against the CPU backend (those tests are
//! `#[ignore = "needs a CUDA device"]`: run with `--include-ignored` where a GPU is); the CPU-side logic (views, weight
//! lookup, PTX choice, launch grids, page schedule) has unit tests that run everywhere.
//!
//! Training: `crates/edgetune-train/src/train/step_device.rs` (`DeviceStep<B>`) is a whole LoRA training micro-batch
//! in `Backend` ops over one workspace allocation; on this backend it is the `--backend cuda`
//! engine of `edgetune train` (`crates/edgetune-train/src/train/engine.rs`), checked against the CPU `TrainStep` by
//! `tests/cuda_parity/step.rs`.

pub mod adamw;
pub mod attention;
pub mod buffer;
pub mod cross_entropy;
pub mod device;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod grad_norm;
pub mod launch;
pub mod matmul;
pub mod module;
pub mod pages;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;
pub mod weights;

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::result as cu;
use cudarc::driver::{CudaContext, CudaStream};

use super::{AttentionDims, Backend, GemmDims, RopeDims, check_len};
use crate::quant::matmul::QuantMatrix;
use crate::{Error, Result};
pub use buffer::{CudaBuffer, CudaView, CudaViewMut, DeviceAlloc};
use device::driver_err;
pub use device::{DeviceInfo, NO_DRIVER, driver_present};
use module::{Kernels, PtxTarget};
use weights::WeightStore;
pub use weights::{AttachedWeights, CudaWeight, WeightsMode};

/// The CUDA backend: a context on one device, a compute stream, a copy stream (optimizer
/// pages), the loaded kernels, a cuBLAS handle and the attached weights. Cloning shares them.
#[derive(Clone)]
pub struct CudaBackend {
    inner: Arc<Inner>,
}

struct Inner {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    copy_stream: Arc<CudaStream>,
    kernels: Kernels,
    /// `None` when libcublas cannot be loaded: `gemm` is then an error saying so.
    blas: Option<CudaBlas>,
    weights: Arc<WeightStore>,
    weights_mode: WeightsMode,
    /// Small device scratch for host-side ids/targets/losses (grown, never shrunk).
    scratch: Mutex<Option<DeviceAlloc>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({})", self.inner.info.summary())
    }
}

impl CudaBackend {
    /// Opens device `ordinal` with `--weights auto` (see [`CudaBackend::with_weights`]).
    pub fn new(ordinal: usize) -> Result<CudaBackend> {
        Self::with_weights(ordinal, WeightsMode::Auto)
    }

    /// Opens device `ordinal`: checks for the driver (an error, never a panic, without one),
    /// loads the PTX build for its capability, creates the streams and the cuBLAS handle.
    pub fn with_weights(ordinal: usize, weights_mode: WeightsMode) -> Result<CudaBackend> {
        let (ctx, info) = device::open(ordinal)?;
        let target = PtxTarget::for_capability(info.compute_capability)?;
        let kernels = Kernels::load(&ctx, target)?;
        let stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating the compute stream", e))?;
        let copy_stream = ctx
            .new_stream()
            .map_err(|e| driver_err("creating the copy stream", e))?;
        let blas =
            if device::cublas_present() {
                Some(CudaBlas::new(stream.clone()).map_err(|e| {
                    Error::Invalid(format!("cuda: creating a cuBLAS handle: {e:?}"))
                })?)
            } else {
                log::warn!("cuda: libcublas not loadable; dense GEMMs (adapters) will fail");
                None
            };
        log::info!("cuda: {} with the {target:?} kernels", info.summary());
        Ok(CudaBackend {
            inner: Arc::new(Inner {
                weights: Arc::new(WeightStore::new(ctx.clone())),
                info,
                ctx,
                stream,
                copy_stream,
                kernels,
                blas,
                weights_mode,
                scratch: Mutex::new(None),
            }),
        })
    }

    /// The device's properties.
    pub fn info(&self) -> &DeviceInfo {
        &self.inner.info
    }

    /// The PTX build in use.
    pub fn target(&self) -> PtxTarget {
        self.inner.kernels.target
    }

    /// Makes `bytes` (the whole mapped GGUF: `GgufFile::as_bytes`) readable by the device by
    /// this backend's `--weights` mode; later [`Backend::weight`] calls on tensors inside it
    /// resolve to it without copies. Weights prepared from it must not be used after the guard
    /// drops (it waits for the device, then unregisters or frees).
    pub fn attach_weights<'a>(&self, bytes: &'a [u8]) -> Result<AttachedWeights<'a>> {
        let (map, why) = self.inner.weights_mode.resolve(&self.inner.info);
        log::info!(
            "cuda: weights {} ({why})",
            if map { "mapped" } else { "uploaded" }
        );
        let (id, mapped) = self.inner.weights.attach(bytes, map)?;
        Ok(AttachedWeights {
            store: self.inner.weights.clone(),
            id,
            mapped,
            _bytes: PhantomData,
        })
    }

    pub(crate) fn kernels(&self) -> &Kernels {
        &self.inner.kernels
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    pub(crate) fn copy_stream(&self) -> &Arc<CudaStream> {
        &self.inner.copy_stream
    }

    pub(crate) fn ctx(&self) -> &Arc<CudaContext> {
        &self.inner.ctx
    }

    pub(crate) fn blas(&self) -> Result<&CudaBlas> {
        self.inner.blas.as_ref().ok_or_else(|| {
            Error::Invalid("cuda: libcublas could not be loaded; dense GEMMs need it".into())
        })
    }

    /// Binds the context to the calling thread (the driver API's current context is per
    /// thread; rayon or the CLI may call from any thread).
    pub(crate) fn bind(&self) -> Result<()> {
        self.inner
            .ctx
            .bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))
    }

    /// Runs `f` with a device scratch of at least `bytes` (grown when too small). The scratch
    /// is stream-ordered: a later op may reuse it once its launches are queued after ours.
    pub(crate) fn with_scratch<R>(
        &self,
        bytes: usize,
        f: impl FnOnce(cudarc::driver::sys::CUdeviceptr) -> Result<R>,
    ) -> Result<R> {
        let mut guard = self
            .inner
            .scratch
            .lock()
            .map_err(|_| Error::Invalid("cuda: scratch poisoned by a panic".into()))?;
        if guard.as_ref().is_none_or(|a| a.bytes() < bytes) {
            // The old scratch may still be read by queued kernels: wait before freeing it.
            if guard.is_some() {
                self.synchronize()?;
            }
            *guard = None;
            *guard = Some(DeviceAlloc::zeroed(
                &self.inner.ctx,
                bytes.next_power_of_two(),
            )?);
        }
        let ptr = guard.as_ref().map_or(0, |a| a.ptr());
        f(ptr)
    }

    /// Copies host values to device address `dst` on the compute stream. Pageable host memory
    /// is staged by the driver before the call returns, so `src` may be reused at once.
    pub(crate) fn copy_to_device<T>(
        &self,
        src: &[T],
        dst: cudarc::driver::sys::CUdeviceptr,
    ) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller passes a device range of at least `size_of_val(src)` bytes.
        unsafe { cu::memcpy_htod_async(dst, src, self.inner.stream.cu_stream()) }
            .map_err(|e| driver_err("host → device copy", e))
    }

    /// Copies device values at `src` to the host, waiting for the queued work first.
    pub(crate) fn copy_to_host<T>(
        &self,
        src: cudarc::driver::sys::CUdeviceptr,
        dst: &mut [T],
    ) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        // SAFETY: the caller passes a device range of at least `size_of_val(dst)` bytes; the
        // stream is synchronized before `dst` is read.
        unsafe { cu::memcpy_dtoh_async(dst, src, self.inner.stream.cu_stream()) }
            .map_err(|e| driver_err("device → host copy", e))?;
        self.synchronize()
    }
}

impl Backend for CudaBackend {
    type Buffer = CudaBuffer;
    type View<'a> = CudaView<'a>;
    type ViewMut<'a> = CudaViewMut<'a>;
    type Weight<'w> = CudaWeight<'w>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc(&self, len: usize) -> Result<CudaBuffer> {
        CudaBuffer::zeroed(&self.inner.ctx, len)
    }

    fn buffer_from(&self, src: &[f32]) -> Result<CudaBuffer> {
        let mut b = self.alloc(src.len())?;
        self.upload(src, b.view_mut())?;
        Ok(b)
    }

    fn buffer_len(buf: &CudaBuffer) -> usize {
        buf.len()
    }

    fn view(buf: &CudaBuffer) -> CudaView<'_> {
        buf.view()
    }

    fn view_mut(buf: &mut CudaBuffer) -> CudaViewMut<'_> {
        buf.view_mut()
    }

    fn slice<'a>(v: Self::View<'a>, range: Range<usize>) -> Result<Self::View<'a>> {
        v.slice(range)
    }

    fn slice_mut<'a>(v: Self::ViewMut<'a>, range: Range<usize>) -> Result<Self::ViewMut<'a>> {
        v.slice(range)
    }

    fn split_mut<'a, const N: usize>(
        v: Self::ViewMut<'a>,
        ranges: [Range<usize>; N],
    ) -> Result<[Self::ViewMut<'a>; N]> {
        super::disjoint_order(&ranges, v.len())?;
        // Checked in range and pairwise disjoint: each is a unique sub-range of `v`'s borrow.
        Ok(ranges.map(|r| CudaViewMut::from_raw(v.ptr() + r.start as u64 * 4, r.end - r.start)))
    }

    fn freeze<'a>(v: Self::ViewMut<'a>) -> Self::View<'a> {
        CudaView::from_raw(v.ptr(), v.len())
    }

    fn upload(&self, src: &[f32], dst: CudaViewMut<'_>) -> Result<()> {
        check_len("upload", "destination", dst.len(), 1, src.len())?;
        self.bind()?;
        self.copy_to_device(src, dst.ptr())
    }

    fn download(&self, src: CudaView<'_>, dst: &mut [f32]) -> Result<()> {
        check_len("download", "destination", dst.len(), 1, src.len())?;
        self.bind()?;
        self.copy_to_host(src.ptr(), dst)
    }

    fn synchronize(&self) -> Result<()> {
        self.inner
            .stream
            .synchronize()
            .map_err(|e| driver_err("synchronizing the compute stream", e))
    }

    fn weight<'w>(&self, m: QuantMatrix<'w>) -> Result<CudaWeight<'w>> {
        self.bind()?;
        self.inner.weights.weight(m)
    }

    fn embedding(
        &self,
        table: &CudaWeight<'_>,
        tokens: &[u32],
        out: CudaViewMut<'_>,
    ) -> Result<()> {
        embedding::embedding(self, table, tokens, out)
    }

    fn rmsnorm(
        &self,
        x: CudaView<'_>,
        w: CudaView<'_>,
        eps: f32,
        y: CudaViewMut<'_>,
        rstd: Option<CudaViewMut<'_>>,
    ) -> Result<()> {
        rmsnorm::rmsnorm(self, x, w, eps, y, rstd)
    }

    fn matmul_xwt(
        &self,
        x: CudaView<'_>,
        n: usize,
        w: &CudaWeight<'_>,
        y: CudaViewMut<'_>,
    ) -> Result<()> {
        matmul::matmul_xwt(self, x, n, w, y)
    }

    fn rope(&self, x: CudaViewMut<'_>, inv_freq: CudaView<'_>, dims: RopeDims) -> Result<()> {
        rope::rope(self, x, inv_freq, dims, 1.0)
    }

    fn attention(
        &self,
        q: CudaView<'_>,
        k: CudaView<'_>,
        v: CudaView<'_>,
        out: CudaViewMut<'_>,
        lse: Option<CudaViewMut<'_>>,
        dims: AttentionDims,
    ) -> Result<()> {
        attention::attention(self, q, k, v, out, lse, dims)
    }

    fn swiglu(&self, gate: CudaView<'_>, up: CudaView<'_>, out: CudaViewMut<'_>) -> Result<()> {
        swiglu::swiglu(self, gate, up, out)
    }

    fn add_assign(&self, x: CudaViewMut<'_>, y: CudaView<'_>) -> Result<()> {
        elementwise::add_assign(self, x, y)
    }

    fn gemm(
        &self,
        dims: GemmDims,
        alpha: f32,
        a: CudaView<'_>,
        b: CudaView<'_>,
        beta: f32,
        c: CudaViewMut<'_>,
    ) -> Result<()> {
        gemm::gemm(self, dims, alpha, a, b, beta, c)
    }

    fn matmul_dyw(
        &self,
        dy: CudaView<'_>,
        n: usize,
        w: &CudaWeight<'_>,
        dx: CudaViewMut<'_>,
    ) -> Result<()> {
        matmul::matmul_dyw(self, dy, n, w, dx)
    }

    fn rmsnorm_backward(
        &self,
        x: CudaView<'_>,
        w: CudaView<'_>,
        rstd: CudaView<'_>,
        dy: CudaView<'_>,
        dx: CudaViewMut<'_>,
    ) -> Result<()> {
        rmsnorm::rmsnorm_backward(self, x, w, rstd, dy, dx)
    }

    fn rope_backward(
        &self,
        dy: CudaViewMut<'_>,
        inv_freq: CudaView<'_>,
        dims: RopeDims,
    ) -> Result<()> {
        rope::rope(self, dy, inv_freq, dims, -1.0)
    }

    fn swiglu_backward(
        &self,
        gate: CudaView<'_>,
        up: CudaView<'_>,
        dh: CudaView<'_>,
        dgate: CudaViewMut<'_>,
        dup: CudaViewMut<'_>,
    ) -> Result<()> {
        swiglu::swiglu_backward(self, gate, up, dh, dgate, dup)
    }

    fn attention_backward(
        &self,
        q: CudaView<'_>,
        k: CudaView<'_>,
        v: CudaView<'_>,
        out: CudaView<'_>,
        lse: CudaView<'_>,
        dout: CudaView<'_>,
        dq: CudaViewMut<'_>,
        dk: CudaViewMut<'_>,
        dv: CudaViewMut<'_>,
        dims: AttentionDims,
    ) -> Result<()> {
        attention::attention_backward(self, q, k, v, out, lse, dout, dq, dk, dv, dims)
    }

    fn cross_entropy(
        &self,
        h: CudaView<'_>,
        w: &CudaWeight<'_>,
        targets: &[i32],
        scale: f32,
        chunk: usize,
        logits: CudaViewMut<'_>,
        dh: CudaViewMut<'_>,
    ) -> Result<f64> {
        cross_entropy::cross_entropy(self, h, w, targets, scale, chunk, logits, dh)
    }
}
