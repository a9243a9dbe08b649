//! IEC, MT-LoRA and ResLoRA inside the real training step ([`TrainStep`] over the tiny test
//! model, gradient checkpointing on): a few Adam steps on one fixed batch, and the loss falls.
//! MT-LoRA is routed the way the trainer must route it: `set_row_tasks(batch.tasks, seq_len)`
//! on every MT-LoRA adapter before each micro-batch. ResLoRA runs through the `Adapter` trait,
//! i.e. its layer-0 rule (`2·X`) in every layer (the cross-layer input needs step plumbing).

use edgetune::adapters::iec::Iec;
use edgetune::adapters::mtlora::{MtLora, MtLoraConfig};
use edgetune::adapters::reslora::ResLora;
use edgetune::adapters::{Adapter, LoraConfig, Target};
use edgetune::data::{Batch, IGNORE};
use edgetune::gguf::GgufFile;
use edgetune::memory::plan::TrainShape;
use edgetune::model::{Llama, LlamaConfig};
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::step::adapter_shapes;
use edgetune::train::{AdapterSet, TrainStep, target_shape};
use rand::{Rng, SeedableRng, rngs::StdRng};

const SEQ: usize = 16;
const ROWS: usize = 2;

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
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
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::parse("q8_0").unwrap(), 5, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
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
    let shape = TrainShape {
        seq_len: SEQ,
        micro_batch: ROWS,
        ce_chunk: 8,
        checkpointing: true,
        accumulate: false,
        optimizer_staging: false,
        adapters: adapter_shapes(&set),
    };
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
    let cfg = MtLoraConfig {
        shared: lora(),
        task_rank: 2,
        task_alpha: 4.0,
        tasks: vec!["a".into(), "b".into()],
    };
    let losses = train(
        &|fin, fout, seed| Box::new(MtLora::new(fin, fout, &cfg, seed).unwrap()),
        8,
    );
    assert_falls("MT-LoRA", &losses);
}

#[test]
fn reslora_trains_in_the_step_through_the_trait() {
    let losses = train(
        &|fin, fout, seed| Box::new(ResLora::new(fin, fout, &lora(), 100, seed).unwrap()),
        8,
    );
    assert_falls("ResLoRA", &losses);
}
