//! Shared by the training tests: a seeded tiny model and a small synthetic IoT dataset on
//! disk, the training configuration over them, and comparison helpers (parameters, ΔW).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};

use edgetune::data::synth;
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::TrainConfig;
use edgetune::train::plan_llama::TrainShape;

/// Writes `dir/tiny.gguf` (weights of `ty`) and `dir/iot.jsonl` (`n` Alpaca examples).
pub fn write_fixture(dir: &Path, ty: &str, n: usize) -> (PathBuf, PathBuf) {
    let model = dir.join("tiny.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::parse(ty).unwrap(), 3, &model).unwrap();
    let data = dir.join("iot.jsonl");
    let (train, _) = synth::generate(5, n);
    let mut f = std::fs::File::create(&data).unwrap();
    for ex in &train {
        writeln!(f, "{}", serde_json::to_string(ex).unwrap()).unwrap();
    }
    (model, data)
}

/// A small run over the fixture.
pub fn config(model: &Path, data: &Path, out: &Path, steps: u64) -> TrainConfig {
    let mut cfg = TrainConfig {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        steps: Some(steps),
        seq_len: 256,
        batch: 2,
        lr: 1e-3,
        ce_chunk: 16,
        ..TrainConfig::default()
    };
    cfg.lora.rank = 4;
    cfg.lora.alpha = 8.0;
    cfg
}

/// The shape of a [`edgetune::train::TrainStep`] over `set`: rows of `seq_len` tokens, the
/// loss in chunks of `ce_chunk`, every memory lever but `checkpointing` off.
pub fn step_shape(
    set: &edgetune::train::AdapterSet,
    seq_len: usize,
    micro_batch: usize,
    ce_chunk: usize,
    checkpointing: bool,
) -> TrainShape {
    TrainShape::plain(
        seq_len,
        micro_batch,
        ce_chunk,
        checkpointing,
        edgetune::train::step::adapter_shapes(set),
    )
}

/// A pool of two threads (the training tests run their trainers in one).
pub fn two_threads() -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap()
}

/// `cfg` resuming its run (`resume: true`).
pub fn resuming(cfg: &TrainConfig) -> TrainConfig {
    TrainConfig {
        resume: true,
        ..cfg.clone()
    }
}

/// Steps `t` to the end of its run; returns the losses of its steps as bits.
pub fn loss_bits(t: &mut edgetune::train::Trainer) -> Vec<u64> {
    let mut bits = Vec::new();
    while let Some(p) = t.step().unwrap() {
        bits.push(p.loss.to_bits());
    }
    bits
}

/// Trains `cut` for two steps, checkpoints, and opens a trainer resuming it: returns the two
/// steps' losses as bits and the resumed trainer.
pub fn cut_and_resume<'f>(
    file: &'f edgetune::gguf::GgufFile,
    cut: &TrainConfig,
) -> (Vec<u64>, edgetune::train::Trainer<'f>) {
    let mut first = edgetune::train::Trainer::new(file, cut).unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(first.step().unwrap().unwrap().loss.to_bits());
    }
    first.checkpoint().unwrap();
    drop(first);
    let second = edgetune::train::Trainer::new(file, &resuming(cut)).unwrap();
    (got, second)
}

/// Every parameter of `set`, adapter by adapter in the set's order (for exact comparisons of
/// two runs).
pub fn all_params(set: &edgetune::train::AdapterSet) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for (_, _, a) in set.iter() {
        let mut i = 0;
        while let Some(p) = a.param(i) {
            out.push(p.to_vec());
            i += 1;
        }
    }
    out
}

/// The adapter's `ΔW` `[out, in]` (what its exports must reproduce).
pub fn delta_weight(a: &dyn edgetune::adapters::Adapter) -> Vec<f32> {
    let mut dw = vec![0.0; a.in_features() * a.out_features()];
    a.delta_weight(&mut dw).unwrap();
    dw
}

/// Writes `dir/nan.gguf`: the tiny model in F32 with one value of `blk.0.attn_q.weight` (row
/// 0, column 10) set to NaN (a model whose file is damaged).
pub fn write_nan_model(dir: &Path) -> PathBuf {
    let path = dir.join("nan.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::parse("f32").unwrap(), 3, &path).unwrap();
    let f = edgetune::gguf::GgufFile::open(&path).unwrap();
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    let at = (f.data_offset() + t.offset) as usize + 4 * 10;
    drop(f);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    path
}
