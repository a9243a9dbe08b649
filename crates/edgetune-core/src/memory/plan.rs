//! The static memory plan: every buffer of a training step with its size and lifetime, packed
//! into offsets of ONE arena (offline dynamic storage allocation, best-fit;
//! docs/ARCHITECTURE.md#one-static-arena).
//!
//! A buffer's lifetime is a closed interval `[first_use, last_use]` of schedule steps. Two
//! buffers may share addresses only when their lifetimes do not intersect. [`PlanBuilder::pack`]
//! places the buffers largest first (ties: earlier `first_use`, then insertion order), each at
//! the smallest gap between the already-placed buffers it conflicts with that fits it (lowest
//! such gap on ties), else on top of them. Every offset is a multiple of [`ALIGN`] bytes.
//!
//! The [`Plan`] reports the arena size against two references: the sum of all sizes (no reuse)
//! and the peak of simultaneously live bytes (a lower bound for any packing).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

use crate::{Error, Result};

/// Alignment of every buffer offset (and of the arena size), in bytes: a cache line, and enough
/// for any SIMD load or GPU vector access.
pub const ALIGN: u64 = 64;

/// What a buffer is for (the report's breakdown).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Forward activations kept until their backward (no checkpointing), or the forward's own
    /// working buffers.
    Activation,
    /// A checkpointed layer input, kept from its forward until its layer's backward.
    Checkpoint,
    /// A layer's activations recomputed from its checkpoint during the backward.
    Recompute,
    /// Scratch of a tiled attention kernel.
    AttentionTile,
    /// The `[chunk, vocab]` logits of the chunked cross-entropy and its `dh`.
    CrossEntropy,
    /// The gradient of the residual stream flowing down the layers.
    ResidualGrad,
    /// Adapter saved activations (LoRA's `H = x · Aᵀ`).
    AdapterActivation,
    /// Adapter parameter gradients, kept until the optimizer step.
    AdapterGrad,
    /// Optimizer state pages brought in for one tensor's update.
    OptimizerStaging,
    /// Short-lived scratch (input gradients before they are accumulated, matmul outputs).
    Temporary,
}

impl Category {
    /// Every category, in report order.
    pub const ALL: [Category; 10] = [
        Category::Activation,
        Category::Checkpoint,
        Category::Recompute,
        Category::AttentionTile,
        Category::CrossEntropy,
        Category::ResidualGrad,
        Category::AdapterActivation,
        Category::AdapterGrad,
        Category::OptimizerStaging,
        Category::Temporary,
    ];
}

/// One buffer to place: `bytes` bytes live during schedule steps `first_use..=last_use`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BufferRequest {
    pub name: String,
    pub category: Category,
    pub bytes: u64,
    pub first_use: u32,
    pub last_use: u32,
}

impl BufferRequest {
    /// Whether the lifetimes of `self` and `other` share a step (closed intervals).
    pub fn lifetime_intersects(&self, other: &BufferRequest) -> bool {
        self.first_use <= other.last_use && other.first_use <= self.last_use
    }

    /// Whether the buffer is live at `step`.
    pub fn live_at(&self, step: u32) -> bool {
        self.first_use <= step && step <= self.last_use
    }
}

/// Handle of a buffer in a [`PlanBuilder`] and in the [`Plan`] packed from it (its index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub usize);

/// Collects buffer requests; [`PlanBuilder::pack`] turns them into a [`Plan`].
#[derive(Clone, Debug, Default)]
pub struct PlanBuilder {
    requests: Vec<BufferRequest>,
}

impl PlanBuilder {
    pub fn new() -> PlanBuilder {
        PlanBuilder::default()
    }

    /// Adds a request; it is checked (lifetime order, size) by [`PlanBuilder::pack`].
    pub fn add(&mut self, request: BufferRequest) -> BufferId {
        self.requests.push(request);
        BufferId(self.requests.len() - 1)
    }

    /// Shorthand for [`PlanBuilder::add`].
    pub fn add_buffer(
        &mut self,
        name: impl Into<String>,
        category: Category,
        bytes: u64,
        first_use: u32,
        last_use: u32,
    ) -> BufferId {
        self.add(BufferRequest {
            name: name.into(),
            category,
            bytes,
            first_use,
            last_use,
        })
    }

    pub fn requests(&self) -> &[BufferRequest] {
        &self.requests
    }

    pub fn len(&self) -> usize {
        self.requests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }

    /// Max over steps of Σ live sizes, without packing: a lower bound of the arena (what
    /// budget searches use to skip hopeless configurations).
    pub fn peak_live_bytes(&self) -> u64 {
        peak_live(self.requests.iter())
    }

    /// Packs the requests into one arena (see the module docs for the placement rule), then
    /// checks the result with [`Plan::verify`]. Errors: a lifetime that ends before it starts,
    /// sizes whose aligned sum or whose offsets overflow `u64` (with the numbers).
    pub fn pack(self) -> Result<Plan> {
        let requests = self.requests;
        let mut sum_bytes = 0u64;
        let mut aligned = Vec::with_capacity(requests.len());
        for r in &requests {
            if r.first_use > r.last_use {
                return Err(Error::Invalid(format!(
                    "plan: buffer `{}`: lifetime {}..={} ends before it starts",
                    r.name, r.first_use, r.last_use
                )));
            }
            let a = align_up(r.bytes).ok_or_else(|| {
                Error::Invalid(format!(
                    "plan: buffer `{}`: {} bytes overflow when aligned to {ALIGN}",
                    r.name, r.bytes
                ))
            })?;
            sum_bytes = sum_bytes.checked_add(r.bytes).ok_or_else(|| {
                Error::Invalid(format!(
                    "plan: the sum of buffer sizes overflows u64 at `{}` ({} bytes after {sum_bytes})",
                    r.name, r.bytes
                ))
            })?;
            aligned.push(a);
        }

        let mut order: Vec<usize> = (0..requests.len()).collect();
        order.sort_by(|&a, &b| {
            aligned[b]
                .cmp(&aligned[a])
                .then(requests[a].first_use.cmp(&requests[b].first_use))
                .then(a.cmp(&b))
        });

        let mut offsets: Vec<Option<u64>> = vec![None; requests.len()];
        let mut placed: Vec<usize> = Vec::with_capacity(requests.len());
        let mut conflicts: Vec<(u64, u64)> = Vec::new();
        let mut arena_bytes = 0u64;
        for &i in &order {
            let size = aligned[i];
            if size == 0 {
                offsets[i] = Some(0);
                continue;
            }
            conflicts.clear();
            for &j in &placed {
                if requests[i].lifetime_intersects(&requests[j]) {
                    // Placed offsets + aligned sizes were checked not to overflow.
                    let o = offsets[j].unwrap_or(0);
                    conflicts.push((o, o + aligned[j]));
                }
            }
            conflicts.sort_unstable();
            let offset = best_fit(&conflicts, size);
            let end = offset.checked_add(size).ok_or_else(|| {
                Error::Invalid(format!(
                    "plan: buffer `{}` ({} bytes) at offset {offset} overflows u64",
                    requests[i].name, requests[i].bytes
                ))
            })?;
            arena_bytes = arena_bytes.max(end);
            offsets[i] = Some(offset);
            placed.push(i);
        }

        let buffers = requests
            .into_iter()
            .zip(offsets)
            .map(|(request, offset)| Placement {
                request,
                offset: offset.unwrap_or(0),
            })
            .collect::<Vec<_>>();
        let peak_live_bytes = peak_live(buffers.iter().map(|p| &p.request));
        let by_name = buffers
            .iter()
            .enumerate()
            .map(|(i, p)| (p.request.name.clone(), BufferId(i)))
            .collect();
        let plan = Plan {
            buffers,
            by_name,
            arena_bytes,
            sum_bytes,
            peak_live_bytes,
        };
        plan.verify()?;
        Ok(plan)
    }
}

/// `bytes` rounded up to [`ALIGN`], `None` on overflow.
fn align_up(bytes: u64) -> Option<u64> {
    Some(bytes.checked_add(ALIGN - 1)? / ALIGN * ALIGN)
}

/// The offset for a block of `size` bytes among `conflicts` (occupied `[start, end)` ranges,
/// sorted by start, all aligned): the smallest free gap that fits (lowest on ties), else the
/// top of the highest conflict.
fn best_fit(conflicts: &[(u64, u64)], size: u64) -> u64 {
    let mut cursor = 0u64;
    let mut best: Option<(u64, u64)> = None; // (gap size, offset)
    for &(start, end) in conflicts {
        if start > cursor {
            let gap = start - cursor;
            if gap >= size && best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, cursor));
            }
        }
        cursor = cursor.max(end);
    }
    best.map_or(cursor, |(_, offset)| offset)
}

/// Max over steps of the summed sizes of the buffers live at that step.
fn peak_live<'a>(requests: impl Iterator<Item = &'a BufferRequest>) -> u64 {
    // (step, +bytes) at first_use and (last_use + 1, −bytes); removals sort first at a step.
    let mut events: Vec<(u64, bool, u64)> = Vec::new();
    for r in requests {
        events.push((u64::from(r.first_use), true, r.bytes));
        events.push((u64::from(r.last_use) + 1, false, r.bytes));
    }
    events.sort_unstable();
    let (mut live, mut peak) = (0u64, 0u64);
    for (_, is_start, bytes) in events {
        // Saturating: a builder's requests are not checked yet (sizes may sum past u64, a
        // lifetime may end before it starts).
        if is_start {
            live = live.saturating_add(bytes);
            peak = peak.max(live);
        } else {
            live = live.saturating_sub(bytes);
        }
    }
    peak
}

/// One packed buffer: its request and its byte offset in the arena.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub request: BufferRequest,
    pub offset: u64,
}

impl Placement {
    /// `offset..offset + bytes`.
    pub fn byte_range(&self) -> Range<u64> {
        self.offset..self.offset + self.request.bytes
    }
}

/// Buffers placed in one arena, with the numbers that judge the packing.
#[derive(Clone, Debug)]
pub struct Plan {
    buffers: Vec<Placement>,
    by_name: HashMap<String, BufferId>,
    arena_bytes: u64,
    sum_bytes: u64,
    peak_live_bytes: u64,
}

impl Plan {
    /// Size of the one allocation (a multiple of [`ALIGN`]).
    pub fn arena_bytes(&self) -> u64 {
        self.arena_bytes
    }

    /// Σ sizes: what one allocation per buffer would take.
    pub fn sum_bytes(&self) -> u64 {
        self.sum_bytes
    }

    /// Max over steps of Σ live sizes: no packing can use less.
    pub fn peak_live_bytes(&self) -> u64 {
        self.peak_live_bytes
    }

    /// Every buffer, indexed by [`BufferId`].
    pub fn buffers(&self) -> &[Placement] {
        &self.buffers
    }

    pub fn get(&self, id: BufferId) -> Option<&Placement> {
        self.buffers.get(id.0)
    }

    /// The id of the buffer named `name` (the last one added under that name).
    pub fn find(&self, name: &str) -> Option<BufferId> {
        self.by_name.get(name).copied()
    }

    /// The buffer's range in f32 elements of the arena, for `Backend::slice_mut` on an arena
    /// buffer. An unknown id, or a buffer whose offset or size is not a whole number of f32, is
    /// an error.
    pub fn f32_range(&self, id: BufferId) -> Result<Range<usize>> {
        let p = self
            .get(id)
            .ok_or_else(|| Error::Invalid(format!("plan: no buffer with id {}", id.0)))?;
        if p.request.bytes % 4 != 0 {
            return Err(Error::Invalid(format!(
                "plan: buffer `{}` has {} bytes, not a whole number of f32",
                p.request.name, p.request.bytes
            )));
        }
        let to_usize = |b: u64| {
            usize::try_from(b / 4).map_err(|_| {
                Error::Invalid(format!(
                    "plan: buffer `{}` at byte {b} is beyond this machine's address space",
                    p.request.name
                ))
            })
        };
        Ok(to_usize(p.offset)?..to_usize(p.offset + p.request.bytes)?)
    }

    /// `(category, number of buffers, Σ bytes)` for every category present, in report order.
    pub fn category_totals(&self) -> Vec<(Category, usize, u64)> {
        Category::ALL
            .iter()
            .filter_map(|&c| {
                let (n, bytes) = self
                    .buffers
                    .iter()
                    .filter(|p| p.request.category == c)
                    .fold((0usize, 0u64), |(n, b), p| (n + 1, b + p.request.bytes));
                (n > 0).then_some((c, n, bytes))
            })
            .collect()
    }

    /// Checks the packing: offsets aligned, every buffer inside the arena, and no two buffers
    /// whose lifetimes intersect overlapping in address. Quadratic in the number of buffers
    /// (a few milliseconds for a thousand), so [`PlanBuilder::pack`] always runs it.
    pub fn verify(&self) -> Result<()> {
        for p in &self.buffers {
            let r = &p.request;
            if p.offset % ALIGN != 0 {
                return Err(Error::Invalid(format!(
                    "plan: buffer `{}` at offset {} is not {ALIGN}-byte aligned",
                    r.name, p.offset
                )));
            }
            if p.offset
                .checked_add(r.bytes)
                .is_none_or(|e| e > self.arena_bytes)
            {
                return Err(Error::Invalid(format!(
                    "plan: buffer `{}` ({} bytes at offset {}) ends beyond the arena of {} bytes",
                    r.name, r.bytes, p.offset, self.arena_bytes
                )));
            }
        }
        for (i, a) in self.buffers.iter().enumerate() {
            for b in &self.buffers[i + 1..] {
                let (ra, rb) = (a.byte_range(), b.byte_range());
                let disjoint =
                    ra.is_empty() || rb.is_empty() || ra.end <= rb.start || rb.end <= ra.start;
                if !disjoint && a.request.lifetime_intersects(&b.request) {
                    return Err(Error::Invalid(format!(
                        "plan: buffers `{}` (bytes {ra:?}, steps {}..={}) and `{}` (bytes {rb:?}, \
                         steps {}..={}) are live together and overlap",
                        a.request.name,
                        a.request.first_use,
                        a.request.last_use,
                        b.request.name,
                        b.request.first_use,
                        b.request.last_use
                    )));
                }
            }
        }
        Ok(())
    }

    /// A text table: arena, peak live, sum, and the per-category totals (MiB).
    pub fn report(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = String::new();
        let _ = writeln!(s, "{:<20} {:>7} {:>12}", "category", "buffers", "MiB");
        for (c, n, bytes) in self.category_totals() {
            let _ = writeln!(s, "{:<20} {n:>7} {:>12.2}", format!("{c:?}"), mib(bytes));
        }
        let _ = writeln!(
            s,
            "{:<20} {:>7} {:>12.2}",
            "sum (no reuse)",
            self.buffers.len(),
            mib(self.sum_bytes)
        );
        let _ = writeln!(
            s,
            "{:<20} {:>7} {:>12.2}",
            "peak live",
            "",
            mib(self.peak_live_bytes)
        );
        let _ = writeln!(
            s,
            "{:<20} {:>7} {:>12.2}",
            "arena",
            "",
            mib(self.arena_bytes)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `verify` must catch what `pack` would never produce: overlapping live buffers,
    /// misalignment, a buffer past the arena's end.
    #[test]
    fn verify_rejects_corrupted_plans() {
        let mut b = PlanBuilder::new();
        b.add_buffer("a", Category::Temporary, 128, 0, 2);
        b.add_buffer("b", Category::Temporary, 128, 1, 3);
        b.add_buffer("c", Category::Temporary, 128, 3, 4);
        let plan = b.pack().unwrap();
        assert!(plan.verify().is_ok());

        let mut bad = plan.clone();
        bad.buffers[1].offset = bad.buffers[0].offset + 64; // a and b live together at 1..=2
        assert!(bad.verify().unwrap_err().to_string().contains("overlap"));

        let mut bad = plan.clone();
        bad.buffers[2].offset = 32;
        assert!(bad.verify().unwrap_err().to_string().contains("aligned"));

        let mut bad = plan.clone();
        bad.arena_bytes = 128;
        assert!(
            bad.verify()
                .unwrap_err()
                .to_string()
                .contains("beyond the arena")
        );

        // a (0..=2) and c (3..=4) do not meet: sharing an address is fine.
        let mut ok = plan;
        ok.buffers[2].offset = ok.buffers[0].offset;
        assert!(ok.verify().is_ok());
    }
}
