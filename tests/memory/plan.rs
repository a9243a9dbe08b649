//! Packing of `memory::plan`: no two live buffers overlap (checked step by step, independently of
//! `Plan::verify`), the arena is at least the peak of live bytes and equal to it in simple cases,
//! best-fit reuses gaps, offsets are aligned, and bad sizes/lifetimes are errors with numbers.

use edgetune::memory::plan::{ALIGN, BufferId, BufferRequest, Category, Plan, PlanBuilder};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn req(name: &str, bytes: u64, first: u32, last: u32) -> BufferRequest {
    BufferRequest {
        name: name.into(),
        category: Category::Temporary,
        bytes,
        first_use: first,
        last_use: last,
    }
}

fn pack(reqs: &[BufferRequest]) -> Plan {
    let mut b = PlanBuilder::new();
    for r in reqs {
        b.add(r.clone());
    }
    b.pack().expect("pack")
}

/// Brute force, independent of the planner: at every step, the live non-empty buffers sorted by
/// offset must not overlap; offsets aligned and inside the arena; peak and sum recomputed.
fn check(plan: &Plan, reqs: &[BufferRequest]) {
    assert_eq!(plan.buffers().len(), reqs.len());
    let max_step = reqs.iter().map(|r| r.last_use).max().unwrap_or(0);
    let mut peak = 0u64;
    for step in 0..=max_step {
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut live_bytes = 0u64;
        for (p, r) in plan.buffers().iter().zip(reqs) {
            assert_eq!(&p.request, r);
            assert_eq!(p.offset % ALIGN, 0, "{} at {}", r.name, p.offset);
            assert!(p.offset + r.bytes <= plan.arena_bytes());
            if r.first_use <= step && step <= r.last_use {
                live_bytes += r.bytes;
                if r.bytes > 0 {
                    live.push((p.offset, p.offset + r.bytes));
                }
            }
        }
        peak = peak.max(live_bytes);
        live.sort();
        for w in live.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "step {step}: {:?} overlaps {:?}",
                w[0],
                w[1]
            );
        }
    }
    assert_eq!(plan.peak_live_bytes(), peak);
    assert_eq!(plan.sum_bytes(), reqs.iter().map(|r| r.bytes).sum::<u64>());
    assert!(plan.arena_bytes() >= plan.peak_live_bytes());
    assert_eq!(plan.arena_bytes() % ALIGN, 0);
    plan.verify().expect("verify");
}

#[test]
fn random_request_sets_never_overlap_live_buffers() {
    let mut rng = StdRng::seed_from_u64(0x5eed_0001);
    for case in 0..400 {
        let n = rng.random_range(0..80);
        let steps = rng.random_range(1..40u32);
        let reqs: Vec<BufferRequest> = (0..n)
            .map(|i| {
                let a = rng.random_range(0..steps);
                let b = rng.random_range(0..steps);
                // Mix of odd sizes, aligned sizes, zero and large.
                let bytes = match rng.random_range(0..4) {
                    0 => rng.random_range(0..200),
                    1 => 64 * rng.random_range(1..50),
                    2 => rng.random_range(1..100_000),
                    _ => 0,
                };
                req(&format!("c{case}.b{i}"), bytes, a.min(b), a.max(b))
            })
            .collect();
        let plan = pack(&reqs);
        check(&plan, &reqs);
        // Never worse than no reuse (each buffer rounded up to the alignment).
        let aligned_sum: u64 = reqs.iter().map(|r| r.bytes.div_ceil(ALIGN) * ALIGN).sum();
        assert!(plan.arena_bytes() <= aligned_sum, "case {case}");
    }
}

#[test]
fn disjoint_lifetimes_take_the_largest_buffer() {
    let reqs = [
        req("a", 640, 0, 1),
        req("b", 1280, 2, 2),
        req("c", 128, 3, 7),
        req("d", 1216, 8, 9),
    ];
    let plan = pack(&reqs);
    check(&plan, &reqs);
    assert_eq!(plan.arena_bytes(), 1280);
    assert_eq!(plan.peak_live_bytes(), 1280);
    assert_eq!(plan.sum_bytes(), 640 + 1280 + 128 + 1216);
    assert!(plan.buffers().iter().all(|p| p.offset == 0));
}

#[test]
fn all_overlapping_take_the_aligned_sum() {
    let reqs = [
        req("a", 640, 0, 5),
        req("b", 1280, 2, 3),
        req("c", 128, 3, 9),
    ];
    let plan = pack(&reqs);
    check(&plan, &reqs);
    assert_eq!(plan.arena_bytes(), 640 + 1280 + 128);
    assert_eq!(plan.peak_live_bytes(), 640 + 1280 + 128);
    // Unaligned sizes: 100 → 128 at 0 (largest first), 10 at 128, arena 128 + 64.
    let reqs = [req("small", 10, 0, 0), req("big", 100, 0, 0)];
    let plan = pack(&reqs);
    check(&plan, &reqs);
    assert_eq!(plan.buffers()[1].offset, 0);
    assert_eq!(plan.buffers()[0].offset, 128);
    assert_eq!(plan.arena_bytes(), 192);
    assert_eq!(plan.peak_live_bytes(), 110);
}

#[test]
fn a_freed_gap_is_reused() {
    // `b` starts after `a` ends: it takes `a`'s place; `c` overlaps both and goes on top.
    let reqs = [
        req("a", 1024, 0, 1),
        req("b", 1024, 2, 3),
        req("c", 64, 0, 3),
    ];
    let plan = pack(&reqs);
    check(&plan, &reqs);
    assert_eq!(plan.buffers()[0].offset, plan.buffers()[1].offset);
    assert_eq!(plan.arena_bytes(), 1088);
}

#[test]
fn best_fit_takes_the_smallest_gap_not_the_lowest() {
    // Placement order (size): a 1024 @0, b 512 @1024, c 256 @1536, d 192 @1792 (each conflicts
    // with all before it at step 0). e (step 1) conflicts only with b [1024,1536) and
    // d [1792,1984): free gaps [0,1024) (1024 B) and [1536,1792) (256 B). Best fit: 1536.
    let reqs = [
        req("a", 1024, 0, 0),
        req("b", 512, 0, 9),
        req("c", 256, 0, 0),
        req("d", 192, 0, 9),
        req("e", 128, 1, 1),
    ];
    let plan = pack(&reqs);
    check(&plan, &reqs);
    let offsets: Vec<u64> = plan.buffers().iter().map(|p| p.offset).collect();
    assert_eq!(offsets, [0, 1024, 1536, 1792, 1536]);
    assert_eq!(plan.arena_bytes(), 1984);
}

#[test]
fn ties_in_size_place_the_earlier_lifetime_first() {
    let reqs = [req("late", 256, 5, 6), req("early", 256, 0, 6)];
    let plan = pack(&reqs);
    assert_eq!(plan.buffers()[1].offset, 0);
    assert_eq!(plan.buffers()[0].offset, 256);
}

#[test]
fn offsets_are_aligned_for_odd_sizes() {
    let reqs: Vec<_> = (0..20)
        .map(|i| req(&format!("b{i}"), 1 + 7 * i, 0, 0))
        .collect();
    let plan = pack(&reqs);
    check(&plan, &reqs);
    // 20 buffers of 1..=134 bytes, all live together: each takes 64, 128 or 192 bytes, stacked.
    let aligned: u64 = reqs.iter().map(|r| r.bytes.div_ceil(64) * 64).sum();
    assert_eq!(plan.arena_bytes(), aligned);
}

#[test]
fn zero_byte_buffers_take_no_space() {
    let reqs = [req("z", 0, 0, 3), req("a", 64, 0, 3)];
    let plan = pack(&reqs);
    check(&plan, &reqs);
    assert_eq!(plan.arena_bytes(), 64);
}

#[test]
fn overflow_and_bad_lifetimes_are_errors_with_numbers() {
    let mut b = PlanBuilder::new();
    b.add(req("huge", u64::MAX, 0, 0));
    let e = b.pack().unwrap_err().to_string();
    assert!(
        e.contains("huge") && e.contains(&u64::MAX.to_string()),
        "{e}"
    );

    let mut b = PlanBuilder::new();
    b.add(req("a", 1 << 63, 0, 0));
    b.add(req("b", 1 << 63, 1, 1));
    let e = b.pack().unwrap_err().to_string();
    assert!(
        e.contains("overflow") && e.contains(&(1u64 << 63).to_string()),
        "{e}"
    );

    let mut b = PlanBuilder::new();
    b.add(req("backwards", 64, 5, 4));
    let e = b.pack().unwrap_err().to_string();
    assert!(e.contains("backwards") && e.contains("5..=4"), "{e}");
}

#[test]
fn category_totals_and_lookup() {
    let mut b = PlanBuilder::new();
    let x = b.add_buffer("x", Category::Checkpoint, 256, 0, 4);
    b.add_buffer("g", Category::AdapterGrad, 100, 2, 4);
    b.add_buffer("h", Category::AdapterGrad, 28, 3, 4);
    let plan = b.pack().unwrap();
    assert_eq!(
        plan.category_totals(),
        [
            (Category::Checkpoint, 1, 256),
            (Category::AdapterGrad, 2, 128)
        ]
    );
    assert_eq!(plan.find("x"), Some(x));
    assert_eq!(plan.find("nope"), None);
    assert_eq!(plan.f32_range(x).unwrap().len(), 64);
    assert!(plan.f32_range(BufferId(1)).is_ok()); // 100 bytes = 25 f32
    assert!(plan.f32_range(BufferId(2)).is_ok()); // 28 bytes = 7 f32
    assert!(plan.f32_range(BufferId(9)).is_err());
    assert!(plan.report().contains("AdapterGrad"));
}
