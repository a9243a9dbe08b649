//! Helpers of the export tests: adapter sets with non-zero `B` (PEFT init leaves it zero),
//! bitwise comparisons of sets, and hand-written safetensors files for the bad-input cases.
#![allow(dead_code)]

use std::path::Path;

use edgetune::adapters::{Adapter, Lora, LoraConfig, Target};
use edgetune::model::LlamaConfig;
use edgetune::train::AdapterSet;
use edgetune::train::adapter_set::target_shape;
use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::tensor::{Dtype, TensorView};

/// The tiny preset's config.
pub fn tiny_config() -> LlamaConfig {
    edgetune::testmodel::TINY.llama_config()
}

/// Fills every parameter of every adapter with seeded values of about `scale`.
pub fn randomize(set: &mut AdapterSet, seed: u64, scale: f32) {
    let mut rng = StdRng::seed_from_u64(seed);
    for (_, _, a) in set.iter_mut() {
        for i in 0..a.params().len() {
            for v in a.param_mut(i).unwrap() {
                *v = rng.random_range(-scale..scale);
            }
        }
    }
}

/// A LoRA set on `targets` of every layer with random `A` and `B`.
pub fn random_set(model: &LlamaConfig, cfg: &LoraConfig, seed: u64) -> AdapterSet {
    let mut set = AdapterSet::new_lora(model, cfg, seed).unwrap();
    randomize(&mut set, seed ^ 0x5eed, 0.05);
    set
}

/// Replaces the adapter on (`layer`, `target`) with a random one of rank `rank`.
pub fn put_rank(
    set: &mut AdapterSet,
    model: &LlamaConfig,
    layer: usize,
    target: Target,
    rank: usize,
) {
    let cfg = LoraConfig {
        rank,
        ..set.lora_config().clone()
    };
    let (i, o) = target_shape(model, target);
    let mut lora = Lora::new(i, o, &cfg, 99).unwrap();
    let mut rng = StdRng::seed_from_u64(rank as u64);
    for v in lora.b_mut() {
        *v = rng.random_range(-0.05..0.05);
    }
    set.insert(layer, target, Box::new(lora)).unwrap();
}

/// Asserts the two sets hold the same adapters with bitwise-equal tensors and equal scales.
pub fn assert_same_sets(what: &str, x: &AdapterSet, y: &AdapterSet) {
    assert_eq!(x.n_layer(), y.n_layer(), "{what}: n_layer");
    let xs: Vec<_> = x.iter().collect();
    let ys: Vec<_> = y.iter().collect();
    assert_eq!(xs.len(), ys.len(), "{what}: number of adapters");
    for ((l1, t1, a1), (l2, t2, a2)) in xs.into_iter().zip(ys) {
        assert_eq!((l1, t1), (l2, t2), "{what}: slots");
        assert_eq!(a1.params(), a2.params(), "{what}: blk.{l1}.{t1:?} shapes");
        assert_eq!(
            a1.scale().to_bits(),
            a2.scale().to_bits(),
            "{what}: blk.{l1}.{t1:?} scale {} vs {}",
            a1.scale(),
            a2.scale()
        );
        for i in 0..a1.params().len() {
            let (p, q) = (a1.param(i).unwrap(), a2.param(i).unwrap());
            let diff = p
                .iter()
                .zip(q)
                .position(|(u, v)| u.to_bits() != v.to_bits());
            assert_eq!(diff, None, "{what}: blk.{l1}.{t1:?} param {i} differs");
        }
    }
}

/// `ΔW = s·B·A` of one adapter, `[out, in]`.
pub fn delta(a: &dyn Adapter) -> Vec<f32> {
    let mut dw = vec![0.0; a.in_features() * a.out_features()];
    a.delta_weight(&mut dw).unwrap();
    dw
}

/// Writes a safetensors file of f32 tensors `(name, shape, values)` with `metadata`.
pub fn write_safetensors(
    path: &Path,
    tensors: &[(&str, Vec<usize>, Vec<f32>)],
    metadata: &[(&str, &str)],
) {
    let views: Vec<(&str, TensorView)> = tensors
        .iter()
        .map(|(n, s, v)| {
            (
                *n,
                TensorView::new(Dtype::F32, s.clone(), bytemuck::cast_slice(v)).unwrap(),
            )
        })
        .collect();
    let meta = Some(
        metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    let bytes = safetensors::serialize(views, &meta).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Writes the tiny preset in `ty` (every 2-D weight) with `seed` into `dir/name`.
pub fn tiny_model(
    dir: &Path,
    name: &str,
    ty: edgetune::quant::GgmlType,
    seed: u64,
) -> std::path::PathBuf {
    let p = dir.join(name);
    edgetune::testmodel::write_test_model(
        &edgetune::testmodel::TINY,
        edgetune::testmodel::WeightTypes::Uniform(ty),
        seed,
        &p,
    )
    .unwrap();
    p
}

/// Fixed token ids inside the tiny vocabulary.
pub fn tokens() -> Vec<u32> {
    vec![1, 17, 200, 5, 99, 42, 130, 7, 64, 250, 3, 111]
}

/// The logits `[tokens, vocab]` of the model in `path` with `set` applied (or none).
pub fn logits(path: &Path, set: Option<AdapterSet>) -> Vec<f32> {
    let file = edgetune::gguf::GgufFile::open(path).unwrap();
    let mut m = edgetune::model::Llama::load(&file).unwrap();
    m.set_adapters(set.map(std::sync::Arc::new)).unwrap();
    let t = tokens();
    let mut cache = m.new_cache(t.len()).unwrap();
    let mut out = vec![0.0; t.len() * m.config().n_vocab];
    m.forward(&mut cache, &t, &mut out).unwrap();
    out
}

/// max |x − y|.
pub fn max_abs_diff(x: &[f32], y: &[f32]) -> f32 {
    assert_eq!(x.len(), y.len());
    x.iter()
        .zip(y)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}
