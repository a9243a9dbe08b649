//! Whole-model LoRA gradients of the training step against the independent f64 reference
//! (tests/reference, docs/FORMATS.md#llama-metadata-and-tensors): the loss, and central differences
//! of the reference loss with respect to sampled entries of every adapter's `A` and `B`.
//!
//! The reference applies LoRA by merging: `W' = W + s·B·A` (exactly the branch's effect on
//! the output, `x·W'ᵀ = x·Wᵀ + s·(x·Aᵀ)·Bᵀ`), then runs its plain forward and a plain
//! next-token cross-entropy in f64. `B` is seeded nonzero, so every gradient path is live.
//!
//! Tolerance. Central differences in f64 with step 1e-4 have truncation error O(ε²·f''') ≈
//! 1e-8 and rounding error ≈ 1e-16/ε = 1e-12: exact to far below our f32 error. Our gradients
//! run in f32 through 2 layers forward and backward (~6e-8 relative rounding per operation,
//! dot products of ≤ 512 terms, softmax and RMSNorm backward), ~1e-5 relative on the gradient
//! vector; we require ‖g − g_fd‖ / ‖g_fd‖ ≤ 1e-4 over the sampled entries on F32 weights (the
//! issue's bound). Quantized weights (Q8_0 here) change nothing in this argument: the
//! reference dequantizes exactly the blocks we read, so the same bound applies, and it is
//! checked too. The KL anchor (`--kl-anchor`: `+ λ·KL(p_base ‖ p)` on replay rows, `p_base`
//! from the model without adapters) is checked the same way, its reference computing `p_base`
//! with the unmerged weights.

use edgetune::adapters::{LoraConfig, Target};
use edgetune::backend::CpuBackend;
use edgetune::data::{Batch, IGNORE};
use edgetune::gguf::GgufFile;
use edgetune::model::{BackendModel, Llama};
use edgetune::quant::{Compute, GgmlType};
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::plan_llama::TrainShape;
use edgetune::train::{AdapterSet, TrainStep, target_shape};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::reference::{RefModel, load, reference_logits};

const SEQ: usize = 12;

fn lora_cfg() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    }
}

/// A fresh LoRA set with `B` ~ U(±0.05) so that every path carries gradient.
fn adapters(cfg: &edgetune::model::LlamaConfig, seed: u64) -> AdapterSet {
    let mut set = AdapterSet::new_lora(cfg, &lora_cfg(), seed).unwrap();
    let mut rng = StdRng::seed_from_u64(seed ^ 0xB);
    for (_, _, a) in set.iter_mut() {
        for v in a.param_mut(1).unwrap() {
            *v = rng.random_range(-0.05..0.05);
        }
    }
    set
}

fn shape(
    set: &AdapterSet,
    rows: usize,
    ckpt: bool,
    accumulate: bool,
    checkpoint_bf16: bool,
) -> TrainShape {
    TrainShape {
        accumulate,
        checkpoint_bf16,
        ..crate::train_support::step_shape(set, SEQ, rows, 5, ckpt)
    }
}

/// One row of SEQ tokens: two packed examples (7 + 5 tokens) or one, labels with a few
/// ignored, positions restarting at each example.
fn batch(rows: usize, packed: bool, vocab: usize, seed: u64) -> Batch {
    let mut b = Batch::new(rows, SEQ);
    let mut rng = StdRng::seed_from_u64(seed);
    for r in 0..rows {
        for i in 0..SEQ {
            let k = r * SEQ + i;
            b.ids[k] = rng.random_range(0..vocab as u32);
            let pos = if packed && i >= 7 { i - 7 } else { i };
            b.positions[k] = pos as u32;
            b.labels[k] = if pos == 0 || i == 3 {
                IGNORE
            } else {
                b.ids[k] as i32
            };
        }
    }
    b.rows = rows;
    b.n_targets = TrainStep::count_targets(&b);
    b
}

/// Σ over examples of the reference's next-token NLL, with `set` merged into `m`, and with
/// the KL anchor `λ` (`kl`): on rows marked as replay, `+ λ·KL(p_base ‖ p)` per target, `p_base`
/// from the reference without the adapters. Returns `(Σ NLL, Σ λ·KL)`.
fn reference_loss(base: &RefModel, set: &AdapterSet, b: &Batch, kl: f64) -> (f64, f64) {
    let mut m = base.clone();
    for (l, t, a) in set.iter() {
        let (fan_in, fan_out) = (a.in_features(), a.out_features());
        let (aa, bb, s) = (a.param(0).unwrap(), a.param(1).unwrap(), a.scale() as f64);
        let r = aa.len() / fan_in;
        let lw = &mut m.layers[l];
        let w = match t {
            Target::AttnQ => &mut lw.wq,
            Target::AttnK => &mut lw.wk,
            Target::AttnV => &mut lw.wv,
            Target::AttnOutput => &mut lw.wo,
            Target::FfnGate => &mut lw.w_gate,
            Target::FfnUp => &mut lw.w_up,
            Target::FfnDown => &mut lw.w_down,
        };
        for o in 0..fan_out {
            for i in 0..fan_in {
                let d: f64 = (0..r)
                    .map(|k| bb[o * r + k] as f64 * aa[k * fan_in + i] as f64)
                    .sum();
                w[o * fan_in + i] += s * d;
            }
        }
    }
    let log_softmax = |row: &[f64]| -> Vec<f64> {
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        row.iter().map(|v| v - lse).collect()
    };
    let (mut total, mut anchor) = (0.0, 0.0);
    for r in 0..b.batch_size {
        let anchored = kl > 0.0 && b.replay_rows[r];
        let (ids, labels, pos) = b.row(r);
        // Split the row into examples at position 0.
        let mut starts: Vec<usize> = (0..SEQ).filter(|&i| pos[i] == 0).collect();
        starts.push(SEQ);
        for w in starts.windows(2) {
            let (s0, s1) = (w[0], w[1]);
            let logits = reference_logits(&m, &ids[s0..s1]);
            let base_logits = anchored.then(|| reference_logits(base, &ids[s0..s1]));
            for i in s0..s1 - 1 {
                let t = labels[i + 1];
                if t == IGNORE {
                    continue;
                }
                let lq = log_softmax(&logits[i - s0]);
                total -= lq[t as usize];
                if let Some(bl) = &base_logits {
                    let lp = log_softmax(&bl[i - s0]);
                    anchor += kl
                        * lp.iter()
                            .zip(&lq)
                            .map(|(p, q)| p.exp() * (p - q))
                            .sum::<f64>();
                }
            }
        }
    }
    (total, anchor)
}

fn check(types: WeightTypes, ckpt: bool, packed: bool, rows: usize) {
    check_with(types, ckpt, packed, rows, 0.0);
}

/// [`check`] with the KL anchor `kl` on the last row, marked as replay.
fn check_with(types: WeightTypes, ckpt: bool, packed: bool, rows: usize, kl: f64) {
    let (loss_rel, grad_rel) = measure(types, Compute::F32, ckpt, packed, rows, kl, false);
    assert!(loss_rel < 1e-5, "loss rel error {loss_rel:.2e}");
    assert!(grad_rel <= 1e-4, "‖g − g_fd‖/‖g_fd‖ = {grad_rel:.2e}");
}

/// The relative errors of the step's loss and LoRA gradients (over sampled entries of every
/// adapter) against the f64 reference, with the frozen projections' forward products in
/// `compute` arithmetic (the backward's `dy·W` is f32 either way), the layer checkpoints in
/// bf16 when `bf16`.
#[allow(clippy::too_many_arguments)]
fn measure(
    types: WeightTypes,
    compute: Compute,
    ckpt: bool,
    packed: bool,
    rows: usize,
    kl: f64,
    bf16: bool,
) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    testmodel::write_test_model(&TINY, types, 5, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let model =
        BackendModel::new(CpuBackend, &cfg, &llama.weights().with_compute(compute)).unwrap();
    let mut set = adapters(&cfg, 9);
    let mut b = batch(rows, packed, cfg.n_vocab, 3);
    b.replay_rows[rows - 1] = kl > 0.0;
    let n_targets = b.n_targets;
    let mut step = TrainStep::new(&model, &set, shape(&set, rows, ckpt, false, bf16)).unwrap();
    step.set_kl_anchor(kl as f32).unwrap();
    let loss = step
        .micro_batch(&model, &set, &b, 1.0 / n_targets as f32, true, 0)
        .unwrap();
    let base = load(&path);
    let (ref_loss, ref_kl) = reference_loss(&base, &set, &b, kl);
    if kl > 0.0 {
        // The step reports the cross-entropy and, apart, Σ KL over the anchored targets.
        let (sum, anchored) = step.last_kl().unwrap();
        assert!(anchored > 0 && ref_kl > 0.0);
        let rel = (kl * sum - ref_kl).abs() / ref_kl;
        assert!(
            rel < 1e-4,
            "λ·Σ KL {} vs reference {ref_kl} (rel {rel:.2e})",
            kl * sum
        );
    }
    let loss_rel = (loss - ref_loss).abs() / ref_loss;

    // Central differences of the mean loss on sampled entries of every tensor kind.
    let mut rng = StdRng::seed_from_u64(17);
    let (mut num, mut den) = (0f64, 0f64);
    let eps = 1e-4f32;
    for (ti, target) in Target::ALL.into_iter().enumerate() {
        for layer in 0..cfg.n_layer {
            let (fan_in, fan_out) = target_shape(&cfg, target);
            let grads = step.grads_mut(layer, ti).unwrap().to_vec();
            assert_eq!(grads.len(), 4 * (fan_in + fan_out));
            for _ in 0..3 {
                let (p, idx) = if rng.random_bool(0.5) {
                    (0, rng.random_range(0..4 * fan_in))
                } else {
                    (1, rng.random_range(0..4 * fan_out))
                };
                let ours = grads[if p == 0 { idx } else { 4 * fan_in + idx }] as f64;
                let orig = set.get(layer, target).unwrap().param(p).unwrap()[idx];
                let mut at = |v: f32| {
                    set.get_mut(layer, target).unwrap().param_mut(p).unwrap()[idx] = v;
                    let (nll, anchor) = reference_loss(&base, &set, &b, kl);
                    (nll + anchor) / n_targets as f64
                };
                // f32 parameters: the perturbation actually applied is (orig ± eps) − orig.
                let (up, down) = (orig + eps, orig - eps);
                let fd = (at(up) - at(down)) / (up as f64 - down as f64);
                at(orig);
                num += (ours - fd).powi(2);
                den += fd.powi(2);
            }
        }
    }
    let rel = (num / den).sqrt();
    eprintln!(
        "{}: loss {loss:.6} vs {ref_loss:.6}; gradient rel error {rel:.2e} (‖g_fd‖ = {:.3e})",
        compute.name(),
        den.sqrt()
    );
    (loss_rel, rel)
}

#[test]
fn lora_gradients_match_f64_central_differences_f32_checkpointed() {
    check(WeightTypes::Uniform(GgmlType::F32), true, false, 1);
}

#[test]
fn lora_gradients_match_f64_central_differences_packed_two_rows_no_checkpointing() {
    check(WeightTypes::Uniform(GgmlType::F32), false, true, 2);
}

#[test]
fn lora_gradients_match_f64_central_differences_q8_0() {
    check(WeightTypes::Uniform(GgmlType::Q8_0), true, true, 1);
}

#[test]
fn kl_anchor_gradients_match_f64_central_differences() {
    // Two rows, the second a replay row anchored with λ = 1.5 (its targets get the KL term,
    // the first row's do not); B is nonzero, so the anchor's gradient is live.
    check_with(WeightTypes::Uniform(GgmlType::F32), true, true, 2, 1.5);
}

/// The int8 forward through the frozen weights (`train --compute int8`, issue item 4): its
/// error against the f64 reference, beside f32's, on Q8_0 and Q4_0. Activations rounded to 8
/// bits per block put the loss and the gradients about 1e-3..1e-2 off (printed; bounded
/// loosely here: the bound that matters is the loss curve, README).
#[test]
fn int8_forward_gradients_against_f64() {
    for ty in [GgmlType::Q8_0, GgmlType::Q4_0] {
        let f = measure(
            WeightTypes::Uniform(ty),
            Compute::F32,
            true,
            true,
            1,
            0.0,
            false,
        );
        let i = measure(
            WeightTypes::Uniform(ty),
            Compute::Int8,
            true,
            true,
            1,
            0.0,
            false,
        );
        eprintln!(
            "{ty:?}: f32 loss {:.1e} gradient {:.1e}; int8 loss {:.1e} gradient {:.1e}",
            f.0, f.1, i.0, i.1
        );
        assert!(f.0 < 1e-5 && f.1 <= 1e-4, "{ty:?} f32 {f:?}");
        assert!(i.0 < 1e-2 && i.1 <= 0.1, "{ty:?} int8 {i:?}");
    }
}

/// bf16 layer checkpoints (`--checkpoint-dtype bf16`): the residual stream is rounded to bf16
/// where each layer begins (up to 2^-8 relative), so the loss and the gradients move off the f32
/// model (bounded loosely; a recompute from a stale or unpacked-wrong input would be far off).
/// The f32 run's errors are printed beside them: the rounding must show.
#[test]
fn bf16_checkpoint_gradients_against_f64() {
    let ty = WeightTypes::Uniform(GgmlType::F32);
    let f = measure(ty, Compute::F32, true, true, 2, 0.0, false);
    let b = measure(ty, Compute::F32, true, true, 2, 0.0, true);
    eprintln!(
        "f32 checkpoints: loss {:.1e} gradient {:.1e}; bf16: loss {:.1e} gradient {:.1e}",
        f.0, f.1, b.0, b.1
    );
    assert!(b.0 < 1e-3 && b.1 <= 2e-2, "bf16 {b:?}");
    assert!(
        b.0 > f.0,
        "the rounding must change the loss: {b:?} vs {f:?}"
    );
}
