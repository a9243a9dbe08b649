//! Running a whole training: [`run`] / [`run_on`] drive a [`Trainer`] step by step in a
//! worker pool of `cfg.threads`, evaluate during training when asked (`evaluate.rs`), write
//! `metrics.jsonl`, the checkpoints and `summary.json`, and report each step through the
//! caller's callback (never printing). The callback returning `false` stops the run after a
//! checkpoint of the step just done (`summary.interrupted`).

use super::config::TrainConfig;
use super::metrics::MetricsLog;
use super::trainer::{Progress, Summary, Trainer};
use edgetune_core::gguf::GgufFile;
use edgetune_core::memory::rss::memory_usage;
use edgetune_core::{Error, Result};

/// Runs `cfg` to the end: checkpoints every `save_every` steps and at the end,
/// `DIR/metrics.jsonl` (one line per step; on resume, lines after the checkpoint are dropped),
/// `DIR/summary.json`. `progress` is called after every step; returning `false` stops the run
/// early (after a checkpoint).
pub fn run(
    cfg: &TrainConfig,
    progress: &mut (dyn FnMut(&Progress) -> bool + Send),
) -> Result<Summary> {
    run_on(cfg, super::engine::Device::Cpu, progress)
}

/// [`run`] with the micro-batches on `device` ([`Trainer::use_device`]).
pub fn run_on(
    cfg: &TrainConfig,
    device: super::engine::Device,
    progress: &mut (dyn FnMut(&Progress) -> bool + Send),
) -> Result<Summary> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.threads.unwrap_or(0))
        .build()
        .map_err(|e| Error::Invalid(format!("train: cannot start worker threads: {e}")))?;
    pool.install(|| run_in_pool(cfg, device, progress))
}

fn run_in_pool(
    cfg: &TrainConfig,
    device: super::engine::Device,
    progress: &mut (dyn FnMut(&Progress) -> bool + Send),
) -> Result<Summary> {
    let file = GgufFile::open(&cfg.model)?;
    let mut trainer = Trainer::new(&file, cfg)?;
    trainer.use_device(&file, device)?;
    let mut metrics = MetricsLog::open(&cfg.out, trainer.completed())?;
    let mut evals = super::evaluate::DuringTraining::new(&file, cfg)?;
    if let Some(e) = &mut evals {
        e.measure_base(&file)?;
    }
    let (mut first, mut last, mut last_ckpt) = (metrics.first_loss(), None, None);
    let mut interrupted = false;
    while let Some(mut p) = trainer.step()? {
        first.get_or_insert(p.loss);
        last = Some(p.loss);
        if let Some(e) = &mut evals
            && e.due(p.step, p.total_steps)
        {
            p.eval = Some(e.measure_adapter(&file, trainer.adapters(), p.step)?);
            trainer.adapters().release_all()?;
        }
        metrics.append(&p, trainer.task_metrics())?;
        let go_on = progress(&p);
        let due = cfg.save_every > 0 && p.step % cfg.save_every == 0;
        if due || !go_on {
            last_ckpt = Some(trainer.checkpoint()?);
        }
        if !go_on {
            interrupted = p.step < p.total_steps;
            break;
        }
    }
    let at_end = last_ckpt
        .as_deref()
        .and_then(|d| d.file_name())
        .is_some_and(|n| *n == *format!("step-{:08}", trainer.completed()));
    let dylora_rank = trainer.choose_dylora_rank()?;
    if let Some((b, losses)) = &dylora_rank {
        log::info!("DyLoRA: rank {b} chosen for export (loss per rank {losses:?})");
    }
    if !at_end || dylora_rank.is_some() {
        last_ckpt = Some(trainer.checkpoint()?);
    }
    let usage = memory_usage().unwrap_or_else(|e| {
        log::warn!("cannot read the memory usage: {e}");
        None
    });
    if let (Some(budget), Some(m)) = (cfg.budget_bytes, usage.as_ref())
        && m.peak_rss > budget
    {
        // The plan fitted, so the plan was low: worth a report, not a lost run.
        log::warn!(
            "the measured peak ({} bytes) exceeded the budget ({budget} bytes) that the plan \
             ({} bytes) fitted: the plan underestimates this configuration",
            m.peak_rss,
            trainer.planned_bytes
        );
    }
    let summary = Summary {
        config: trainer.cfg.clone(),
        steps: trainer.completed(),
        resumed_from_step: trainer.resumed_from,
        first_loss: first,
        final_loss: last,
        elapsed_s: trainer.elapsed_s,
        tokens: trainer.tokens,
        tok_per_s: trainer.tokens as f64 / trainer.elapsed_s.max(1e-9),
        trainable_params: trainer.set.n_params(),
        arena_bytes: trainer.step.arena_bytes().max(trainer.device_bytes()) as u64,
        planned_bytes: trainer.planned_bytes,
        peak_bytes: usage.as_ref().map(|m| m.peak_rss),
        memory: usage,
        last_checkpoint: last_ckpt,
        dylora_rank: dylora_rank.map(|(b, _)| b),
        replay: trainer.replay.clone(),
        eval_base: evals.as_ref().and_then(|e| e.base),
        interrupted,
        evals: evals.as_ref().map(|e| e.points.clone()).unwrap_or_default(),
        best: evals.and_then(|e| e.best),
        streamed: trainer.step.stream_stats(),
        fused_update: trainer.step.shape.fused_update,
    };
    let json =
        serde_json::to_vec_pretty(&summary).map_err(|e| Error::Invalid(format!("summary: {e}")))?;
    edgetune_core::atomic_file::write_bytes(&cfg.out.join("summary.json"), &json)?;
    Ok(summary)
}
