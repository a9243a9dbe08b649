//! IEC, MT-LoRA and ResLoRA inside the real training step ([`TrainStep`] over the tiny test
//! model, gradient checkpointing on): a few Adam steps on one fixed batch, and the loss falls.
//! MT-LoRA is routed the way the trainer must route it: `set_row_tasks(batch.tasks, seq_len)`
//! on every MT-LoRA adapter before each micro-batch. ResLoRA runs with the step's cross-layer
//! plumbing (crates/edgetune-train/src/train/step_reslora.rs), whose gradients are checked here against directional
//! central differences of the step's own loss (F32 weights) and between checkpointing on and
//! off.

use edgetune::adapters::iec::Iec;
use edgetune::adapters::mtlora::{MtLora, MtLoraConfig};
use edgetune::adapters::reslora::ResLora;
use edgetune::adapters::{Adapter, LoraConfig, Target};
use edgetune::data::{Batch, IGNORE};
use edgetune::gguf::GgufFile;
use edgetune::model::{Llama, LlamaConfig};
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::{AdapterSet, TrainStep, target_shape};
use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::train_support;

const SEQ: usize = 16;
const ROWS: usize = 2;

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    }
}

/// The step's shape over `set`: ROWS rows of SEQ tokens, the loss in chunks of 8.
fn shape(set: &AdapterSet, checkpointing: bool) -> edgetune::train::plan_llama::TrainShape {
    train_support::step_shape(set, SEQ, ROWS, 8, checkpointing)
}

/// The tiny test model (seed 5) with weights of type `ty`, written to `dir/m.gguf` and opened.
fn tiny_model(ty: &str) -> (tempfile::TempDir, GgufFile) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::parse(ty).unwrap(), 5, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    (dir, file)
}

/// The gradients `step` holds, slot by slot in `set`'s order.
fn grads(step: &mut TrainStep, set: &AdapterSet) -> Vec<Vec<f32>> {
    set.iter()
        .map(|(l, t, _)| {
            let ti = Target::ALL.iter().position(|&x| x == t).unwrap();
            step.grads_mut(l, ti).unwrap().to_vec()
        })
        .collect()
}

/// MT-LoRA with two tasks `a` and `b` of rank 2 over the shared [`lora`].
fn mtlora_config() -> MtLoraConfig {
    MtLoraConfig {
        shared: lora(),
        task_rank: 2,
        task_alpha: 4.0,
        tasks: vec!["a".into(), "b".into()],
    }
}

/// Two rows of random tokens (labels = ids, first ignored); row tasks 0 and 1.
fn batch(vocab: usize) -> Batch {
    let mut b = Batch::new(ROWS, SEQ);
    let mut rng = StdRng::seed_from_u64(3);
    for k in 0..ROWS * SEQ {
        b.ids[k] = rng.random_range(0..vocab as u32);
        b.positions[k] = (k % SEQ) as u32;
        b.labels[k] = if k % SEQ == 0 {
            IGNORE
        } else {
            b.ids[k] as i32
        };
    }
    b.rows = ROWS;
    b.tasks = vec![0, 1];
    b.n_targets = TrainStep::count_targets(&b);
    b
}

/// Runs `steps` Adam steps (lr 1e-2) on one batch; returns the mean losses.
fn train(make: &dyn Fn(usize, usize, u64) -> Box<dyn Adapter>, steps: usize) -> Vec<f64> {
    let (_dir, file) = tiny_model("q8_0");
    let llama = Llama::load(&file).unwrap();
    let cfg: LlamaConfig = llama.config().clone();
    let mut set = AdapterSet::empty(cfg.n_layer, lora());
    for layer in 0..cfg.n_layer {
        for t in Target::ALL {
            let (fin, fout) = target_shape(&cfg, t);
            set.insert(layer, t, make(fin, fout, (layer * 7) as u64 + 1))
                .unwrap();
        }
    }
    let shape = shape(&set, true);
    let mut step = TrainStep::new(llama.backend_model(), &set, shape).unwrap();
    let b = batch(cfg.n_vocab);
    let (lr, b1, b2) = (1e-2f32, 0.9f32, 0.999f32);
    let mut moments: Vec<(Vec<f32>, Vec<f32>)> = set
        .iter()
        .map(|(_, _, a)| (vec![0.0; a.n_params()], vec![0.0; a.n_params()]))
        .collect();
    let mut losses = Vec::new();
    for it in 0..steps {
        for (_, _, a) in set.iter_mut() {
            if let Some(m) = a.downcast_mut::<MtLora>() {
                m.set_row_tasks(&b.tasks, b.seq_len).unwrap();
            }
        }
        let loss = step
            .micro_batch(
                llama.backend_model(),
                &set,
                &b,
                1.0 / b.n_targets as f32,
                true,
                it as u64,
            )
            .unwrap();
        losses.push(loss / b.n_targets as f64);
        let slots: Vec<(usize, Target)> = set.iter().map(|(l, t, _)| (l, t)).collect();
        for (k, (layer, t)) in slots.into_iter().enumerate() {
            let ti = Target::ALL.iter().position(|&x| x == t).unwrap();
            let g = step.grads_mut(layer, ti).unwrap().to_vec();
            let (m, v) = &mut moments[k];
            let a = set.get_mut(layer, t).unwrap();
            let mut off = 0;
            let bc1 = 1.0 - b1.powi(it as i32 + 1);
            let bc2 = 1.0 - b2.powi(it as i32 + 1);
            for p in 0..a.params().len() {
                let w = a.param_mut(p).unwrap();
                for (j, wv) in w.iter_mut().enumerate() {
                    let i = off + j;
                    m[i] = b1 * m[i] + (1.0 - b1) * g[i];
                    v[i] = b2 * v[i] + (1.0 - b2) * g[i] * g[i];
                    *wv -= lr * (m[i] / bc1) / ((v[i] / bc2).sqrt() + 1e-8);
                }
                off += w.len();
            }
        }
    }
    losses
}

fn assert_falls(name: &str, losses: &[f64]) {
    let (first, last) = (losses[0], *losses.last().unwrap());
    eprintln!("{name}: loss {first:.4} → {last:.4} ({losses:.4?})");
    assert!(last < first - 0.05, "{name}: {first} → {last}");
}

#[test]
fn iec_trains_in_the_step() {
    let losses = train(
        &|fin, fout, seed| Box::new(Iec::new(fin, fout, &lora(), seed).unwrap()),
        8,
    );
    assert_falls("IEC", &losses);
}

#[test]
fn mtlora_trains_in_the_step_with_rows_routed_by_task() {
    let cfg = mtlora_config();
    let losses = train(
        &|fin, fout, seed| Box::new(MtLora::new(fin, fout, &cfg, seed).unwrap()),
        8,
    );
    assert_falls("MT-LoRA", &losses);
}

#[test]
fn reslora_trains_in_the_step_with_the_previous_layers_input() {
    let losses = train(
        &|fin, fout, seed| Box::new(ResLora::new(fin, fout, &lora(), 100, seed).unwrap()),
        8,
    );
    assert_falls("ResLoRA", &losses);
}

/// The step over an F32 tiny model with ResLoRA on every target (`B` random, so every path
/// carries gradient): returns (model file dir, gradients per slot, the step's mean loss).
struct ResRun {
    llama_dir: tempfile::TempDir,
    set: AdapterSet,
    grads: Vec<Vec<f32>>,
    loss: f64,
    reslora_bytes: usize,
}

fn reslora_set(cfg: &LlamaConfig) -> AdapterSet {
    let mut set = AdapterSet::empty(cfg.n_layer, lora());
    let mut rng = StdRng::seed_from_u64(11);
    for layer in 0..cfg.n_layer {
        for t in Target::ALL {
            let (fin, fout) = target_shape(cfg, t);
            let mut r = ResLora::new(fin, fout, &lora(), 100, (layer * 7) as u64 + 1).unwrap();
            // Large B: the branches (and so the cross-layer path) carry much of the gradient.
            for v in r.param_mut(1).unwrap() {
                *v = rng.random_range(-0.5..0.5);
            }
            set.insert(layer, t, Box::new(r)).unwrap();
        }
    }
    set
}

fn reslora_step(ckpt: bool) -> ResRun {
    let (dir, file) = tiny_model("f32");
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let set = reslora_set(&cfg);
    let shape = shape(&set, ckpt);
    let mut step = TrainStep::new(llama.backend_model(), &set, shape).unwrap();
    let b = batch(cfg.n_vocab);
    let scale = 1.0 / b.n_targets as f32;
    let loss = step
        .micro_batch(llama.backend_model(), &set, &b, scale, true, 0)
        .unwrap()
        / b.n_targets as f64;
    let grads = grads(&mut step, &set);
    let reslora_bytes = step.reslora_bytes();
    drop(step);
    drop(llama);
    ResRun {
        llama_dir: dir,
        set,
        grads,
        loss,
        reslora_bytes,
    }
}

#[test]
fn reslora_step_gradients_match_directional_differences_and_checkpointing() {
    let run = reslora_step(true);
    let plain = reslora_step(false);
    assert!(run.reslora_bytes > 0);
    // Checkpointing recomputes with the stored inputs: same gradients.
    assert!((run.loss - plain.loss).abs() < 1e-6 * run.loss);
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in run.grads.iter().zip(&plain.grads) {
        for (x, y) in a.iter().zip(b) {
            num += ((x - y) as f64).powi(2);
            den += (*y as f64).powi(2);
        }
    }
    assert!(
        (num / den).sqrt() < 1e-5,
        "checkpointing changes the gradients"
    );

    let path = run.llama_dir.path().join("m.gguf");
    let file = GgufFile::open(&path).unwrap();
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let b = batch(cfg.n_vocab);
    let mut set = run.set;
    let shape = shape(&set, true);
    let mut step = TrainStep::new(llama.backend_model(), &set, shape).unwrap();
    // Directions: the whole gradient, and only layer 0's part (what the cross-layer pending
    // gradient of layer 1 feeds).
    let slots: Vec<(usize, Target)> = set.iter().map(|(l, t, _)| (l, t)).collect();
    for only_layer0 in [false, true] {
        let dir: Vec<Vec<f32>> = run
            .grads
            .iter()
            .zip(&slots)
            .map(|(g, &(l, _))| {
                if only_layer0 && l != 0 {
                    vec![0.0; g.len()]
                } else {
                    g.clone()
                }
            })
            .collect();
        let norm = dir
            .iter()
            .flatten()
            .map(|&v| (v as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let eps = 1e-3 / norm; // a step of 1e-3 along the unit direction
        let mut at = |k: f64| {
            for (d, &(l, t)) in dir.iter().zip(&slots) {
                let a = set.get_mut(l, t).unwrap();
                let mut off = 0;
                for p in 0..a.params().len() {
                    let w = a.param_mut(p).unwrap();
                    for (j, v) in w.iter_mut().enumerate() {
                        *v += (k * d[off + j] as f64) as f32;
                    }
                    off += w.len();
                }
            }
            let (sum, count) = step.eval_loss(llama.backend_model(), &set, &b).unwrap();
            sum / count as f64
        };
        let up = at(eps);
        let down = at(-2.0 * eps);
        at(eps);
        // d/dk L(θ + k·g) at 0 is ‖g‖² when g is the true gradient.
        let fd = (up - down) / (2.0 * eps);
        let rel = (fd - norm * norm).abs() / (norm * norm);
        eprintln!(
            "ResLoRA step, layer-0 only {only_layer0}: ‖g‖² {:.6e} vs fd {fd:.6e} (rel {rel:.2e})",
            norm * norm
        );
        assert!(
            rel < 5e-3,
            "directional derivative {fd} vs ‖g‖² {}",
            norm * norm
        );
    }
}

/// One micro-batch of an MT-LoRA set (random `B`) with task `weights` (empty: plain loss):
/// `(Σ loss, gradients per slot, per-task losses)`.
#[allow(clippy::type_complexity)]
fn mtlora_step(weights: &[f32]) -> (f64, Vec<Vec<f32>>, Vec<(f64, usize)>) {
    let (_dir, file) = tiny_model("f32");
    let llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let mc = mtlora_config();
    let mut set = AdapterSet::empty(cfg.n_layer, lora());
    let mut rng = StdRng::seed_from_u64(5);
    for layer in 0..cfg.n_layer {
        for t in [Target::AttnQ, Target::FfnDown] {
            let (fin, fout) = target_shape(&cfg, t);
            let mut m = MtLora::new(fin, fout, &mc, layer as u64 + 1).unwrap();
            for p in [1, 3, 5] {
                for v in m.param_mut(p).unwrap() {
                    *v = rng.random_range(-0.1..0.1);
                }
            }
            set.insert(layer, t, Box::new(m)).unwrap();
        }
    }
    let shape = shape(&set, true);
    let mut step = TrainStep::new(llama.backend_model(), &set, shape).unwrap();
    step.set_task_weights(weights).unwrap();
    let b = batch(cfg.n_vocab);
    for (_, _, a) in set.iter_mut() {
        a.downcast_mut::<MtLora>()
            .unwrap()
            .set_row_tasks(&b.tasks, SEQ)
            .unwrap();
    }
    let loss = step
        .micro_batch(llama.backend_model(), &set, &b, 1.0, true, 0)
        .unwrap();
    let grads = grads(&mut step, &set);
    (loss, grads, step.task_losses().to_vec())
}

#[test]
fn multitask_loss_weights_scale_each_tasks_rows_and_report_per_task_losses() {
    let (plain_loss, plain, none) = mtlora_step(&[]);
    assert!(none.is_empty());
    let (loss, ones, per_task) = mtlora_step(&[1.0, 1.0]);
    assert!((loss - plain_loss).abs() < 1e-9 * plain_loss);
    let b = batch(TINY.n_vocab);
    let counted: usize = per_task.iter().map(|p| p.1).sum();
    assert_eq!(counted, b.n_targets);
    assert!(per_task.iter().all(|p| p.1 > 0 && p.0 > 0.0));
    let summed: f64 = per_task.iter().map(|p| p.0).sum();
    assert!((summed - loss).abs() < 1e-9 * loss);
    let close = |x: &[Vec<f32>], y: &[Vec<f32>], k: f32, what: &str| {
        for (a, b) in x.iter().flatten().zip(y.iter().flatten()) {
            assert!(
                (a - k * b).abs() <= 1e-4 * (k * b).abs().max(1e-3),
                "{what}: {a} vs {}",
                k * b
            );
        }
    };
    close(&ones, &plain, 1.0, "weights 1 = plain");
    // Linear in the weights: w = (1, 0) plus w = (0, 1) gives w = (1, 1); w = (2, 2) doubles.
    let (_, g0, _) = mtlora_step(&[1.0, 0.0]);
    let (_, g1, _) = mtlora_step(&[0.0, 1.0]);
    let sum: Vec<Vec<f32>> = g0
        .iter()
        .zip(&g1)
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x + y).collect())
        .collect();
    close(&sum, &ones, 1.0, "w0 + w1");
    let (_, twice, _) = mtlora_step(&[2.0, 2.0]);
    close(&twice, &ones, 2.0, "w = 2");
    // Only task 0's rows in the loss: task 1's factors (the last r_t·(in + out) values of a
    // slot's [A_sh, B_sh, A_0, B_0, A_1, B_1] = 8·(in + out) values) get exactly zero.
    for (a, b) in g0.iter().zip(&g1) {
        let tail = a.len() / 4;
        assert!(a[a.len() - tail..].iter().all(|&v| v == 0.0));
        assert!(b[b.len() - tail..].iter().any(|&v| v != 0.0));
        let task0 = &a[a.len() - 2 * tail..a.len() - tail];
        assert!(task0.iter().any(|&v| v != 0.0));
    }
}
