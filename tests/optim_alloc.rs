//! A counting global allocator proves that optimizer steps allocate nothing once the optimizers
//! are built (docs/ARCHITECTURE.md#no-allocation-during-a-step): AdamW with f32 and 8-bit state, in
//! RAM and on disk, SGD with momentum, clipping and the schedule.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use edgetune::optim::{
    AdamW, AdamWConfig, ParamSpec, Schedule, Sgd, SgdConfig, StateBits, StateStorage,
    clip_by_global_norm, global_norm,
};

struct Counting;

thread_local! {
    // Counts only this thread's allocations: the test harness's threads do not interfere.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[test]
fn steps_allocate_nothing() {
    let numels = [5000usize, 64, 4096 * 3 + 17];
    let groups = edgetune::optim::lora_plus_groups(16.0, 0.01);
    let specs: Vec<ParamSpec> = numels
        .iter()
        .enumerate()
        .map(|(i, &numel)| ParamSpec {
            numel,
            group: i % 2,
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let disk = StateStorage::Disk(dir.path().to_path_buf());
    let mut adams = [
        AdamW::new(
            AdamWConfig::default(),
            &groups,
            &specs,
            StateBits::F32,
            &StateStorage::Ram,
        )
        .unwrap(),
        AdamW::new(
            AdamWConfig::default(),
            &groups,
            &specs,
            StateBits::Eight,
            &StateStorage::Ram,
        )
        .unwrap(),
        AdamW::new(
            AdamWConfig::default(),
            &groups,
            &specs,
            StateBits::Eight,
            &disk,
        )
        .unwrap(),
        AdamW::new(
            AdamWConfig::default(),
            &groups,
            &specs,
            StateBits::F32,
            &disk,
        )
        .unwrap(),
    ];
    let sgd_cfg = SgdConfig {
        momentum: 0.9,
        dampening: 0.0,
        nesterov: true,
    };
    let mut sgd = Sgd::new(sgd_cfg, &groups, &specs).unwrap();
    let mut params: Vec<Vec<f32>> = numels.iter().map(|&n| vec![0.5; n]).collect();
    let mut grads: Vec<Vec<f32>> = numels
        .iter()
        .map(|&n| (0..n).map(|i| (i % 13) as f32 - 6.0).collect())
        .collect();
    let schedule = Schedule::WarmupCosine {
        warmup: 2,
        total: 10,
        min_lr_ratio: 0.1,
    };
    // The slice lists are the caller's, built once.
    let mut p_refs: Vec<&mut [f32]> = params.iter_mut().map(|p| p.as_mut_slice()).collect();
    let mut g_refs: Vec<&mut [f32]> = grads.iter_mut().map(|g| g.as_mut_slice()).collect();

    let before = allocs();
    for t in 1..=5u64 {
        let lr = schedule.lr_at(1e-3, t);
        let (norm, _) = clip_by_global_norm(&mut g_refs, 1.0);
        assert!(norm.is_finite());
        let g_view: [&[f32]; 3] = [&*g_refs[0], &*g_refs[1], &*g_refs[2]];
        assert!(global_norm(&g_view) <= 1.0 + 1e-5);
        for opt in adams.iter_mut() {
            opt.step(&mut p_refs, &g_view, lr).unwrap();
        }
        sgd.step(&mut p_refs, &g_view, lr).unwrap();
        // Per-tensor streaming, as a backend would drive it.
        let opt = &mut adams[1];
        opt.begin_step();
        for (id, (p, g)) in p_refs.iter_mut().zip(g_view).enumerate() {
            opt.update(id, p, g, lr).unwrap();
        }
    }
    let during = allocs() - before;
    assert_eq!(during, 0, "{during} allocations during 5 steps");
    // The counter does count: building a vector is seen.
    let v = std::hint::black_box(vec![1u8; 10]);
    assert!(allocs() > before, "{}", v.len());
}
