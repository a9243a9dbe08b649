//! The arena: ONE page-aligned anonymous map of a [`Plan`]'s `arena_bytes`, handing out f32
//! views of its buffers. Nothing is allocated after [`Arena::new`].
//!
//! Buffers whose lifetimes do not intersect may share addresses, so the borrow checker alone
//! cannot tell which views may coexist: [`Arena::views_mut`] checks the requested address
//! ranges are pairwise disjoint (the safety condition), and [`Arena::views_mut_at`] also checks
//! that every requested buffer is live at the given schedule step (which catches schedule bugs
//! before they become silent clobbering).

use std::ops::Range;

use memmap2::MmapMut;

use super::plan::{ALIGN, BufferId, Plan};
use crate::{Error, Result};

/// The storage of one training step's buffers, laid out by a [`Plan`].
pub struct Arena {
    /// An anonymous private map: page-aligned (so every [`ALIGN`]-aligned offset is aligned in
    /// memory) and zero-filled by the kernel on first touch, so nothing is resident until a step
    /// writes it. `None` when the plan is empty or the arena was released.
    storage: Option<MmapMut>,
    /// Per buffer id: its range in f32 elements and its lifetime.
    ranges: Vec<(Range<usize>, u32, u32)>,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("bytes", &self.bytes())
            .field("buffers", &self.ranges.len())
            .finish()
    }
}

impl Arena {
    /// Maps the arena of `plan`: zeroed, and not resident until written. Errors: a buffer that
    /// is not a whole number of f32, an arena beyond the address space, or a map the system
    /// refuses.
    pub fn new(plan: &Plan) -> Result<Arena> {
        let bytes = usize::try_from(plan.arena_bytes()).map_err(|_| {
            Error::Invalid(format!(
                "arena: {} bytes exceed this machine's address space",
                plan.arena_bytes()
            ))
        })?;
        debug_assert_eq!(bytes as u64 % ALIGN, 0);
        let mut ranges = Vec::with_capacity(plan.buffers().len());
        for (i, p) in plan.buffers().iter().enumerate() {
            let r = plan.f32_range(BufferId(i))?;
            ranges.push((r, p.request.first_use, p.request.last_use));
        }
        // Not the heap: Rust's allocator zeroes over-aligned (64-byte) allocations by writing
        // them, which would make the whole arena resident at once. A trainer whose micro-batches
        // move to a device engine frees this arena untouched, so the CPU arena and the device
        // workspace never hold memory at the same time.
        let storage = if bytes == 0 {
            None
        } else {
            Some(MmapMut::map_anon(bytes).map_err(|e| {
                Error::Invalid(format!(
                    "arena: cannot map {bytes} bytes ({:.1} MiB): {e}",
                    bytes as f64 / (1u64 << 20) as f64
                ))
            })?)
        };
        Ok(Arena { storage, ranges })
    }

    /// Frees the storage (the buffers' ranges stay, so every later view is an error naming the
    /// buffer, not a panic): for a step whose work moved to a device engine.
    pub fn release(&mut self) {
        self.storage = None;
    }

    /// Size of the allocation in bytes.
    pub fn bytes(&self) -> usize {
        self.storage.as_ref().map_or(0, |m| m.len())
    }

    /// The whole arena as f32 (e.g. to zero it).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        match &mut self.storage {
            Some(m) => bytemuck::cast_slice_mut(&mut m[..]),
            None => &mut [],
        }
    }

    fn as_slice(&self) -> &[f32] {
        match &self.storage {
            Some(m) => bytemuck::cast_slice(&m[..]),
            None => &[],
        }
    }

    fn range(&self, id: BufferId) -> Result<&(Range<usize>, u32, u32)> {
        self.ranges.get(id.0).ok_or_else(|| {
            Error::Invalid(format!(
                "arena: no buffer with id {} (the plan has {})",
                id.0,
                self.ranges.len()
            ))
        })
    }

    /// Read-only view of one buffer.
    pub fn view(&self, id: BufferId) -> Result<&[f32]> {
        let r = self.range(id)?.0.clone();
        let all: &[f32] = self.as_slice();
        // Plan::verify checked every buffer lies inside the arena.
        all.get(r)
            .ok_or_else(|| Error::Invalid(format!("arena: buffer {} is outside the arena", id.0)))
    }

    /// Writable view of one buffer.
    pub fn view_mut(&mut self, id: BufferId) -> Result<&mut [f32]> {
        let [v] = self.views_mut([id])?;
        Ok(v)
    }

    /// Writable views of `N` buffers at once, in the order asked. An error when two of them
    /// (non-empty) overlap in address — which buffers with disjoint lifetimes may — or an id is
    /// unknown.
    pub fn views_mut<const N: usize>(&mut self, ids: [BufferId; N]) -> Result<[&mut [f32]; N]> {
        let mut ranges: [Range<usize>; N] = std::array::from_fn(|_| 0..0);
        for (slot, &id) in ranges.iter_mut().zip(&ids) {
            *slot = self.range(id)?.0.clone();
        }
        // Sort request indices by start (in place, no allocation), then check neighbours.
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        order.sort_unstable_by_key(|&i| (ranges[i].start, ranges[i].end));
        let mut prev: Option<usize> = None;
        for &i in &order {
            if ranges[i].is_empty() {
                continue;
            }
            if let Some(p) = prev
                && ranges[p].end > ranges[i].start
            {
                return Err(Error::Invalid(format!(
                    "arena: buffers {} (f32 {:?}) and {} (f32 {:?}) overlap: they are not \
                     live at the same time and cannot be borrowed together",
                    ids[p].0, ranges[p], ids[i].0, ranges[i]
                )));
            }
            prev = Some(i);
        }

        let mut out: [Option<&mut [f32]>; N] = std::array::from_fn(|_| None);
        let mut rest: &mut [f32] = self.as_mut_slice();
        let mut consumed = 0usize;
        for &i in &order {
            let r = &ranges[i];
            if r.is_empty() {
                continue;
            }
            let tail = std::mem::take(&mut rest);
            if r.end - consumed > tail.len() {
                return Err(Error::Invalid(format!(
                    "arena: buffer {} (f32 {r:?}) is outside the arena",
                    ids[i].0
                )));
            }
            let (_, from_start) = tail.split_at_mut(r.start - consumed);
            let (view, after) = from_start.split_at_mut(r.len());
            out[i] = Some(view);
            rest = after;
            consumed = r.end;
        }
        // Empty buffers get empty views.
        Ok(out.map(Option::unwrap_or_default))
    }

    /// [`Arena::views_mut`], also checking that every buffer is live at schedule step `step`.
    pub fn views_mut_at<const N: usize>(
        &mut self,
        step: u32,
        ids: [BufferId; N],
    ) -> Result<[&mut [f32]; N]> {
        for &id in &ids {
            let &(_, first, last) = self.range(id)?;
            if !(first <= step && step <= last) {
                return Err(Error::Invalid(format!(
                    "arena: buffer {} lives in steps {first}..={last}, not at step {step}",
                    id.0
                )));
            }
        }
        self.views_mut(ids)
    }
}
