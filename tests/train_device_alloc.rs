//! A counting global allocator proves that `DeviceStep<CpuBackend>::micro_batch` (and the
//! gradient download) allocates nothing after the first micro-batch: the whole workspace is
//! the one allocation of `DeviceStep::new`. One test in this file, run inside a rayon pool
//! (see tests/train_alloc.rs for why).

mod alloc_support;
mod device_step_support;

use device_step_support::{CHUNK, ROWS, SEQ, lora_set, loss_scale, two_micro_batches};
use edgetune::backend::CpuBackend;
use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::DeviceStep;

fn main() {
    alloc_support::run_alone(
        "device_step_micro_batches_after_the_first_allocate_nothing",
        device_step_micro_batches_after_the_first_allocate_nothing,
    );
}

fn device_step_micro_batches_after_the_first_allocate_nothing() {
    alloc_support::assert_counting_works();
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
            let (loss, counted) = alloc_support::counted(|| run(&mut step));
            assert!(loss.is_finite());
            let n = counted.allocs;
            assert_eq!(n, 0, "a step of 2 micro-batches allocated {n} times");
        }
    });
}
