//! A whole training step on CUDA: `DeviceStep<CudaBackend>` (crates/edgetune-train/src/train/step_device.rs)
//! against the CPU `TrainStep` on the tiny generated model — two accumulated micro-batches
//! of packed rows (several causal segments, trailing padding, ignored labels): `Σ loss` of
//! each micro-batch within 1e-3 relative, every adapter gradient within 1e-2 relative RMS
//! (bf16 tensor cores in the device GEMMs and matmuls, as tests/cuda_parity/model.rs); then
//! three optimizer steps through the trainer (`Trainer::use_device`) on CPU and on CUDA,
//! step losses within 1e-2 relative. The same step on the CPU backend matches `TrainStep`
//! to 1e-5 / 1e-4 in tests/train_device/step.rs, so a failure here is the device's.
//! No-device skip: `tests/cuda_support/mod.rs`.

use crate::train_support;

use crate::cuda_support::device;
use crate::device_step_support::{compare, device_step, lora_set, train_step, two_micro_batches};
use edgetune::gguf::GgufFile;
use edgetune::model::{BackendModel, Llama};
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::Trainer;
use edgetune::train::engine::Device;

#[test]
#[ignore = "needs a CUDA device"]
fn device_step_on_cuda_matches_train_step() {
    let cuda = device("training step");
    let dir = tempfile::tempdir().unwrap();
    for (ty, rslora, ckpt) in [(GgmlType::Q8_0, false, true), (GgmlType::Q4_K, true, false)] {
        let path = dir.path().join(format!("tiny-{ty}.gguf"));
        testmodel::write_test_model(&TINY, WeightTypes::Uniform(ty), 5, &path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let llama = Llama::load(&file).unwrap();
        let cfg = llama.config().clone();
        let set = lora_set(&cfg, rslora, 9);
        let batches = two_micro_batches(cfg.n_vocab);
        let want = train_step(&llama, &set, &batches, ckpt);
        let _attached = cuda.attach_weights(file.as_bytes()).unwrap();
        let model = BackendModel::new(cuda.clone(), &cfg, llama.weights()).unwrap();
        let got = device_step(&model, &set, &batches);
        let (loss, grad) = compare(&got, &want);
        eprintln!("{ty} rslora={rslora}: loss rel {loss:.2e}, grad rel RMS {grad:.2e}");
        assert!(loss < 1e-3, "{ty}: loss relative difference {loss:.2e}");
        assert!(grad < 1e-2, "{ty}: gradient relative RMS {grad:.2e}");
    }
}

#[test]
#[ignore = "needs a CUDA device"]
fn three_trainer_steps_on_cuda_follow_the_cpu() {
    let cuda = device("trainer steps");
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 40);
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 3);
    cfg.accum = 2;
    cfg.pack = true;
    let losses = |device: Device| {
        let mut t = Trainer::new(&file, &cfg).unwrap();
        t.use_device(&file, device).unwrap();
        (0..3)
            .map(|_| t.step().unwrap().expect("a step").loss)
            .collect::<Vec<f64>>()
    };
    let cpu = losses(Device::Cpu);
    let gpu = losses(Device::Cuda(cuda));
    eprintln!("trainer losses cpu {cpu:?} cuda {gpu:?}");
    assert!(cpu[2] != cpu[0], "the steps changed nothing");
    for (s, (g, c)) in gpu.iter().zip(&cpu).enumerate() {
        assert!(
            ((g - c) / c).abs() < 1e-2,
            "step {}: loss {g} vs {c}",
            s + 1
        );
    }
}
