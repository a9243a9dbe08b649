//! `edgetune bench train --model M [--seq-len L] [--rank r] [--batch B] [--steps N] [--json]`:
//! training throughput and peak memory over a few steps on random token data (the first step
//! is a warm-up and is not timed). `edgetune bench forward`: see [`crate::bench_forward`].

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use edgetune::gguf::GgufFile;
use edgetune::model::LlamaConfig;
use edgetune::train::{TrainConfig, Trainer};
use edgetune::{Error, Result};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Training steps: tok/s and peak RSS.
    Train(TrainArgs),
    /// Inference: prompt and generation tok/s and peak RSS, measured as llama-bench does.
    Forward(crate::bench_forward::ForwardArgs),
}

#[derive(clap::Args)]
struct TrainArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed steps (after one warm-up step).
    #[arg(long, default_value_t = 3)]
    steps: u64,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// No gradient checkpointing.
    #[arg(long)]
    no_checkpointing: bool,
    #[arg(long)]
    json: bool,
    // `cuda`: the device training step (the LoRA family); `auto`: the device when it can run.
    #[command(flatten)]
    backend: crate::backend_args::BackendArgs,
}

pub fn run(args: Args) -> Result<()> {
    match args.what {
        What::Train(a) => bench_train(a),
        What::Forward(a) => crate::bench_forward::bench_forward(a),
    }
}

fn bench_train(a: TrainArgs) -> Result<()> {
    // The bench trains plain LoRA without dropout: the device step runs it.
    let device = a.backend.train_device(true)?;
    let backend = match &device {
        edgetune::train::engine::Device::Cpu | edgetune::train::engine::Device::CpuDeviceStep => {
            "cpu"
        }
        #[cfg(feature = "cuda")]
        edgetune::train::engine::Device::Cuda(_) => "cuda",
    };
    let file = GgufFile::open(&a.model)?;
    let model_cfg = LlamaConfig::from_gguf(&file)?;
    let dir = tempfile_dir()?;
    let data = dir.join("random.jsonl");
    write_random_tokens(
        &data,
        &model_cfg,
        a.seq_len,
        (a.steps as usize + 1) * a.batch,
    )?;
    let mut cfg = TrainConfig {
        model: a.model.clone(),
        data,
        out: dir.join("run"),
        steps: Some(a.steps + 1),
        seq_len: a.seq_len,
        batch: a.batch,
        checkpointing: !a.no_checkpointing,
        threads: a.threads,
        ..TrainConfig::default()
    };
    cfg.lora.rank = a.rank;
    cfg.lora.alpha = 2.0 * a.rank as f32;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::Invalid(format!("bench: threads: {e}")))?;
    let threads = pool.current_num_threads();
    let result = pool.install(|| -> Result<serde_json::Value> {
        let mut trainer = Trainer::new(&file, &cfg)?;
        trainer.use_device(&file, device)?;
        trainer.step()?; // warm-up: first touch of the weights and the arena
        let t0 = Instant::now();
        let mut steps = 0u64;
        let mut last_loss = f64::NAN;
        while let Some(p) = trainer.step()? {
            steps += 1;
            last_loss = p.loss;
        }
        let secs = t0.elapsed().as_secs_f64();
        let tokens = steps as f64 * (a.batch * a.seq_len) as f64;
        Ok(serde_json::json!({
            "model": a.model,
            "n_layer": model_cfg.n_layer,
            "dim": model_cfg.dim,
            "seq_len": a.seq_len,
            "batch": a.batch,
            "rank": a.rank,
            "checkpointing": !a.no_checkpointing,
            "threads": threads,
            "backend": backend,
            "steps": steps,
            "seconds_per_step": secs / steps.max(1) as f64,
            "tok_per_s": tokens / secs.max(1e-9),
            "loss": last_loss,
            "arena_bytes": trainer.train_step().arena_bytes(),
            "device_workspace_bytes": trainer.device_bytes(),
            "trainable_params": trainer.adapters().n_params(),
            "peak_rss_bytes": edgetune::memory::rss::memory_usage().ok().flatten().map(|m| m.peak_rss),
        }))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Error::Invalid(e.to_string()))?
        );
    } else {
        println!(
            "{} steps of {}×{} tokens, rank {}, {} threads: {:.2} s/step, {:.1} tok/s, peak RSS {}",
            r["steps"],
            a.batch,
            a.seq_len,
            a.rank,
            threads,
            r["seconds_per_step"].as_f64().unwrap_or(0.0),
            r["tok_per_s"].as_f64().unwrap_or(0.0),
            r["peak_rss_bytes"]
                .as_u64()
                .map_or("n/a".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
        );
    }
    Ok(())
}

/// A fresh directory under the system temp dir.
fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("edgetune-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

/// `rows` pre-tokenized rows of `seq_len` random ids (every next token a target).
fn write_random_tokens(
    path: &PathBuf,
    cfg: &LlamaConfig,
    seq_len: usize,
    rows: usize,
) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(1);
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?);
    for _ in 0..rows {
        let ids: Vec<u32> = (0..seq_len)
            .map(|_| rng.random_range(0..cfg.n_vocab as u32))
            .collect();
        let line = serde_json::json!({ "input_ids": ids });
        writeln!(f, "{line}").map_err(|e| Error::io(path, e))?;
    }
    f.flush().map_err(|e| Error::io(path, e))
}
