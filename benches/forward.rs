//! Forward-pass speed on the `small` preset (≈ 101M parameters): prompt processing (128 tokens in
//! one call), generation (one token at a time against a 128-token KV cache) and generation of
//! eight sequences at once (`decode_batch`), for Q4_0, Q4_K and Q8_0 weights. Throughput is in
//! tokens (shown as elements/s).
//!
//! The models are written once into `target/bench-models/` (seeded; about 30 s each the first
//! time) and reused. `EDGETUNE_BENCH_TYPES=Q4_0` limits the types.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::quant::GgmlType;
use edgetune::testmodel::{self, SMALL, WeightTypes};

const PROMPT: usize = 128;

fn model_path(ty: GgmlType) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models");
    std::fs::create_dir_all(&dir).expect("bench model dir");
    let path = dir.join(format!("small-{}.gguf", ty.name().to_lowercase()));
    if !path.exists() {
        testmodel::write_test_model(&SMALL, WeightTypes::Uniform(ty), 1, &path)
            .expect("write the small model");
    }
    path
}

fn types() -> Vec<GgmlType> {
    match std::env::var("EDGETUNE_BENCH_TYPES") {
        Ok(list) => list.split(',').filter_map(GgmlType::from_name).collect(),
        Err(_) => vec![GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::Q8_0],
    }
}

fn forward(c: &mut Criterion) {
    let mut g = c.benchmark_group("forward_small");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for ty in types() {
        let file = GgufFile::open(model_path(ty)).expect("open");
        let llama = Llama::load(&file).expect("load");
        let vocab = llama.config().n_vocab;
        let prompt: Vec<u32> = (0..PROMPT as u32)
            .map(|i| (i * 7 + 3) % vocab as u32)
            .collect();
        let mut cache = llama.new_cache(PROMPT + 1).expect("cache");
        let mut logits = vec![0.0f32; vocab];

        g.throughput(Throughput::Elements(PROMPT as u64));
        g.bench_function(format!("prompt128/{ty}"), |b| {
            b.iter(|| {
                cache.clear();
                llama
                    .forward_last(&mut cache, &prompt, &mut logits)
                    .expect("prefill");
            })
        });

        cache.clear();
        llama
            .forward_last(&mut cache, &prompt, &mut logits)
            .expect("prefill");
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("generate/{ty}"), |b| {
            b.iter(|| {
                cache.truncate(PROMPT);
                llama
                    .forward_last(&mut cache, &[42], &mut logits)
                    .expect("decode");
            })
        });

        // Eight sequences decoding together (`decode_batch`, what `eval --batch 8` runs): the
        // ratio to `generate/…` above is the batch's gain, measured in the same run.
        let mut caches: Vec<_> = (0..BATCH)
            .map(|_| {
                let mut c = llama.new_cache(PROMPT + 1).expect("cache");
                llama
                    .forward_last(&mut c, &prompt, &mut logits)
                    .expect("prefill");
                c
            })
            .collect();
        let tokens: Vec<u32> = (0..BATCH as u32).map(|i| 40 + i).collect();
        let mut batch_logits = vec![0.0f32; BATCH * vocab];
        g.throughput(Throughput::Elements(BATCH as u64));
        g.bench_function(format!("generate_batch{BATCH}/{ty}"), |b| {
            b.iter(|| {
                let mut refs: Vec<_> = caches.iter_mut().collect();
                for c in refs.iter_mut() {
                    c.truncate(PROMPT);
                }
                llama
                    .decode_batch(&mut refs, &tokens, &mut batch_logits)
                    .expect("decode a batch");
            })
        });
    }
    g.finish();
}

/// Sequences in the batched-decoding row.
const BATCH: usize = 8;

criterion_group!(benches, forward);
criterion_main!(benches);
