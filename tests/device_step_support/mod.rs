//! Shared by the `DeviceStep` tests (tests/train_device/step.rs on the CPU backend,
//! tests/cuda_parity/step.rs on CUDA): the packed micro-batches, a LoRA set whose `B` is
//! nonzero (so every gradient path is live), and one accumulated step run through the CPU
//! `TrainStep` (the reference) or through `DeviceStep<B>`.
#![allow(dead_code)]

use edgetune::adapters::LoraConfig;
use edgetune::backend::Backend;
use edgetune::data::{Batch, IGNORE};
use edgetune::model::{BackendModel, Llama, LlamaConfig};
use edgetune::train::plan_llama::TrainShape;
use edgetune::train::step::adapter_shapes;
use edgetune::train::{AdapterSet, DeviceStep, TrainStep};
use rand::{Rng, SeedableRng, rngs::StdRng};

pub const SEQ: usize = 16;
pub const ROWS: usize = 2;
pub const CHUNK: usize = 5;

/// A LoRA (or rsLoRA) set with `B` ~ U(±0.05).
pub fn lora_set(cfg: &LlamaConfig, rslora: bool, seed: u64) -> AdapterSet {
    let lc = LoraConfig {
        rank: 4,
        alpha: 8.0,
        rslora,
        ..LoraConfig::default()
    };
    let mut set = AdapterSet::new_lora(cfg, &lc, seed).unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xB);
    for (_, _, a) in set.iter_mut() {
        for v in a.param_mut(1).unwrap() {
            *v = rng.random_range(-0.05..0.05);
        }
    }
    set
}

/// `ROWS × SEQ` tokens, each row packed with the examples of `lens[r]` (each ≥ 2 tokens,
/// positions restarting at 0) and padded to `SEQ` (pad positions 0, labels ignored); the
/// first label of every example and every 5th token's label are ignored too.
pub fn packed_batch(lens: [&[usize]; ROWS], vocab: usize, seed: u64) -> Batch {
    let mut b = Batch::new(ROWS, SEQ);
    let mut rng = StdRng::seed_from_u64(seed);
    for (r, lens) in lens.iter().enumerate() {
        let mut i = 0;
        for &len in lens.iter() {
            for p in 0..len {
                let k = r * SEQ + i;
                b.ids[k] = rng.random_range(0..vocab as u32);
                b.positions[k] = p as u32;
                b.labels[k] = if p == 0 || k % 5 == 4 {
                    IGNORE
                } else {
                    b.ids[k] as i32
                };
                i += 1;
            }
        }
        assert!(i <= SEQ, "row {r}: examples longer than the row");
        for k in r * SEQ + i..(r + 1) * SEQ {
            (b.ids[k], b.positions[k], b.labels[k]) = (0, 0, IGNORE);
        }
    }
    b.rows = ROWS;
    b.n_targets = TrainStep::count_targets(&b);
    b
}

/// Two micro-batches with several segments per row and trailing padding.
pub fn two_micro_batches(vocab: usize) -> Vec<Batch> {
    vec![
        packed_batch([&[5, 7, 4], &[6, 6]], vocab, 1),
        packed_batch([&[3, 9, 2], &[16]], vocab, 2),
    ]
}

/// `1 / Σ targets` over the step's micro-batches.
pub fn loss_scale(batches: &[Batch]) -> f32 {
    let n: usize = batches.iter().map(TrainStep::count_targets).sum();
    1.0 / n as f32
}

/// Per-micro-batch `Σ loss` and every slot's gradient (`layer · 7 + target`, empty when
/// unadapted) after the accumulated step.
pub struct StepResult {
    pub losses: Vec<f64>,
    pub grads: Vec<Vec<f32>>,
}

/// The reference: the CPU `TrainStep` (with or without checkpointing).
pub fn train_step(
    llama: &Llama<'_>,
    set: &AdapterSet,
    batches: &[Batch],
    ckpt: bool,
) -> StepResult {
    let shape = TrainShape {
        accumulate: true,
        ..TrainShape::plain(SEQ, ROWS, CHUNK, ckpt, adapter_shapes(set))
    };
    let m = llama.backend_model();
    let mut step = TrainStep::new(m, set, shape).unwrap();
    let scale = loss_scale(batches);
    let losses = batches
        .iter()
        .enumerate()
        .map(|(i, b)| step.micro_batch(m, set, b, scale, i == 0, 0).unwrap())
        .collect();
    let n_layer = m.config.n_layer;
    let grads = (0..n_layer * 7)
        .map(|s| step.grads_mut(s / 7, s % 7).unwrap().to_vec())
        .collect();
    StepResult { losses, grads }
}

/// The same step through `DeviceStep<B>` on `model`.
pub fn device_step<B: Backend>(
    model: &BackendModel<'_, B>,
    set: &AdapterSet,
    batches: &[Batch],
) -> StepResult {
    let mut step = DeviceStep::new(model, set, ROWS, SEQ, CHUNK, true).unwrap();
    let scale = loss_scale(batches);
    let losses = batches
        .iter()
        .enumerate()
        .map(|(i, b)| step.micro_batch(model, b, scale, i == 0).unwrap())
        .collect();
    let n_layer = model.config.n_layer;
    let grads = (0..n_layer * 7)
        .map(|s| {
            step.grads_mut(&model.backend, s / 7, s % 7)
                .unwrap()
                .to_vec()
        })
        .collect();
    StepResult { losses, grads }
}

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Worst loss (relative) and gradient (relative RMS per slot) differences of `got` from
/// `want`; checks that every adapted slot has a nonzero gradient (no vacuous comparison).
pub fn compare(got: &StepResult, want: &StepResult) -> (f64, f64) {
    assert_eq!(got.losses.len(), want.losses.len());
    let loss = got
        .losses
        .iter()
        .zip(&want.losses)
        .map(|(g, w)| ((g - w) / w).abs())
        .fold(0.0, f64::max);
    let mut grad = 0.0f64;
    for (s, (g, w)) in got.grads.iter().zip(&want.grads).enumerate() {
        assert_eq!(g.len(), w.len(), "slot {s}: gradient lengths");
        if w.is_empty() {
            continue;
        }
        assert!(
            w.iter().any(|v| *v != 0.0),
            "slot {s}: zero reference gradient"
        );
        grad = grad.max(rel_rms(g, w));
    }
    (loss, grad)
}
