//! The device step's memory plan (crates/edgetune-train/src/train/step_device_plan.rs): Llama 3.1 8B (Q4_0 and
//! Q4_K_M, 1 × 512 tokens, LoRA r = 16 on all 7 projections, cross-entropy chunk 64) fits
//! 5.5 GiB as an integrated-GPU plan, the workspace adds up from the shapes by hand; the plan's
//! bytes are what a `DeviceStep<CpuBackend>` allocates (several shapes) and what the trainer
//! holds against the budget; the FFN row chunks give the CPU `TrainStep`'s loss and gradients;
//! gradient writes through `grads_mut` reach the device gradients.

use crate::device_step_support;
use crate::train_support;

use crate::device_step_support::{
    CHUNK, ROWS, SEQ, compare, lora_set, loss_scale, two_micro_batches,
};
use crate::device_step_support::{StepResult, train_step};
use edgetune::adapters::{LoraConfig, Target};
use edgetune::backend::CpuBackend;
use edgetune::gguf::GgufFile;
use edgetune::memory::parse_bytes;
use edgetune::model::Llama;
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, LLAMA_3_1_8B, TINY, WeightTypes};
use edgetune::train::budget::{ModelWeights, plan_training_for};
use edgetune::train::{AdapterSet, DevicePlan, DeviceShape, DeviceStep, TrainConfig};
use edgetune::train::{plan_device_step, plan_device_step_within};

const MIB: u64 = 1 << 20;

fn tiny(dir: &std::path::Path) -> GgufFile {
    let path = dir.join("tiny.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::Uniform(GgmlType::Q8_0), 5, &path).unwrap();
    GgufFile::open(&path).unwrap()
}

/// The CPU flagship's settings (tests/memory/budget.rs).
fn flagship() -> TrainConfig {
    let mut cfg = TrainConfig {
        seq_len: 512,
        batch: 1,
        threads: Some(6),
        budget_bytes: Some(parse_bytes("5.5GiB").unwrap()),
        ..TrainConfig::default()
    };
    cfg.lora.rank = 16;
    cfg
}

#[test]
fn llama_8b_device_plan_fits_5_5_gib_on_an_integrated_gpu() {
    let budget = parse_bytes("5.5GiB").unwrap();
    let cfg = flagship();
    assert_eq!(cfg.lora.targets, Target::ALL.to_vec());
    assert_eq!(cfg.ce_chunk, 64);
    let llama = LLAMA_3_1_8B.llama_config();
    let (t, d) = (512u64, 4096u64);
    for types in ["q4_0", "q4_k_m"] {
        let model =
            ModelWeights::from_preset(&LLAMA_3_1_8B, WeightTypes::parse(types).unwrap()).unwrap();
        let cpu = plan_training_for(&model, &cfg).unwrap().breakdown;
        assert!(cpu.fits, "{}", cpu.report());
        let shape = DeviceShape::lora(&llama, &cfg, cfg.ce_chunk);
        let plan = plan_device_step(&llama, &shape).unwrap();
        let total = plan.total_in_place_of(cpu.total_bytes, cpu.arena.arena_bytes, true);
        eprintln!(
            "{types}: CPU plan {:.1} MiB (arena {:.1}); device workspace {:.1} MiB, host {:.2} \
             MiB, plan {:.1} MiB = {:.3} GiB of {:.3}\n{}",
            cpu.total_bytes as f64 / MIB as f64,
            cpu.arena.arena_bytes as f64 / MIB as f64,
            plan.workspace_bytes() as f64 / MIB as f64,
            plan.host_bytes() as f64 / MIB as f64,
            total as f64 / MIB as f64,
            total as f64 / (1u64 << 30) as f64,
            budget as f64 / (1u64 << 30) as f64,
            plan.report()
        );
        assert!(total <= budget, "{types}: {total} > {budget}");
        // By hand: A/B and dA/dB of 41,943,040 parameters (f32), the 32 layer inputs
        // [512, 4096] f32, and the packed arena (at least its lower bound).
        let (arena, peak) = plan.arena_bytes();
        assert!(arena >= peak);
        let params = 4 * 41_943_040u64;
        assert_eq!(
            plan.workspace_bytes() as u64,
            2 * params + 32 * t * d * 4 + arena
        );
        // The arena holds at least x_L, dres, the [64, 128256] logits and the head's two
        // [64, 4096] chunk buffers, all live at the cross-entropy.
        assert!(peak >= 2 * t * d * 4 + 64 * 128_256 * 4 + 2 * 64 * d * 4);
        // No full [512, 14336] FFN activation: the FFN runs in row chunks.
        assert!(plan.ffn_chunk() < 512);
        // Host: ffn gate/up/down's 16 · (4096 + 14336) gradients, 512 targets and segments.
        assert_eq!(
            plan.host_bytes() as u64,
            4 * 16 * (4096 + 14_336) + 512 * 4 + 512 * 16
        );
        // Under the budget the trainer takes the largest FFN chunk that still fits it.
        let fits = |p: &DevicePlan| {
            p.total_in_place_of(cpu.total_bytes, cpu.arena.arena_bytes, true) <= budget
        };
        let within = plan_device_step_within(&llama, &shape, fits).unwrap();
        let within_total = within.total_in_place_of(cpu.total_bytes, cpu.arena.arena_bytes, true);
        eprintln!(
            "{types} under 5.5 GiB: FFN chunk {}, workspace {:.1} MiB, plan {:.3} GiB",
            within.ffn_chunk(),
            within.workspace_bytes() as f64 / MIB as f64,
            within_total as f64 / (1u64 << 30) as f64
        );
        assert!(within_total <= budget);
        assert!(within.ffn_chunk() >= plan.ffn_chunk());
        // A discrete GPU's workspace is device memory: only the host bytes replace the arena.
        let discrete = plan.total_in_place_of(cpu.total_bytes, cpu.arena.arena_bytes, false);
        assert_eq!(
            discrete,
            cpu.total_bytes - cpu.arena.arena_bytes + plan.host_bytes() as u64
        );
    }
}

/// `DeviceStep::with_shape` allocates exactly the planned workspace and host bytes.
#[test]
fn planned_bytes_are_what_a_device_step_allocates() {
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let m = llama.backend_model();
    use Target::*;
    // (rows, seq_len, rank, targets, accumulate, ce chunk, FFN chunk)
    type Case<'a> = (
        usize,
        usize,
        usize,
        &'a [Target],
        bool,
        usize,
        Option<usize>,
    );
    let cases: [Case; 6] = [
        (2, 16, 4, &Target::ALL, true, 5, None),
        (1, 8, 2, &[AttnQ, AttnV], false, 64, None),
        (3, 12, 8, &[FfnDown, AttnOutput], true, 7, Some(5)),
        (1, 40, 1, &Target::ALL, false, 3, Some(1)),
        (2, 64, 16, &[FfnGate, FfnUp, AttnK], true, 16, Some(128)),
        (4, 9, 3, &Target::ALL, false, 1, Some(9)),
    ];
    for (rows, seq_len, rank, targets, accumulate, ce, ffn) in cases {
        let lc = LoraConfig {
            rank,
            targets: targets.to_vec(),
            ..LoraConfig::default()
        };
        let set = AdapterSet::new_lora(&cfg, &lc, 1).unwrap();
        let mut shape = DeviceShape::for_set(&set, rows, seq_len, ce, accumulate).unwrap();
        shape.ffn_chunk = ffn;
        // The same shape from the training configuration alone.
        let tc = TrainConfig {
            batch: rows,
            seq_len,
            accum: if accumulate { 2 } else { 1 },
            lora: lc.clone(),
            ..TrainConfig::default()
        };
        let mut from_cfg = DeviceShape::lora(&cfg, &tc, ce);
        from_cfg.ffn_chunk = ffn;
        assert_eq!(from_cfg, shape);
        let plan = plan_device_step(&cfg, &shape).unwrap();
        let step = DeviceStep::with_shape(m, &set, &shape).unwrap();
        let what = format!("{rows}×{seq_len} r={rank} {targets:?} ffn {ffn:?}");
        assert_eq!(step.workspace_bytes(), plan.workspace_bytes(), "{what}");
        assert_eq!(step.host_bytes(), plan.host_bytes(), "{what}");
        assert_eq!(step.ffn_chunk(), plan.ffn_chunk(), "{what}");
        assert_eq!(
            plan.ffn_chunk(),
            ffn.unwrap_or(plan.ffn_chunk()).min(rows * seq_len)
        );
        // The workspace holds A/B, dA/dB and the layer inputs besides the packed arena.
        let n = set.n_params();
        let x = cfg.n_layer * rows * seq_len * cfg.dim;
        assert!(plan.workspace_bytes() >= 4 * (2 * n + x), "{what}");
    }
    // A zero FFN chunk and slots of another model are refused.
    let set = lora_set(&cfg, false, 1);
    let mut shape = DeviceShape::for_set(&set, 1, 8, 4, false).unwrap();
    shape.ffn_chunk = Some(0);
    assert!(plan_device_step(&cfg, &shape).is_err());
    shape.ffn_chunk = None;
    shape.slots.pop();
    let e = plan_device_step(&cfg, &shape).unwrap_err().to_string();
    assert!(e.contains("slots"), "{e}");
}

/// The trainer holds exactly the planned bytes against the budget, and they are the bytes
/// the engine's step allocated: without a budget the whole micro-batch as the FFN chunk, under
/// one the largest chunk that fits (a budget of the smallest workspace's total included).
#[test]
fn the_trainer_plans_the_device_step_it_builds() {
    use edgetune::train::Trainer;
    use edgetune::train::engine::Device;
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = train_support::write_fixture(dir.path(), "q8_0", 20);
    let file = GgufFile::open(&model).unwrap();
    let llama = Llama::load(&file).unwrap();
    let mut cfg = train_support::config(&model, &data, &dir.path().join("run"), 2);
    cfg.accum = 2;
    let tokens = cfg.batch * cfg.seq_len;
    let chunk = cfg.ce_chunk.min(tokens);
    // The smallest device plan's total (or the CPU plan's, which Trainer::new holds to the
    // budget first, if larger), as a budget that the whole-batch FFN chunk may not meet.
    let tight = {
        let t = Trainer::new(&file, &cfg).unwrap();
        let (cpu_total, cpu_arena) = (t.planned_bytes(), t.train_step().arena_bytes() as u64);
        let shape = DeviceShape::lora(llama.config(), &cfg, chunk);
        let smallest = plan_device_step(llama.config(), &shape).unwrap();
        smallest
            .total_in_place_of(cpu_total, cpu_arena, true)
            .max(cpu_total)
    };
    for budget in [None, Some(1u64 << 40), Some(tight)] {
        cfg.budget_bytes = budget;
        let mut t = Trainer::new(&file, &cfg).unwrap();
        let (cpu_total, cpu_arena) = (t.planned_bytes(), t.train_step().arena_bytes() as u64);
        let shape =
            DeviceShape::for_set(t.adapters(), cfg.batch, cfg.seq_len, chunk, true).unwrap();
        assert_eq!(shape, DeviceShape::lora(llama.config(), &cfg, chunk));
        let plan = plan_device_step_within(llama.config(), &shape, |p| {
            budget.is_none_or(|b| p.total_in_place_of(cpu_total, cpu_arena, true) <= b)
        })
        .unwrap();
        if budget != Some(tight) {
            assert_eq!(plan.ffn_chunk(), tokens, "{budget:?}");
        }
        t.use_device(&file, Device::CpuDeviceStep).unwrap();
        assert_eq!(t.device_bytes(), plan.workspace_bytes(), "{budget:?}");
        let want = cpu_total - cpu_arena + (plan.workspace_bytes() + plan.host_bytes()) as u64;
        assert_eq!(t.planned_bytes(), want);
        assert_eq!(plan.total_in_place_of(cpu_total, cpu_arena, true), want);
        assert!(t.step().unwrap().is_some());
    }
}

/// [`device_step_support::device_step`] with an explicit FFN chunk.
fn device_step_chunked(llama: &Llama<'_>, set: &AdapterSet, ffn: Option<usize>) -> StepResult {
    let m = llama.backend_model();
    let batches = two_micro_batches(m.config.n_vocab);
    let mut shape = DeviceShape::for_set(set, ROWS, SEQ, CHUNK, true).unwrap();
    shape.ffn_chunk = ffn;
    let mut step = DeviceStep::with_shape(m, set, &shape).unwrap();
    let scale = loss_scale(&batches);
    let losses = batches
        .iter()
        .enumerate()
        .map(|(i, b)| step.micro_batch(m, b, scale, i == 0).unwrap())
        .collect();
    let grads = (0..m.config.n_layer * 7)
        .map(|s| step.grads_mut(&CpuBackend, s / 7, s % 7).unwrap().to_vec())
        .collect();
    StepResult { losses, grads }
}

#[test]
fn ffn_row_chunks_match_the_train_step() {
    // 32 tokens in chunks of 1, 5 (a partial last chunk), 16 and 32 (one chunk), and the
    // automatic choice: the same loss and gradients as the CPU TrainStep.
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let llama = Llama::load(&file).unwrap();
    let set = lora_set(llama.config(), true, 9);
    let batches = two_micro_batches(llama.config().n_vocab);
    let want = train_step(&llama, &set, &batches, true);
    for ffn in [Some(1), Some(5), Some(16), Some(32), None] {
        let got = device_step_chunked(&llama, &set, ffn);
        let (loss, grad) = compare(&got, &want);
        eprintln!("FFN chunk {ffn:?}: loss rel {loss:.2e}, grad rel RMS {grad:.2e}");
        assert!(loss < 1e-5, "{ffn:?}: loss relative difference {loss:.2e}");
        assert!(grad < 1e-4, "{ffn:?}: gradient relative RMS {grad:.2e}");
    }
}

#[test]
fn gradient_writes_reach_the_device_gradients() {
    // What the optimizer's clipping does: scale one slot through grads_mut, read others, come
    // back: the scaled values. Zero a slot, then accumulate a second micro-batch: that slot
    // holds the second micro-batch's gradient alone.
    let dir = tempfile::tempdir().unwrap();
    let file = tiny(dir.path());
    let llama = Llama::load(&file).unwrap();
    let m = llama.backend_model();
    let set = lora_set(llama.config(), false, 4);
    let batches = two_micro_batches(m.config.n_vocab);
    let mut shape = DeviceShape::for_set(&set, ROWS, SEQ, CHUNK, true).unwrap();
    shape.ffn_chunk = Some(7);
    let mut step = DeviceStep::with_shape(m, &set, &shape).unwrap();
    let be = CpuBackend;
    step.micro_batch(m, &batches[0], 0.5, true).unwrap();
    let g6 = step.grads(&be, 1, 6).unwrap().to_vec();
    step.grads_mut(&be, 1, 6)
        .unwrap()
        .iter_mut()
        .for_each(|g| *g *= 3.0);
    let g0 = step.grads(&be, 0, 0).unwrap().to_vec();
    assert!(g0.iter().any(|v| *v != 0.0));
    let back: Vec<f32> = step.grads(&be, 1, 6).unwrap().to_vec();
    assert_eq!(back, g6.iter().map(|g| g * 3.0).collect::<Vec<_>>());
    // Read-only access sends nothing back: a write into a copy is not visible.
    assert_eq!(step.grads(&be, 0, 0).unwrap(), &g0[..]);

    step.grads_mut(&be, 0, 3).unwrap().fill(0.0);
    step.micro_batch(m, &batches[1], 0.5, false).unwrap();
    let second_after_zero = step.grads(&be, 0, 3).unwrap().to_vec();
    let mut alone = DeviceStep::with_shape(m, &set, &shape).unwrap();
    alone.micro_batch(m, &batches[1], 0.5, true).unwrap();
    let want = alone.grads(&be, 0, 3).unwrap().to_vec();
    let e = device_step_support::rel_rms(&second_after_zero, &want);
    assert!(e < 1e-6, "relative RMS {e:.2e}");
    assert!(want.iter().any(|v| *v != 0.0));
}
