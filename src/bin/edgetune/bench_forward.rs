//! `edgetune bench forward --model M [--prompt-tokens N] [--gen-tokens N] [--depth D]
//! [--threads N] [--reps R] [--compute int8|f32] [--batch B] [--json]`: prompt-processing and
//! generation speed of the CPU inference forward, measured as llama.cpp's `llama-bench` measures
//! them, so the two can be compared figure for figure:
//!
//! - prompt (`pp`): `N` tokens in one call on a cache holding `D` earlier positions, only the
//!   last token's logits computed;
//! - generation (`tg`): `N` tokens one at a time on a cache starting at `D` positions;
//! - each repeated `R` times after one untimed warm-up run of each; mean and standard deviation
//!   of the per-run tok/s, as llama-bench reports them.
//!
//! Token ids are seeded and spread over the whole vocabulary (no tokenizer needed). Peak RSS is
//! the process's high-water mark (`VmHWM`) at the end: weights mapped and touched, cache,
//! workspace.

use std::path::PathBuf;
use std::time::Instant;

use edgetune::gguf::GgufFile;
use edgetune::model::{KvCache, Llama};
use edgetune::{Error, Result};

use crate::compute_args::ComputeArgs;

#[derive(clap::Args)]
pub struct ForwardArgs {
    #[arg(long)]
    model: PathBuf,
    /// Tokens of the prompt test (0 skips it).
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens of the generation test (0 skips it).
    #[arg(long, default_value_t = 128)]
    gen_tokens: usize,
    /// Positions already in the cache when each test starts (llama-bench's `-d`).
    #[arg(long, default_value_t = 0)]
    depth: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed repetitions of each test (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    #[command(flatten)]
    compute: ComputeArgs,
    /// Most tokens per forward call inside the prompt test (the model's chunk size).
    #[arg(long)]
    batch: Option<usize>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

/// Mean and standard deviation of per-run throughputs.
struct Stats {
    mean: f64,
    stddev: f64,
}

fn stats(samples: &[f64]) -> Stats {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 {
        samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Stats {
        mean,
        stddev: var.sqrt(),
    }
}

/// Seeded ids spread over the vocabulary.
fn token_ids(n: usize, n_vocab: usize, salt: u64) -> Vec<u32> {
    (0..n as u64)
        .map(|i| ((i * 7919 + 13 + salt) * 2654435761 % n_vocab as u64) as u32)
        .collect()
}

/// Fills the first `depth` positions of a cleared cache.
fn fill_depth(
    llama: &Llama<'_>,
    cache: &mut KvCache,
    depth: usize,
    last: &mut [f32],
) -> Result<()> {
    cache.clear();
    if depth > 0 {
        let ids = token_ids(depth, llama.config().n_vocab, 99);
        llama.forward_last(cache, &ids, last)?;
    }
    Ok(())
}

/// Seconds of one prompt run.
fn prompt_run(
    llama: &Llama<'_>,
    cache: &mut KvCache,
    a: &ForwardArgs,
    last: &mut [f32],
) -> Result<f64> {
    fill_depth(llama, cache, a.depth, last)?;
    let ids = token_ids(a.prompt_tokens, llama.config().n_vocab, 1);
    let t0 = Instant::now();
    llama.forward_last(cache, &ids, last)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// Seconds of one generation run (each token fed back one at a time).
fn gen_run(
    llama: &Llama<'_>,
    cache: &mut KvCache,
    a: &ForwardArgs,
    last: &mut [f32],
) -> Result<f64> {
    fill_depth(llama, cache, a.depth, last)?;
    let ids = token_ids(a.gen_tokens, llama.config().n_vocab, 2);
    let t0 = Instant::now();
    for id in ids {
        llama.forward_last(cache, &[id], last)?;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Warm-up run, then `reps` timed runs; tok/s of each.
fn measure(
    tokens: usize,
    reps: usize,
    mut run: impl FnMut() -> Result<f64>,
) -> Result<Option<Stats>> {
    if tokens == 0 || reps == 0 {
        return Ok(None);
    }
    run()?;
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        samples.push(tokens as f64 / run()?.max(1e-9));
    }
    Ok(Some(stats(&samples)))
}

pub fn bench_forward(a: ForwardArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::Invalid(format!("bench: threads: {e}")))?;
    let threads = pool.current_num_threads();
    let file = GgufFile::open(&a.model)?;
    let r = pool.install(|| -> Result<serde_json::Value> {
        let mut llama = Llama::load(&file)?;
        llama.set_compute(a.compute.get())?;
        if let Some(b) = a.batch {
            llama.set_max_batch_tokens(b)?;
        }
        let c = llama.config().clone();
        let positions = a.depth + a.prompt_tokens.max(a.gen_tokens);
        let mut cache = llama.new_cache(positions.max(1))?;
        let mut last = vec![0.0f32; c.n_vocab];
        let pp = measure(a.prompt_tokens, a.reps, || {
            prompt_run(&llama, &mut cache, &a, &mut last)
        })?;
        let tg = measure(a.gen_tokens, a.reps, || {
            gen_run(&llama, &mut cache, &a, &mut last)
        })?;
        let usage = edgetune::memory::rss::memory_usage().ok().flatten();
        Ok(serde_json::json!({
            "model": a.model,
            "n_layer": c.n_layer,
            "dim": c.dim,
            "n_vocab": c.n_vocab,
            "threads": threads,
            "compute": a.compute.get().name(),
            "max_batch_tokens": llama.max_batch_tokens(),
            "depth": a.depth,
            "reps": a.reps,
            "prompt_tokens": a.prompt_tokens,
            "gen_tokens": a.gen_tokens,
            "prefill_tok_per_s": pp.as_ref().map(|s| s.mean),
            "prefill_stddev": pp.as_ref().map(|s| s.stddev),
            "decode_tok_per_s": tg.as_ref().map(|s| s.mean),
            "decode_stddev": tg.as_ref().map(|s| s.stddev),
            "peak_rss_bytes": usage.map(|m| m.peak_rss),
        }))
    })?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Error::Invalid(e.to_string()))?
        );
        return Ok(());
    }
    let fmt = |mean: &serde_json::Value, sd: &serde_json::Value| match mean.as_f64() {
        Some(m) => format!("{m:.1} ± {:.1} tok/s", sd.as_f64().unwrap_or(0.0)),
        None => "skipped".into(),
    };
    println!(
        "{} ({} threads, {}): prompt {} tokens: {}; generation {} tokens: {}; peak RSS {}",
        a.model.display(),
        threads,
        a.compute.get().name(),
        a.prompt_tokens,
        fmt(&r["prefill_tok_per_s"], &r["prefill_stddev"]),
        a.gen_tokens,
        fmt(&r["decode_tok_per_s"], &r["decode_stddev"]),
        r["peak_rss_bytes"]
            .as_u64()
            .map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
    );
    Ok(())
}
