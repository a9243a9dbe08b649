//! Paged optimizer state on the device (docs/METHODS.md#paged-optimizer-state): AdamW's `m`/`v`
//! stay in host memory (outside the arena) and are staged to the device per tensor for its update,
//! through pinned host buffers with async copies on the backend's second (copy) stream, overlapped
//! with the compute stream's updates.
//!
//! The order of work is a fixed schedule over `slots` staging buffers (a device page and a
//! pinned host page each, `2 · max_numel` f32: `m` then `v`), [`schedule`]:
//!
//! ```text
//! Upload(0) … Upload(S−1) | Update(0) Download(0) Upload(S) | Update(1) Download(1) Upload(S+1) | …
//! ```
//!
//! so while tensor `i` is updated on the compute stream, tensor `i+1`'s state is already in
//! flight on the copy stream. A slot is reused only after its previous tensor's download was
//! issued (and, on the host, completed: the pinned page is written back to that tensor's state
//! before it is refilled). [`run`] drives any [`PageExecutor`] through the schedule; the
//! device executor ([`PagedAdamW`]) adds the stream/event ordering:
//! upload → event → compute waits → AdamW kernel → event → copy waits → download → event →
//! host waits before touching the pinned page again.
//!
//! The schedule and the data plumbing are tested on the CPU (an executor over plain vectors
//! running the CPU AdamW must match direct updates); the device executor needs a GPU.

use std::sync::Arc;

use cudarc::driver::result as cu;
use cudarc::driver::{CudaContext, CudaEvent};

use super::buffer::DeviceAlloc;
use super::device::driver_err;
use super::{CudaBackend, CudaView, CudaViewMut};
use crate::backend::check_len;
use crate::optim::adamw::AdamWStep;
use crate::{Error, Result};

/// One step of the staging schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageOp {
    /// Host state of `tensor` → pinned page → device page `slot` (copy stream).
    Upload { tensor: usize, slot: usize },
    /// AdamW on `tensor` with the state in device page `slot` (compute stream).
    Update { tensor: usize, slot: usize },
    /// Device page `slot` → pinned page (copy stream); written back to `tensor`'s host state
    /// before the slot is refilled or at the end.
    Download { tensor: usize, slot: usize },
}

/// The staging schedule for `n` tensors over `slots ≥ 1` pages (see the module docs).
pub fn schedule(n: usize, slots: usize) -> Vec<PageOp> {
    let slots = slots.max(1);
    let mut ops = Vec::with_capacity(3 * n);
    for t in 0..n.min(slots) {
        ops.push(PageOp::Upload {
            tensor: t,
            slot: t % slots,
        });
    }
    for t in 0..n {
        let slot = t % slots;
        ops.push(PageOp::Update { tensor: t, slot });
        ops.push(PageOp::Download { tensor: t, slot });
        if t + slots < n {
            ops.push(PageOp::Upload {
                tensor: t + slots,
                slot,
            });
        }
    }
    ops
}

/// What the schedule's steps do (the device, or a host simulation in tests).
pub trait PageExecutor {
    fn upload(&mut self, tensor: usize, slot: usize) -> Result<()>;
    fn update(&mut self, tensor: usize, slot: usize) -> Result<()>;
    fn download(&mut self, tensor: usize, slot: usize) -> Result<()>;
    /// After the last step: wait for the copies and write back every slot still pending.
    fn finish(&mut self) -> Result<()>;
}

/// Runs the schedule for `n` tensors over `slots` pages on `exec`.
pub fn run(exec: &mut impl PageExecutor, n: usize, slots: usize) -> Result<()> {
    for op in schedule(n, slots) {
        match op {
            PageOp::Upload { tensor, slot } => exec.upload(tensor, slot)?,
            PageOp::Update { tensor, slot } => exec.update(tensor, slot)?,
            PageOp::Download { tensor, slot } => exec.download(tensor, slot)?,
        }
    }
    exec.finish()
}

/// Page-locked host memory (`cuMemAllocHost`), freed on drop.
struct Pinned {
    ptr: *mut f32,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: plain host memory owned by this value; the driver's async copies into it are
// ordered by the events of `PagedAdamW`, which owns both.
unsafe impl Send for Pinned {}

impl Pinned {
    fn new(ctx: &Arc<CudaContext>, len: usize) -> Result<Pinned> {
        ctx.bind_to_thread()
            .map_err(|e| driver_err("binding the context", e))?;
        // SAFETY: plain allocation of len f32, freed in Drop.
        let ptr = unsafe { cu::malloc_host(len.max(1) * 4, 0) }
            .map_err(|e| driver_err(&format!("pinning {} bytes", len * 4), e))?;
        Ok(Pinned {
            ptr: ptr as *mut f32,
            len,
            ctx: ctx.clone(),
        })
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        // SAFETY: `len` f32 allocated by `new`, exclusively borrowed through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.ctx.record_err(self.ctx.bind_to_thread());
        // SAFETY: allocated by `new`, freed once.
        self.ctx
            .record_err(unsafe { cu::free_host(self.ptr as *mut std::ffi::c_void) });
    }
}

/// One staging slot: a device page, a pinned page, and the events ordering their use.
struct Slot {
    dev: DeviceAlloc,
    host: Pinned,
    uploaded: CudaEvent,
    updated: CudaEvent,
    downloaded: CudaEvent,
    /// The tensor whose state the pinned page holds after a download, not yet written back.
    pending: Option<usize>,
}

/// AdamW with host-resident f32 state, staged per tensor (module docs).
pub struct PagedAdamW {
    slots: Vec<Slot>,
    capacity: usize,
}

impl PagedAdamW {
    /// Staging for tensors of up to `max_numel` elements over `slots` pages (2 overlaps one
    /// upload with one update; more helps only when tensors are small and many).
    pub fn new(be: &CudaBackend, max_numel: usize, slots: usize) -> Result<PagedAdamW> {
        let ctx = be.ctx();
        let ev = || {
            ctx.new_event(None)
                .map_err(|e| driver_err("creating an event", e))
        };
        let slots = (0..slots.max(1))
            .map(|_| {
                Ok(Slot {
                    dev: DeviceAlloc::zeroed(ctx, 2 * max_numel * 4)?,
                    host: Pinned::new(ctx, 2 * max_numel)?,
                    uploaded: ev()?,
                    updated: ev()?,
                    downloaded: ev()?,
                    pending: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PagedAdamW {
            slots,
            capacity: max_numel,
        })
    }

    /// One AdamW step over every tensor: `params[i]` and `grads[i]` on the device (views of
    /// the arena), `states[i] = (m, v)` in host memory, `steps[i]` its scalars.
    pub fn step(
        &mut self,
        be: &CudaBackend,
        params: &mut [CudaViewMut<'_>],
        grads: &[CudaView<'_>],
        states: &mut [(&mut [f32], &mut [f32])],
        steps: &[AdamWStep],
    ) -> Result<()> {
        let n = params.len();
        check_len("paged adamw", "grads", grads.len(), n, 1)?;
        check_len("paged adamw", "states", states.len(), n, 1)?;
        check_len("paged adamw", "steps", steps.len(), n, 1)?;
        for (i, (p, (m, v))) in params.iter().zip(states.iter()).enumerate() {
            let len = p.len();
            if len > self.capacity {
                return Err(Error::Invalid(format!(
                    "paged adamw: tensor {i} has {len} elements, the pages hold {}",
                    self.capacity
                )));
            }
            check_len("paged adamw", "grad", grads[i].len(), len, 1)?;
            check_len("paged adamw", "m", m.len(), len, 1)?;
            check_len("paged adamw", "v", v.len(), len, 1)?;
        }
        be.bind()?;
        let slots = self.slots.len();
        let mut exec = DeviceExec {
            be,
            pages: self,
            params,
            grads,
            states,
            steps,
        };
        run(&mut exec, n, slots)
    }
}

struct DeviceExec<'a, 'p, 'g, 'm, 'v> {
    be: &'a CudaBackend,
    pages: &'a mut PagedAdamW,
    params: &'a mut [CudaViewMut<'p>],
    grads: &'a [CudaView<'g>],
    states: &'a mut [(&'m mut [f32], &'v mut [f32])],
    steps: &'a [AdamWStep],
}

impl DeviceExec<'_, '_, '_, '_, '_> {
    /// Waits for slot `s`'s last download and copies its pinned page back to its tensor.
    fn write_back(&mut self, s: usize) -> Result<()> {
        let slot = &mut self.pages.slots[s];
        if let Some(t) = slot.pending.take() {
            slot.downloaded
                .synchronize()
                .map_err(|e| driver_err("waiting for a state download", e))?;
            let (m, v) = &mut self.states[t];
            let n = m.len();
            let page = slot.host.as_mut_slice();
            m.copy_from_slice(&page[..n]);
            v.copy_from_slice(&page[n..2 * n]);
        }
        Ok(())
    }
}

impl PageExecutor for DeviceExec<'_, '_, '_, '_, '_> {
    fn upload(&mut self, t: usize, s: usize) -> Result<()> {
        self.write_back(s)?;
        let copy = self.be.copy_stream().clone();
        let slot = &mut self.pages.slots[s];
        let (m, v) = &self.states[t];
        let n = m.len();
        let page = slot.host.as_mut_slice();
        page[..n].copy_from_slice(m);
        page[n..2 * n].copy_from_slice(v);
        // The device page may still be read by the previous update of this slot: the copy
        // stream waits for it.
        copy.wait(&slot.updated)
            .map_err(|e| driver_err("ordering a state upload", e))?;
        // SAFETY: the device page holds 2·capacity ≥ 2n f32; the pinned page stays untouched
        // by the host until `downloaded` (recorded after this copy's successor) completes.
        unsafe { cu::memcpy_htod_async(slot.dev.ptr(), &page[..2 * n], copy.cu_stream()) }
            .map_err(|e| driver_err("state upload", e))?;
        slot.uploaded
            .record(&copy)
            .map_err(|e| driver_err("recording an upload", e))
    }

    fn update(&mut self, t: usize, s: usize) -> Result<()> {
        let slot = &self.pages.slots[s];
        let compute = self.be.stream();
        compute
            .wait(&slot.uploaded)
            .map_err(|e| driver_err("ordering an update", e))?;
        let n = self.params[t].len();
        let base = slot.dev.ptr();
        let p = CudaViewMut::from_raw(self.params[t].ptr(), n);
        let m = CudaViewMut::from_raw(base, n);
        let v = CudaViewMut::from_raw(base + 4 * n as u64, n);
        self.be.adamw_f32(p, self.grads[t], m, v, &self.steps[t])?;
        slot.updated
            .record(compute)
            .map_err(|e| driver_err("recording an update", e))
    }

    fn download(&mut self, t: usize, s: usize) -> Result<()> {
        let copy = self.be.copy_stream().clone();
        let slot = &mut self.pages.slots[s];
        copy.wait(&slot.updated)
            .map_err(|e| driver_err("ordering a state download", e))?;
        let n = self.states[t].0.len();
        let page = slot.host.as_mut_slice();
        // SAFETY: both pages hold ≥ 2n f32; the host reads the pinned page only after
        // `downloaded` completes (write_back).
        unsafe { cu::memcpy_dtoh_async(&mut page[..2 * n], slot.dev.ptr(), copy.cu_stream()) }
            .map_err(|e| driver_err("state download", e))?;
        slot.downloaded
            .record(&copy)
            .map_err(|e| driver_err("recording a download", e))?;
        slot.pending = Some(t);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for s in 0..self.pages.slots.len() {
            self.write_back(s)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::adamw::{AdamWConfig, adamw_update_f32};

    #[test]
    fn schedule_uploads_before_updates_and_frees_slots_before_reuse() {
        for (n, slots) in [(0, 2), (1, 2), (2, 2), (7, 2), (7, 3), (5, 1), (3, 8)] {
            let ops = schedule(n, slots);
            assert_eq!(ops.len(), 3 * n, "n={n} slots={slots}");
            // occupant[slot] = tensor uploaded and not yet downloaded.
            let mut occupant = vec![None; slots];
            let mut state = vec![0u8; n]; // 0 new, 1 uploaded, 2 updated, 3 downloaded
            for op in &ops {
                match *op {
                    PageOp::Upload { tensor, slot } => {
                        assert_eq!(state[tensor], 0);
                        assert!(occupant[slot].is_none(), "{op:?} reuses a busy slot");
                        occupant[slot] = Some(tensor);
                        state[tensor] = 1;
                    }
                    PageOp::Update { tensor, slot } => {
                        assert_eq!((state[tensor], occupant[slot]), (1, Some(tensor)));
                        state[tensor] = 2;
                    }
                    PageOp::Download { tensor, slot } => {
                        assert_eq!((state[tensor], occupant[slot]), (2, Some(tensor)));
                        occupant[slot] = None;
                        state[tensor] = 3;
                    }
                }
            }
            assert!(state.iter().all(|&s| s == 3));
        }
        // Overlap: with 2 slots, tensor 1 is uploaded before tensor 0 is updated.
        let ops = schedule(3, 2);
        assert_eq!(ops[1], PageOp::Upload { tensor: 1, slot: 1 });
        assert_eq!(ops[2], PageOp::Update { tensor: 0, slot: 0 });
    }

    /// The schedule executed on host vectors standing in for the device and pinned pages.
    struct HostExec<'a> {
        params: &'a mut [Vec<f32>],
        grads: &'a [Vec<f32>],
        states: &'a mut [(Vec<f32>, Vec<f32>)],
        k: AdamWStep,
        dev: Vec<Vec<f32>>,
        pinned: Vec<Vec<f32>>,
        pending: Vec<Option<usize>>,
    }

    impl HostExec<'_> {
        fn write_back(&mut self, s: usize) {
            if let Some(t) = self.pending[s].take() {
                let n = self.states[t].0.len();
                self.states[t].0.copy_from_slice(&self.pinned[s][..n]);
                self.states[t].1.copy_from_slice(&self.pinned[s][n..2 * n]);
            }
        }
    }

    impl PageExecutor for HostExec<'_> {
        fn upload(&mut self, t: usize, s: usize) -> Result<()> {
            self.write_back(s);
            let n = self.states[t].0.len();
            self.pinned[s][..n].copy_from_slice(&self.states[t].0);
            self.pinned[s][n..2 * n].copy_from_slice(&self.states[t].1);
            self.dev[s][..2 * n].copy_from_slice(&self.pinned[s][..2 * n]);
            // Scribble over the pinned page: the update must not depend on it.
            self.pinned[s].fill(f32::NAN);
            Ok(())
        }
        fn update(&mut self, t: usize, s: usize) -> Result<()> {
            let n = self.params[t].len();
            let (m, v) = self.dev[s][..2 * n].split_at_mut(n);
            adamw_update_f32(&mut self.params[t], &self.grads[t], m, v, &self.k);
            Ok(())
        }
        fn download(&mut self, t: usize, s: usize) -> Result<()> {
            let n = self.params[t].len();
            let (dev, pinned) = (&self.dev[s], &mut self.pinned[s]);
            pinned[..2 * n].copy_from_slice(&dev[..2 * n]);
            self.pending[s] = Some(t);
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            for s in 0..self.pending.len() {
                self.write_back(s);
            }
            Ok(())
        }
    }

    #[test]
    fn staged_updates_equal_direct_updates() {
        let sizes = [5usize, 17, 3, 64, 1, 9];
        let k = AdamWStep::new(&AdamWConfig::default(), 1e-2, 0.01, 3);
        let vals = |n: usize, s: f32| {
            (0..n)
                .map(|i| ((i as f32 + s) * 0.7).sin())
                .collect::<Vec<_>>()
        };
        let params0: Vec<Vec<f32>> = sizes.iter().map(|&n| vals(n, 1.0)).collect();
        let grads: Vec<Vec<f32>> = sizes.iter().map(|&n| vals(n, 2.0)).collect();
        let states0: Vec<(Vec<f32>, Vec<f32>)> = sizes
            .iter()
            .map(|&n| (vals(n, 3.0), vals(n, 4.0).iter().map(|x| x * x).collect()))
            .collect();
        // Direct.
        let (mut p_want, mut s_want) = (params0.clone(), states0.clone());
        for i in 0..sizes.len() {
            let (m, v) = &mut s_want[i];
            adamw_update_f32(&mut p_want[i], &grads[i], m, v, &k);
        }
        for slots in [1, 2, 3] {
            let (mut p, mut st) = (params0.clone(), states0.clone());
            let cap = 2 * sizes.iter().max().unwrap();
            let mut exec = HostExec {
                params: &mut p,
                grads: &grads,
                states: &mut st,
                k,
                dev: vec![vec![0.0; cap]; slots],
                pinned: vec![vec![0.0; cap]; slots],
                pending: vec![None; slots],
            };
            run(&mut exec, sizes.len(), slots).unwrap();
            assert_eq!(p, p_want, "params, {slots} slots");
            assert_eq!(st, s_want, "states, {slots} slots");
        }
    }
}
