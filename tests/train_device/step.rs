//! `DeviceStep<CpuBackend>` — the whole training micro-batch written in `Backend` ops over one
//! workspace (crates/edgetune-train/src/train/step_device.rs) — against the CPU `TrainStep` (itself checked against
//! the f64 reference by tests/train/grad.rs), on the tiny generated model: two accumulated
//! micro-batches of packed rows (several causal segments, trailing padding, ignored labels).
//!
//! Tolerances. Both compute the same f32 math on the same kernels; they differ in summation
//! order only where the LoRA gradients accumulate (`β = 1` GEMMs here, a temporary plus an
//! add there) and in the gradient-checkpointing recompute, so losses agree to ~1e-7 relative
//! and gradients to ~1e-6; we require 1e-5 (loss, relative) and 1e-4 (relative RMS per
//! adapter gradient), the bounds.

use crate::device_step_support;
use crate::train_support;

use crate::device_step_support::{compare, device_step, lora_set, train_step, two_micro_batches};
use edgetune::backend::CpuBackend;
use edgetune::data::Batch;
use edgetune::gguf::GgufFile;
use edgetune::model::{BackendModel, Llama};
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::{AdapterSet, DeviceStep, Method, TrainConfig};

fn model(dir: &std::path::Path, ty: GgmlType) -> GgufFile {
    let path = dir.join(format!("tiny-{ty}.gguf"));
    testmodel::write_test_model(&TINY, WeightTypes::Uniform(ty), 5, &path).unwrap();
    GgufFile::open(&path).unwrap()
}

#[test]
fn device_step_on_the_cpu_matches_train_step() {
    let dir = tempfile::tempdir().unwrap();
    for (ty, rslora, ckpt) in [(GgmlType::Q8_0, false, true), (GgmlType::Q4_K, true, false)] {
        let file = model(dir.path(), ty);
        let llama = Llama::load(&file).unwrap();
        let cfg = llama.config().clone();
        let set = lora_set(&cfg, rslora, 9);
        let batches = two_micro_batches(cfg.n_vocab);
        let want = train_step(&llama, &set, &batches, ckpt);
        let got = device_step(llama.backend_model(), &set, &batches);
        let (loss, grad) = compare(&got, &want);
        eprintln!("{ty} rslora={rslora}: loss rel {loss:.2e}, grad rel RMS {grad:.2e}");
        assert!(loss < 1e-5, "{ty}: loss relative difference {loss:.2e}");
        assert!(grad < 1e-4, "{ty}: gradient relative RMS {grad:.2e}");
    }
}

#[test]
fn sync_params_tracks_the_host_update() {
    // After changing the host parameters, the step must see them only after sync_params.
    let dir = tempfile::tempdir().unwrap();
    let file = model(dir.path(), GgmlType::Q8_0);
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let mut set = lora_set(&cfg, false, 3);
    let m = llama.backend_model();
    let batches = two_micro_batches(cfg.n_vocab);
    let mut step = DeviceStep::new(m, &set, 2, 16, 5, false).unwrap();
    let before = step.eval_loss(m, &batches[0]).unwrap();
    for (_, _, a) in set.iter_mut() {
        for v in a.param_mut(1).unwrap() {
            *v *= 3.0;
        }
    }
    assert_eq!(step.eval_loss(m, &batches[0]).unwrap(), before);
    step.sync_params(&CpuBackend, &set).unwrap();
    let after = step.eval_loss(m, &batches[0]).unwrap();
    let want = train_step(&llama, &set, &batches[..1], true).losses[0];
    assert!(after.0 != before.0);
    assert!(
        ((after.0 - want) / want).abs() < 1e-5,
        "{} vs {want}",
        after.0
    );
}

#[test]
fn unsupported_methods_and_dropout_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let file = model(dir.path(), GgmlType::Q8_0);
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let m: &BackendModel<'_, CpuBackend> = llama.backend_model();
    let tc = TrainConfig::default();
    let dora =
        edgetune::train::build_adapters(Method::Dora, &cfg, &tc, 10, 1, Some(llama.weights()))
            .unwrap();
    let e = DeviceStep::new(m, &dora, 2, 16, 5, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dora") && e.contains("not supported"), "{e}");
    let mut lc = tc.lora.clone();
    lc.dropout = 0.1;
    let dropped = AdapterSet::new_lora(&cfg, &lc, 1).unwrap();
    let e = DeviceStep::new(m, &dropped, 2, 16, 5, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("dropout"), "{e}");
    // A batch of another shape, and accumulation that was not planned, are errors too.
    let set = lora_set(&cfg, false, 1);
    let mut step = DeviceStep::new(m, &set, 2, 16, 5, false).unwrap();
    let e = step
        .micro_batch(m, &Batch::new(1, 16), 1.0, true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("1 × 16"), "{e}");
    let b = &two_micro_batches(cfg.n_vocab)[0];
    let e = step
        .micro_batch(m, b, 1.0, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("accumulation"), "{e}");
    // A batch whose labels or positions do not match its ids is an error in both steps, not
    // an out-of-bounds panic (Batch's fields are public).
    let mut short = two_micro_batches(cfg.n_vocab)[0].clone();
    short.labels.truncate(3);
    let e = step
        .micro_batch(m, &short, 1.0, true)
        .expect_err("short labels")
        .to_string();
    assert!(e.contains("3 labels"), "{e}");
    let shape = edgetune::train::step::adapter_shapes(&set);
    let mut cpu = edgetune::train::TrainStep::new(
        m,
        &set,
        edgetune::train::plan_llama::TrainShape::plain(16, 2, 5, true, shape),
    )
    .unwrap();
    let e = cpu
        .micro_batch(m, &set, &short, 1.0, true, 1)
        .expect_err("short labels")
        .to_string();
    assert!(e.contains("3 labels"), "{e}");
}

#[test]
fn split_mut_hands_out_disjoint_ranges_and_refuses_overlaps() {
    use edgetune::backend::Backend;
    let mut buf: Vec<f32> = (0..10).map(|i| i as f32).collect();
    let [a, e, b] = CpuBackend::split_mut(&mut buf, [6..9, 3..3, 0..2]).unwrap();
    assert_eq!(
        (a.to_vec(), e.len(), b.to_vec()),
        (vec![6.0, 7.0, 8.0], 0, vec![0.0, 1.0])
    );
    a[0] = -1.0;
    assert_eq!(buf[6], -1.0);
    let err = CpuBackend::split_mut(&mut buf, [0..5, 4..6])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("4..6") && err.contains("overlaps"), "{err}");
    let err = CpuBackend::split_mut(&mut buf, [0..0, 8..11])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("8..11") && err.contains("10 values"), "{err}");
}

#[test]
fn grads_of_unadapted_or_out_of_range_slots_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let file = model(dir.path(), GgmlType::Q8_0);
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let lc = edgetune::adapters::LoraConfig {
        rank: 2,
        targets: vec![
            edgetune::adapters::Target::AttnQ,
            edgetune::adapters::Target::AttnV,
        ],
        ..Default::default()
    };
    let set = AdapterSet::new_lora(&cfg, &lc, 1).unwrap();
    let m = llama.backend_model();
    let mut step = DeviceStep::new(m, &set, 2, 16, 5, false).unwrap();
    step.micro_batch(m, &two_micro_batches(cfg.n_vocab)[0], 0.01, true)
        .unwrap();
    let (d, kv) = (cfg.dim, cfg.kv_dim());
    assert_eq!(
        step.grads_mut(&CpuBackend, 0, 2).unwrap().len(),
        2 * (d + kv)
    );
    assert_eq!(
        step.grads_mut(&CpuBackend, 1, 0).unwrap().len(),
        2 * (d + cfg.q_dim())
    );
    assert!(step.grads_mut(&CpuBackend, 0, 1).unwrap().is_empty());
    // Index 7 is not layer 1's slot 0, and a layer past the model is empty too.
    assert!(step.grads_mut(&CpuBackend, 0, 7).unwrap().is_empty());
    assert!(
        step.grads_mut(&CpuBackend, cfg.n_layer, 2)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn trainer_steps_through_the_device_engine_follow_the_cpu_step() {
    // The device engine's trainer path (gradients downloaded for the host optimizer, the
    // parameters mirrored back after every update) on the CPU backend: 3 optimizer steps of 2
    // accumulated micro-batches, step losses and final adapters as the CPU TrainStep's.
    use edgetune::train::Trainer;
    use edgetune::train::engine::Device;
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 40);
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 3);
    cfg.accum = 2;
    cfg.pack = true;
    let run = |device: Device| {
        let mut t = Trainer::new(&file, &cfg).unwrap();
        let cpu_arena = t.train_step().arena_bytes();
        t.use_device(&file, device).unwrap();
        // A device engine frees the CPU step's arena (no second, unused step in host memory).
        let kept = t.train_step().arena_bytes();
        assert_eq!(kept, if t.device_bytes() > 0 { 0 } else { cpu_arena });
        let losses: Vec<f64> = (0..3)
            .map(|_| t.step().unwrap().expect("a step").loss)
            .collect();
        let b: Vec<f32> = t
            .adapters()
            .iter()
            .flat_map(|(_, _, a)| a.param(1).unwrap().to_vec())
            .collect();
        (losses, b, t.device_bytes())
    };
    let (cpu, cpu_b, none) = run(Device::Cpu);
    let (dev, dev_b, bytes) = run(Device::CpuDeviceStep);
    eprintln!("trainer losses cpu {cpu:?} device step {dev:?}");
    assert_eq!(none, 0);
    assert!(bytes > 0);
    assert!(
        cpu_b.iter().any(|v| *v != 0.0),
        "B stayed zero: no update happened"
    );
    for (s, (d, c)) in dev.iter().zip(&cpu).enumerate() {
        assert!(
            ((d - c) / c).abs() < 1e-5,
            "step {}: loss {d} vs {c}",
            s + 1
        );
    }
    let e = device_step_support::rel_rms(&dev_b, &cpu_b);
    assert!(e < 1e-4, "lora_B after 3 steps: relative RMS {e:.2e}");
}

#[test]
fn methods_whose_hooks_read_cpu_gradients_are_refused_by_the_device_engine() {
    // layerimp trains plain LoRA adapters (DeviceStep::new alone would take them) but scales
    // the CPU step's gradients in a hook: the engine refuses it by name, before any step.
    use edgetune::train::engine::Device;
    use edgetune::train::{Method, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 20);
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 2);
    cfg.method = Method::Layerimp;
    let mut t = Trainer::new(&file, &cfg).unwrap();
    let err = t
        .use_device(&file, Device::CpuDeviceStep)
        .expect_err("layerimp refused")
        .to_string();
    assert!(
        err.contains("layerimp") && err.contains("--backend cpu"),
        "{err}"
    );
    // The trainer is unchanged: it still steps on the CPU.
    assert!(t.step().unwrap().is_some());
}

#[test]
fn the_device_step_is_planned_in_place_of_the_cpu_arena_and_held_to_the_budget() {
    // On the CPU backend the device workspace lives in host memory, so it counts in full, with
    // the host staging, in place of the CPU step's arena; a budget below that is refused.
    use edgetune::train::Trainer;
    use edgetune::train::engine::Device;
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 20);
    let file = GgufFile::open(&model).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 2);
    (cfg.batch, cfg.lora.rank) = (1, 128);
    let mut t = Trainer::new(&file, &cfg).unwrap();
    let (cpu_total, cpu_arena) = (t.planned_bytes(), t.train_step().arena_bytes() as u64);
    t.use_device(&file, Device::CpuDeviceStep).unwrap();
    let device_total = t.planned_bytes();
    let workspace = t.device_bytes() as u64;
    assert!(
        device_total > cpu_total - cpu_arena + workspace,
        "the staging counts too: {device_total} vs {cpu_total} − {cpu_arena} + {workspace}"
    );
    eprintln!(
        "cpu plan {cpu_total} (arena {cpu_arena}), device plan {device_total} (workspace {workspace})"
    );
    // The run directory is the trainer's until it is dropped (run_dir.rs's lock).
    drop(t);
    // With one row and rank 128 the device step's mirror of A and B outweighs what
    // its packing saves on activations, so a budget between the two plans passes the CPU plan
    // and refuses the device step (before building it; tests/train_device/plan.rs checks the
    // planned numbers against the allocation).
    assert!(device_total > cpu_total);
    // Without a budget the FFN runs over the whole micro-batch; under one the trainer tries
    // smaller FFN chunks first, so the refusal comes only below the smallest plan's total.
    let llama = Llama::load(&file).unwrap();
    let chunk = cfg.ce_chunk.min(cfg.batch * cfg.seq_len);
    let shape = edgetune::train::DeviceShape::lora(llama.config(), &cfg, chunk);
    let smallest = edgetune::train::plan_device_step(llama.config(), &shape).unwrap();
    let device_total = smallest.total_in_place_of(cpu_total, cpu_arena, true);
    assert!(device_total > cpu_total);
    for (budget, fits) in [(device_total, true), (device_total - 1, false)] {
        cfg.budget_bytes = Some(budget);
        let mut t = Trainer::new(&file, &cfg).unwrap();
        let r = t.use_device(&file, Device::CpuDeviceStep);
        assert_eq!(r.is_ok(), fits, "budget {budget}: {r:?}");
        if let Err(e) = r {
            let e = e.to_string();
            assert!(
                e.contains("device training step") && e.contains(&budget.to_string()),
                "{e}"
            );
            // Refused before anything was freed: the CPU step still trains.
            assert_eq!(t.train_step().arena_bytes() as u64, cpu_arena);
            assert!(t.step().unwrap().is_some());
        }
    }
}
