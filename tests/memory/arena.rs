//! `memory::Arena`: one aligned allocation, views of planned buffers, the disjoint-views API
//! refuses overlapping (address-sharing) requests, and writes to one live buffer never clobber
//! another live buffer.

use edgetune::memory::plan::{BufferId, Category, PlanBuilder};
use edgetune::memory::{Arena, Plan};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// a (steps 0..=1) and b (2..=3) share addresses; c (0..=3) is apart from both.
fn small() -> (Plan, [BufferId; 3]) {
    let mut p = PlanBuilder::new();
    let a = p.add_buffer("a", Category::Temporary, 64 * 4, 0, 1);
    let b = p.add_buffer("b", Category::Temporary, 64 * 4, 2, 3);
    let c = p.add_buffer("c", Category::Temporary, 32 * 4, 0, 3);
    (p.pack().unwrap(), [a, b, c])
}

#[test]
fn views_have_the_planned_lengths_and_alignment() {
    let (plan, [a, b, c]) = small();
    assert_eq!(plan.get(a).unwrap().offset, plan.get(b).unwrap().offset);
    let mut arena = Arena::new(&plan).unwrap();
    assert_eq!(arena.bytes() as u64, plan.arena_bytes());
    assert_eq!(arena.as_mut_slice().len() * 4, arena.bytes());
    for (id, len) in [(a, 64), (b, 64), (c, 32)] {
        let v = arena.view(id).unwrap();
        assert_eq!(v.len(), len);
        assert_eq!(v.as_ptr() as usize % 64, 0);
        assert!(v.iter().all(|&x| x == 0.0));
    }
    assert!(arena.view(BufferId(3)).is_err());
}

#[test]
fn overlapping_requests_are_refused() {
    let (plan, [a, b, c]) = small();
    let mut arena = Arena::new(&plan).unwrap();
    let e = arena.views_mut([a, b]).unwrap_err().to_string();
    assert!(e.contains("overlap"), "{e}");
    assert!(arena.views_mut([c, b, a]).is_err());
    assert!(arena.views_mut([a, a]).is_err());
    assert!(arena.views_mut([a, BufferId(7)]).is_err());
    // Not live at step 2: a.
    assert!(arena.views_mut_at(2, [b, c]).is_ok());
    let e = arena.views_mut_at(2, [a, c]).unwrap_err().to_string();
    assert!(e.contains("0..=1") && e.contains("step 2"), "{e}");
}

#[test]
fn disjoint_views_are_writable_and_independent() {
    let (plan, [a, b, c]) = small();
    let mut arena = Arena::new(&plan).unwrap();
    {
        let [vc, va] = arena.views_mut([c, a]).unwrap();
        assert_eq!((va.len(), vc.len()), (64, 32));
        va.fill(1.0);
        vc.fill(2.0);
    }
    assert!(arena.view(a).unwrap().iter().all(|&x| x == 1.0));
    assert!(arena.view(c).unwrap().iter().all(|&x| x == 2.0));
    // b reuses a's bytes once a is dead: writing it changes a, never c.
    arena.view_mut(b).unwrap().fill(3.0);
    assert!(arena.view(a).unwrap().iter().all(|&x| x == 3.0));
    assert!(arena.view(c).unwrap().iter().all(|&x| x == 2.0));
}

#[test]
fn buffers_of_partial_f32_are_refused() {
    let mut p = PlanBuilder::new();
    p.add_buffer("odd", Category::Temporary, 6, 0, 0);
    let plan = p.pack().unwrap();
    assert!(Arena::new(&plan).unwrap_err().to_string().contains("odd"));
}

#[test]
fn random_plans_live_buffers_keep_their_contents() {
    let mut rng = StdRng::seed_from_u64(0xa7e4a);
    for _ in 0..100 {
        let steps = rng.random_range(1..20u32);
        let mut p = PlanBuilder::new();
        for i in 0..rng.random_range(1..40) {
            let (x, y) = (rng.random_range(0..steps), rng.random_range(0..steps));
            let bytes = 4 * rng.random_range(0..300u64);
            p.add_buffer(
                format!("b{i}"),
                Category::Activation,
                bytes,
                x.min(y),
                x.max(y),
            );
        }
        let plan = p.pack().unwrap();
        let mut arena = Arena::new(&plan).unwrap();
        let ids: Vec<BufferId> = (0..plan.buffers().len()).map(BufferId).collect();
        let lifetime = |id: BufferId| {
            let r = &plan.get(id).unwrap().request;
            (r.first_use, r.last_use)
        };
        // Each buffer is written (with its id) at its first step; at every step, every live
        // buffer must still hold its id.
        for step in 0..steps {
            for &id in &ids {
                if lifetime(id).0 == step {
                    arena.view_mut(id).unwrap().fill(id.0 as f32);
                }
            }
            let live: Vec<BufferId> = ids
                .iter()
                .copied()
                .filter(|&id| lifetime(id).0 <= step && step <= lifetime(id).1)
                .collect();
            for &id in &live {
                assert!(arena.view(id).unwrap().iter().all(|&x| x == id.0 as f32));
            }
            // Any three live buffers can be borrowed together.
            if live.len() >= 3 {
                let [x, y, z] = arena
                    .views_mut_at(step, [live[0], live[1], live[2]])
                    .unwrap();
                assert_eq!(x.len() + y.len() + z.len(), {
                    let n = |id: BufferId| plan.get(id).unwrap().request.bytes as usize / 4;
                    n(live[0]) + n(live[1]) + n(live[2])
                });
            }
        }
    }
}
