//! The training step's forward and the inference forward with adapters attached
//! (`Llama::set_adapters`) are two separate code paths over the same maths: on the same tokens
//! and the same trained-looking adapters (nonzero `B`) their mean next-token losses agree to
//! f32 rounding, and attaching the adapters changes the loss (they are really applied).

use std::sync::Arc;

use edgetune::adapters::LoraConfig;
use edgetune::data::Batch;
use edgetune::gguf::GgufFile;
use edgetune::infer::perplexity;
use edgetune::model::Llama;
use edgetune::testmodel::{self, TINY, WeightTypes};
use edgetune::train::{AdapterSet, TrainStep};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[test]
fn training_forward_and_inference_with_adapters_agree() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    testmodel::write_test_model(&TINY, WeightTypes::parse("q4_k").unwrap(), 2, &path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let mut llama = Llama::load(&file).unwrap();
    let cfg = llama.config().clone();
    let lc = LoraConfig {
        rank: 8,
        alpha: 16.0,
        rslora: true,
        ..LoraConfig::default()
    };
    let mut set = AdapterSet::new_lora(&cfg, &lc, 4).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    for (_, _, a) in set.iter_mut() {
        for v in a.param_mut(1).unwrap() {
            *v = rng.random_range(-0.1..0.1);
        }
    }
    let n = 40;
    let tokens: Vec<u32> = (0..n)
        .map(|_| rng.random_range(0..cfg.n_vocab as u32))
        .collect();
    let mut batch = Batch::new(1, n);
    batch.ids.copy_from_slice(&tokens);
    for (i, &t) in tokens.iter().enumerate() {
        batch.positions[i] = i as u32;
        batch.labels[i] = if i == 0 { -100 } else { t as i32 };
    }
    batch.rows = 1;
    let shape = crate::train_support::step_shape(&set, n, 1, 7, true);
    let mut step = TrainStep::new(llama.backend_model(), &set, shape).unwrap();
    let (sum, count) = step.eval_loss(llama.backend_model(), &set, &batch).unwrap();
    assert_eq!(count, n - 1);
    let train_mean = sum / count as f64;

    let base = perplexity(&llama, &tokens, |_, _| Ok(())).unwrap().mean_nll;
    llama.set_adapters(Some(Arc::new(set))).unwrap();
    let adapted = perplexity(&llama, &tokens, |_, _| Ok(())).unwrap().mean_nll;
    let rel = (adapted - train_mean).abs() / train_mean;
    assert!(
        rel < 1e-5,
        "inference {adapted} vs training {train_mean} (rel {rel:.1e})"
    );
    assert!(
        (adapted - base).abs() > 1e-3,
        "the adapters changed nothing: {base} vs {adapted}"
    );
}
