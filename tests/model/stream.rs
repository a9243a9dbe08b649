//! Inference through streamed weights (`Llama::stream_weights`, model/stream.rs) against the
//! mapped model: bit-identical logits for prompts longer than a chunk, for batched decoding,
//! with adapters, with int8 arithmetic, for an untied and a tied head; the reads it did; and
//! the CLI's `--weights stream` giving the same `generate`, `perplexity` and `eval` output; the
//! head streamed in chunks of rows too (`--stream-head on`): the same logits, read as it runs.

use std::sync::Arc;

use edgetune::adapters::LoraConfig;
use edgetune::gguf::GgufFile;
use edgetune::model::stream::StreamOptions;
use edgetune::model::{KvCache, Llama};
use edgetune::quant::Compute;
use edgetune::testmodel::{Preset, TINY, WeightTypes, write_test_model};
use edgetune::train::AdapterSet;
use rand::{Rng, SeedableRng, rngs::StdRng};

const VOCAB: usize = 261;

fn model(dir: &std::path::Path, tied: bool) -> std::path::PathBuf {
    let p = Preset {
        n_layer: 3,
        tied_output: tied,
        ..TINY
    };
    let path = dir.join(format!("m-{tied}.gguf"));
    write_test_model(&p, WeightTypes::parse("q4_k_m").unwrap(), 9, &path).unwrap();
    path
}

/// The logits of a 70-token prompt (two chunks of 64 and 6) and of 3 decoding steps of 2
/// sequences (one `decode_batch` each).
fn logits(m: &Llama) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(2);
    let prompt: Vec<u32> = (0..70).map(|_| rng.random_range(0..VOCAB as u32)).collect();
    let mut out = vec![0.0; 70 * VOCAB];
    let mut cache = m.new_cache(80).unwrap();
    m.forward(&mut cache, &prompt, &mut out).unwrap();
    let mut other = m.new_cache(80).unwrap();
    let mut last = vec![0.0; VOCAB];
    m.forward_last(&mut other, &prompt[..5], &mut last).unwrap();
    out.extend_from_slice(&last);
    for step in 0..3u32 {
        let mut caches: Vec<&mut KvCache> = vec![&mut cache, &mut other];
        let mut two = vec![0.0; 2 * VOCAB];
        m.decode_batch(&mut caches, &[step, 100 + step], &mut two)
            .unwrap();
        out.extend_from_slice(&two);
    }
    out
}

fn with_adapters(llama: &mut Llama) {
    let lc = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    let mut set = AdapterSet::new_lora(llama.config(), &lc, 3).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    for (_, _, a) in set.iter_mut() {
        for v in a.param_mut(1).unwrap() {
            *v = rng.random_range(-0.1..0.1);
        }
    }
    llama.set_adapters(Some(Arc::new(set))).unwrap();
}

#[test]
fn streamed_inference_equals_mapped_inference_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let path = model(dir.path(), tied);
        let file = GgufFile::open(&path).unwrap();
        for (compute, adapters) in [
            (Compute::F32, false),
            (Compute::F32, true),
            (Compute::Int8, false),
        ] {
            let mut mapped = Llama::load(&file).unwrap();
            let mut streamed = Llama::load(&file).unwrap();
            mapped.set_compute(compute).unwrap();
            streamed.stream_weights(&file).unwrap();
            // After streaming is on: the stream takes the new arithmetic too.
            streamed.set_compute(compute).unwrap();
            if adapters {
                with_adapters(&mut mapped);
                with_adapters(&mut streamed);
            }
            assert!(mapped.stream_stats().is_none());
            let (a, b) = (logits(&mapped), logits(&streamed));
            assert!(a.iter().all(|v| v.is_finite()));
            assert!(
                a == b,
                "tied {tied}, {compute:?}, adapters {adapters}: logits differ"
            );
            // 6 passes (2 chunks, 1 prompt, 3 decoding steps) of 3 layers: each pass's last
            // layer prefetches layer 0 for the next, so every layer is read once per pass.
            let st = streamed.stream_stats().unwrap();
            assert_eq!(st.layer_reads, 6 * 3, "{st:?}");
        }
    }
}

/// The head streamed in chunks of 100 rows (3 chunks of the 261-token head; one row per
/// chunk too): every logit is the same dot product, so bit-identical; a tied head's embedding
/// rows are read one token at a time.
#[test]
fn a_streamed_head_gives_the_same_logits() {
    let dir = tempfile::tempdir().unwrap();
    for tied in [false, true] {
        let path = model(dir.path(), tied);
        let file = GgufFile::open(&path).unwrap();
        let mapped = Llama::load(&file).unwrap();
        let want = logits(&mapped);
        for rows in [100, 1] {
            let mut streamed = Llama::load(&file).unwrap();
            let options = StreamOptions {
                stream_head: true,
                head_chunk_rows: Some(rows),
            };
            streamed.stream_weights_with(&file, options).unwrap();
            assert!(
                logits(&streamed) == want,
                "tied {tied}, {rows} rows: logits differ"
            );
            let st = streamed.stream_stats().unwrap();
            // 6 passes that want logits, each reading the head's chunks once.
            let chunks = VOCAB.div_ceil(rows) as u64;
            assert_eq!(st.head_chunk_reads, 6 * chunks, "{st:?}");
            // The layers: each pass's head prefetches layer 0 for the next one.
            assert_eq!(st.layer_reads, 6 * 3, "{st:?}");
        }
    }
}

#[test]
fn generate_with_streamed_weights_prints_the_same_text() {
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    let path = model(dir.path(), false);
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(bin)
            .args([
                "generate",
                "--model",
                path.to_str().unwrap(),
                "--prompt",
                "gateway",
            ])
            .args(["--max-tokens", "12", "--temperature", "0"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let mapped = run(&[]);
    assert!(!mapped.is_empty());
    assert_eq!(run(&["--weights", "stream"]), mapped);
    // perplexity and eval: the same numbers and answers.
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/suites/basic.jsonl");
    for args in [
        vec!["perplexity", "--tokens", "5,60,7,200,9,31,4", "--json"],
        vec!["eval", "--suite", suite, "--max-tokens", "4", "--json"],
    ] {
        let go = |extra: &[&str]| {
            let out = std::process::Command::new(bin)
                .args(&args[..1])
                .args(["--model", path.to_str().unwrap()])
                .args(&args[1..])
                .args(extra)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        };
        let mapped = go(&[]);
        assert_eq!(go(&["--weights", "stream"]), mapped, "{}", args[0]);
        let head = ["--weights", "stream", "--stream-head", "on"];
        assert_eq!(go(&head), mapped, "{} --stream-head on", args[0]);
    }
}

/// `--budget` on `perplexity`, `generate` and `eval`: with `--weights auto` the plan streams the
/// layers when mapping them does not fit and streaming does (said on stderr, same output as
/// mapped); a budget neither fits is refused before the weights are loaded.
#[test]
fn a_budget_streams_inference_when_mapping_does_not_fit() {
    use edgetune::train::WeightsMode;
    use edgetune::train::budget::ModelWeights;
    use edgetune::train::budget::infer::{InferenceShape, plan_inference};
    let bin = env!("CARGO_BIN_EXE_edgetune");
    let dir = tempfile::tempdir().unwrap();
    // Deep enough that its layers outweigh the shapes' differences in workspace and cache.
    let path = dir.path().join("deep.gguf");
    let p = Preset {
        n_layer: 12,
        ..TINY
    };
    write_test_model(&p, WeightTypes::parse("q8_0").unwrap(), 9, &path).unwrap();
    let weights = ModelWeights::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    // The smallest run below (perplexity of 7 tokens) mapped, and a larger one than either
    // (64 positions) streamed: a budget between them streams both commands.
    let shape = |n| InferenceShape {
        kv_positions: n,
        chunk_tokens: n,
        logit_rows: n,
        threads: None,
    };
    let total = |n, mode| {
        plan_inference(
            &weights,
            shape(n),
            mode,
            edgetune::train::StreamHead::Off,
            None,
        )
        .unwrap()
        .total_bytes
    };
    let (map, stream) = (total(7, WeightsMode::Map), total(64, WeightsMode::Stream));
    assert!(stream < map, "{stream} {map}");
    let between = ((map + stream) / 2).to_string();
    let run = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(&args[..1])
            .args(["--model", path.to_str().unwrap()])
            .args(&args[1..])
            .output()
            .unwrap()
    };
    let suite = concat!(env!("CARGO_MANIFEST_DIR"), "/suites/basic.jsonl");
    for cmd in [
        vec!["perplexity", "--tokens", "5,60,7,200,9,31,4", "--json"],
        vec!["generate", "--prompt", "gw", "--max-tokens", "3"],
        vec![
            "eval",
            "--suite",
            suite,
            "--max-tokens",
            "2",
            "--batch",
            "1",
            "--json",
        ],
    ] {
        let mapped = run(&cmd);
        let mut budgeted = cmd.clone();
        budgeted.extend(["--budget", &between]);
        let streamed = run(&budgeted);
        let err = String::from_utf8_lossy(&streamed.stderr);
        assert!(streamed.status.success(), "{err}");
        assert!(
            err.contains("memory plan:") && err.contains("stream: chosen by the plan"),
            "{}: {err}",
            cmd[0]
        );
        assert_eq!(streamed.stdout, mapped.stdout, "{}", cmd[0]);
        let mut tiny = cmd.clone();
        tiny.extend(["--budget", "1MiB"]);
        let refused = run(&tiny);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success());
        assert!(
            err.contains("inference plan over budget") && err.contains("KV cache"),
            "{err}"
        );
    }
}
