//! Measures the runtime overheads that `train::budget` adds to a training plan (its named
//! constants quote these runs). Each measurement runs in a fresh process so the allocator's
//! caches of one do not hide the growth of the next:
//!
//! ```text
//! M=target/release/examples/measure_overheads
//! $M write-tokenizer target/llama3_1-tokenizer.json /tmp/l3.gguf   # or synthetic:128256, synthetic:261
//! $M tokenizer /tmp/l3.gguf
//! $M threads 8
//! $M write-dataset 2000 /tmp/iot.jsonl
//! $M dataset /tmp/l3.gguf /tmp/iot.jsonl
//! ```
//!
//! Every line printed is `what: anon +X KiB, file +Y KiB` (resident growth from
//! `memory::rss::memory_usage`) or a ratio.

use std::hint::black_box;
use std::path::Path;

use edgetune::data::{self, BatchConfig, Batcher, TokenizeOptions};
use edgetune::gguf::{GgufFile, GgufWriter, Value};
use edgetune::memory::rss::{MemoryUsage, memory_usage};
use edgetune::testmodel::synthetic_vocab_metadata;
use edgetune::tokenizer::Tokenizer;
use rayon::prelude::*;

fn usage() -> MemoryUsage {
    memory_usage()
        .expect("read /proc/self")
        .expect("Linux /proc needed")
}

fn report(what: &str, a: &MemoryUsage, b: &MemoryUsage) {
    println!(
        "{what}: anon +{} KiB, file +{} KiB (rss now {} KiB)",
        (b.rss_anon as i64 - a.rss_anon as i64) / 1024,
        (b.rss_file as i64 - a.rss_file as i64) / 1024,
        b.rss / 1024
    );
}

/// The `tokenizer.*` metadata of a tokenizer.json, or of `synthetic:N`.
fn vocab_metadata(source: &str) -> Vec<(String, Value)> {
    match source.strip_prefix("synthetic:") {
        Some(n) => synthetic_vocab_metadata(n.parse().expect("synthetic:N")).unwrap(),
        None => {
            let json = std::fs::read_to_string(source).expect("read tokenizer.json");
            edgetune::tokenizer::hf_json::gguf_metadata(&json).unwrap()
        }
    }
}

/// Writes a GGUF holding only the architecture and the tokenizer metadata.
fn tokenizer_gguf(source: &str, path: &Path) {
    let kv = vocab_metadata(source);
    let mut w = GgufWriter::new(32);
    w.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    for (k, v) in kv {
        w.add_kv(k, v).unwrap();
    }
    w.write_to_path(path, |_, _, _| Ok(())).unwrap();
}

fn tokenizer(path: &Path) {
    let header = std::fs::metadata(path).unwrap().len();
    println!("header (file) bytes: {header}");
    let u0 = usage();
    let f = GgufFile::open(path).unwrap();
    let u1 = usage();
    report("GgufFile::open (metadata parsed)", &u0, &u1);
    let t = Tokenizer::from_gguf(&f).unwrap();
    let u2 = usage();
    report("Tokenizer::from_gguf", &u1, &u2);
    report("open + tokenizer", &u0, &u2);
    println!(
        "anon per header byte: {:.2}",
        (u2.rss_anon - u0.rss_anon) as f64 / header as f64
    );
    black_box((&f, &t));
}

fn threads(n: usize) {
    let u0 = usage();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .unwrap();
    let u1 = usage();
    report("pool built (threads parked)", &u0, &u1);
    // Every thread runs tasks that recurse a little and allocate a little (glibc gives each
    // thread that allocates a malloc arena of its own).
    pool.install(|| {
        (0..n * 64).into_par_iter().for_each(|i| {
            fn deep(d: usize) -> usize {
                let buf = black_box([d as u8; 512]);
                if d == 0 {
                    buf[0] as usize
                } else {
                    deep(d - 1) + buf[1] as usize
                }
            }
            let v = black_box(vec![i as u8; 4096]);
            black_box(deep(32) + v[0] as usize);
            std::thread::sleep(std::time::Duration::from_millis(2));
        })
    });
    let u2 = usage();
    report("after work on every thread", &u1, &u2);
    println!(
        "per thread: {:.0} KiB",
        (u2.rss_anon - u0.rss_anon) as f64 / 1024.0 / n as f64
    );
    black_box(pool);
}

/// Writes `n` synthetic IoT examples as JSONL.
fn write_dataset(n: usize, path: &Path) {
    let (train, _) = data::synth::generate(0, n);
    let text: String = train
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    std::fs::write(path, &text).unwrap();
}

fn dataset(gguf: &Path, path: &Path) {
    let f = GgufFile::open(gguf).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let file_bytes = std::fs::metadata(path).unwrap().len() as usize;
    let u0 = usage();
    let ds = data::load(path, None).unwrap();
    let examples = data::tokenize_all(&tok, &ds, &TokenizeOptions::default()).unwrap();
    let u1 = usage();
    report("dataset loaded and tokenized", &u0, &u1);
    let tokens: usize = examples.iter().map(|e| e.ids.len()).sum();
    let cfg = BatchConfig {
        seq_len: 512,
        batch_size: 1,
        pack: true,
        seed: 0,
        epochs: Some(1),
        max_steps: None,
        pad_id: 0,
    };
    let batcher = Batcher::new(&examples, cfg).unwrap();
    let u2 = usage();
    report("batcher built", &u1, &u2);
    drop(ds);
    drop(examples);
    let u3 = usage();
    report("dataset and examples dropped", &u2, &u3);
    println!(
        "file {file_bytes} bytes, {} examples, {tokens} tokens: {:.3} tokens per file byte; \
         anon {:.2} bytes per file byte held at the end",
        batcher.stats().examples,
        tokens as f64 / file_bytes as f64,
        (u3.rss_anon - u0.rss_anon) as f64 / file_bytes as f64
    );
    black_box(batcher);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let start = usage();
    println!(
        "at start: rss {} KiB (anon {} KiB, file {} KiB)",
        start.rss / 1024,
        start.rss_anon / 1024,
        start.rss_file / 1024
    );
    match args.first().map(String::as_str) {
        Some("write-tokenizer") => tokenizer_gguf(&args[1], Path::new(&args[2])),
        Some("tokenizer") => tokenizer(Path::new(&args[1])),
        Some("threads") => threads(args[1].parse().unwrap()),
        Some("write-dataset") => write_dataset(args[1].parse().unwrap(), Path::new(&args[2])),
        Some("dataset") => dataset(Path::new(&args[1]), Path::new(&args[2])),
        _ => eprintln!(
            "usage: measure_overheads write-tokenizer SRC OUT.gguf | tokenizer FILE.gguf | \
             threads N | write-dataset N OUT.jsonl | dataset TOKENIZER.gguf DATA.jsonl"
        ),
    }
}
