//! A counting global allocator proves that `DeviceStep<CpuBackend>::micro_batch` (and the
//! gradient download) allocates nothing after the first micro-batch: the whole workspace is
//! the one allocation of `DeviceStep::new`. One test in this file, run inside a rayon pool
//! (see tests/train_alloc.rs for why).

mod device_step_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use device_step_support::{CHUNK, ROWS, SEQ, lora_set, loss_scale, two_micro_batches};
use edgetune::backend::CpuBackend;
use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::DeviceStep;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

fn count() {
    if COUNTING.load(Ordering::Relaxed) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn device_step_micro_batches_after_the_first_allocate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::Uniform(GgmlType::Q4_0), 5, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let set = lora_set(&cfg, false, 4);
    let batches = two_micro_batches(cfg.n_vocab);
    let scale = loss_scale(&batches);
    let m = llama.backend_model();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    pool.install(|| {
        let mut step = DeviceStep::new(m, &set, ROWS, SEQ, CHUNK, true).unwrap();
        let run = |step: &mut DeviceStep<CpuBackend>| {
            let mut loss = 0.0;
            for (i, b) in batches.iter().enumerate() {
                loss += step.micro_batch(m, b, scale, i == 0).unwrap();
            }
            let g = step.grads_mut(&CpuBackend, 1, 6).unwrap();
            assert!(g.iter().any(|v| *v != 0.0));
            step.sync_params(&CpuBackend, &set).unwrap();
            loss
        };
        // Warm-up: the quantized kernels' per-thread scratch grows on first use of a shape.
        for _ in 0..3 {
            run(&mut step);
        }
        for _ in 0..2 {
            ALLOCS.store(0, Ordering::SeqCst);
            COUNTING.store(true, Ordering::SeqCst);
            let loss = run(&mut step);
            COUNTING.store(false, Ordering::SeqCst);
            assert!(loss.is_finite());
            let n = ALLOCS.load(Ordering::SeqCst);
            assert_eq!(n, 0, "a step of 2 micro-batches allocated {n} times");
        }
    });
}
