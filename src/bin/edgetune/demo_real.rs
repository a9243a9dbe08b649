//! The real-model demo: a pretrained Llama GGUF (SmolLM2-135M-Instruct unless `--model`)
//! learns the assistant set offline — facts about fictional devices, telemetry → JSON, alarm
//! triage, refusing harmful requests — and is measured on held-out prompts before and after,
//! with retention of its general knowledge checked. Writes `DIR/demo.json` and `DIR/loss.svg`.
//!
//! Steps: fetch (once) → write the data → print the plan → evaluate the base model → train a
//! LoRA (progress bar) → evaluate again with the adapter → before/after table and answers.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use edgetune::adapters::LayerRange;
use edgetune::data::synth::{self, AssistantSet, AssistantSizes};
use edgetune::eval::assistant::{AssistantMeasure, AssistantSuites, measure};
use edgetune::eval::plot::{LossCurve, loss_svg};
use edgetune::eval::{EvalOptions, PromptFormat};
use edgetune::gguf::GgufFile;
use edgetune::model::Llama;
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::chat_template::ChatTemplate;
use edgetune::train::budget;
use edgetune::train::{Decay, Replay, Summary, TrainConfig};
use edgetune::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::data_cmd::write_jsonl;
use crate::demo_cmd::Args;
use crate::demo_synthetic::loss_curve;
use crate::fetch_cmd::{DEMO_MODEL, fetch};
use crate::train_cmd::train_with_progress;

/// Defaults sized so the whole demo fits in 5 minutes on 2 cores with SmolLM2-135M.
const STEPS: u64 = 66;
const SEQ_LEN: usize = 256;
const BATCH: usize = 2;
/// Tokens of a replay answer at most (cut back to the last full sentence).
const REPLAY_TOKENS: usize = 64;

pub fn run(args: &Args) -> Result<()> {
    let start = Instant::now();
    let dir = &args.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => fetch(DEMO_MODEL, |msg| eprintln!("{msg}"))?,
    };
    let file = GgufFile::open(&model)?;
    println!(
        "1. model: {} ({})",
        model.display(),
        file.opt_str("general.name")?.unwrap_or("unnamed")
    );

    let sizes = AssistantSizes {
        devices: args.devices,
        ..AssistantSizes::default()
    };
    let set = synth::assistant_set(args.seed, sizes);
    write_data(dir, &set)?;
    let suites = AssistantSuites::from_set(&set, Some(args.heldout_cases))?;
    println!(
        "2. data: {} training conversations (facts about {} fictional devices, telemetry → JSON, \
         alarm triage, refusals; English + Indonesian); evaluated on {} held-out, {} harmful, {} \
         general-knowledge and {} seed prompts",
        set.train.len(),
        sizes.devices.clamp(1, synth::catalog::DEVICES.len()),
        suites.heldout.cases.len(),
        suites.harmful.cases.len(),
        suites.retention.cases.len(),
        suites.seed.cases.len(),
    );

    let steps = args.steps.unwrap_or(STEPS);
    let cfg = TrainConfig {
        model: model.clone(),
        data: dir.join("data").join("train.jsonl"),
        out: fresh_run_dir(dir)?,
        steps: Some(steps),
        seq_len: args.seq_len.unwrap_or(SEQ_LEN),
        batch: args.batch.unwrap_or(BATCH),
        pack: true,
        lr: args.lr,
        warmup_steps: (steps / 8).max(1),
        decay: Decay::Cosine,
        seed: args.seed,
        threads: args.threads,
        compute: args.compute.get(),
        ..TrainConfig::default()
    };
    let mut cfg = cfg;
    cfg.method = args.method;
    cfg.lora.rank = args.rank;
    cfg.lora.alpha = 2.0 * args.rank as f32;
    cfg.lora.dropout = args.dropout;
    cfg.lora.layers = match args.layers.as_deref() {
        Some("all") => None,
        Some(r) => Some(LayerRange::parse(r)?),
        None => {
            // The top four fifths (6-29 of SmolLM2's 30 layers): the backward stops at the
            // lowest adapted layer, so a step is a quarter cheaper, and in the measurements
            // (README) the bottom layers' adapters added nothing the demo's prompts show.
            let n = edgetune::model::LlamaConfig::from_gguf(&file)?.n_layer;
            Some(LayerRange {
                first: n / 5,
                last: n.saturating_sub(1),
            })
        }
    };
    let planned = budget::plan_training(&file, &cfg)?;
    println!(
        "3. plan: {} r={} on all 7 projections of {}, {} steps of {} × {} tokens, {:.1} MiB in all \
         ({:.1} MiB of it the mapped weights)",
        cfg.method,
        cfg.lora.rank,
        cfg.lora
            .layers
            .map_or("every layer".to_string(), |r| format!("layers {r}")),
        steps,
        cfg.batch,
        cfg.seq_len,
        mib(planned.breakdown.total_bytes),
        mib(planned.breakdown.weights.resident_bytes),
    );

    let tok = Tokenizer::from_gguf(&file)?;
    let opts = EvalOptions {
        max_tokens: args.max_tokens,
        style: PromptFormat::ChatWithSystem(
            Arc::new(ChatTemplate::for_model(&file, &tok)?),
            synth::SYSTEM_PROMPT.to_string(),
        ),
        batch: edgetune::infer::DEFAULT_GENERATE_BATCH,
    };
    println!("4. the base model on the held-out prompts …");
    let base = Llama::load(&file)?;
    let before = evaluate(&base, &tok, &suites, &opts)?;
    let n_replay = args.replay.min(synth::REPLAY_PROMPTS.len());
    let replay_prompts = &synth::REPLAY_PROMPTS[..n_replay];
    let mut replay_count = 0;
    if !replay_prompts.is_empty() {
        let t = Instant::now();
        let pairs = edgetune::train::replay::answers(
            &base,
            &tok,
            replay_prompts,
            &opts.style,
            REPLAY_TOKENS,
            opts.batch,
            |_, _| {},
        )?;
        // Mixed in as an exact share of the rows, with the KL anchor on them (`train
        // --replay FILE --replay-ratio R --kl-anchor λ`).
        let path = dir.join("data").join("replay.jsonl");
        let lines: Vec<serde_json::Value> = pairs.iter().map(|p| p.to_json()).collect();
        write_jsonl(&path, &lines)?;
        println!(
            "   replay: the base model's own answers to {} general requests make {:.0} % of the \
             training rows{}, so it keeps its general behaviour ({:.0} s)",
            pairs.len(),
            100.0 * args.replay_ratio,
            if args.kl_anchor > 0.0 {
                format!(
                    ", anchored to its own distribution (KL, λ = {})",
                    args.kl_anchor
                )
            } else {
                String::new()
            },
            t.elapsed().as_secs_f64()
        );
        replay_count = pairs.len();
        cfg.replay = Some(Replay::File(path));
        cfg.replay_ratio = args.replay_ratio;
        cfg.kl_anchor = args.kl_anchor;
    }
    drop(base);

    println!("5. training (progress below) …");
    let summary = train_with_progress(&cfg)?;
    if summary.interrupted {
        return Err(Error::Invalid(format!(
            "demo: interrupted after step {}; the partial run is in {}",
            summary.steps,
            cfg.out.display()
        )));
    }
    let adapter = summary
        .last_checkpoint
        .clone()
        .ok_or_else(|| Error::Invalid("demo: the run wrote no checkpoint".into()))?;
    // Read once: drawn as text now and as `loss.svg` with the report.
    let curve = LossCurve::from_metrics("LoRA", &cfg.out.join("metrics.jsonl"))?;
    print!("{}", loss_curve(&curve, 10, 60));

    println!("6. the fine-tuned model on the same prompts …");
    let mut tuned = Llama::load(&file)?;
    let set_adapters = edgetune::export::native::load_adapter(&adapter, tuned.config())?;
    tuned.set_adapters(Some(Arc::new(set_adapters)))?;
    let after = evaluate(&tuned, &tok, &suites, &opts)?;

    print_table(&before, &after, &summary);
    print_examples(&set, &suites, &before, &after);
    let report = json!({
        "model": model,
        "method": cfg.method.name(),
        "rank": cfg.lora.rank,
        "steps": summary.steps,
        "seq_len": cfg.seq_len,
        "batch": cfg.batch,
        "lr": cfg.lr,
        "max_tokens": args.max_tokens,
        "layers": cfg.lora.layers.map_or("all".to_string(), |r| r.to_string()),
        "system_prompt": synth::SYSTEM_PROMPT,
        "replay": replay_count,
        "replay_ratio": cfg.replay.as_ref().map(|_| cfg.replay_ratio),
        "kl_anchor": cfg.kl_anchor,
        "compute": cfg.compute,
        "time_s": start.elapsed().as_secs_f64(),
        "train_time_s": summary.elapsed_s,
        "tok_per_s": summary.tok_per_s,
        "planned_bytes": summary.planned_bytes,
        "peak_bytes": summary.peak_bytes,
        "loss_first": summary.first_loss,
        "loss_final": summary.final_loss,
        "heldout_before": before.heldout,
        "heldout_after": after.heldout,
        "retention_before": before.retention,
        "retention_after": after.retention,
        "refusal_rate_before": before.refusal_rate,
        "refusal_rate": after.refusal_rate,
        "false_refusal_rate_before": before.false_refusal_rate,
        "false_refusal_rate": after.false_refusal_rate,
        "seed_cases_before": before.seed,
        "seed_cases_after": after.seed,
        "cases": {
            "heldout": suites.heldout.cases.len(),
            "harmful": suites.harmful.cases.len(),
            "retention": suites.retention.cases.len(),
            "seed": suites.seed.cases.len(),
        },
        "adapter": adapter,
        "answers_before": before.answers,
        "answers_after": after.answers,
    });
    let path = dir.join("demo.json");
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
    std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    let svg_path = dir.join("loss.svg");
    let title = format!("edgetune demo: training loss, LoRA r={}", cfg.lora.rank);
    std::fs::write(&svg_path, loss_svg(&title, &[curve])?).map_err(|e| Error::io(&svg_path, e))?;
    println!(
        "\n{} and {} written; the whole demo took {:.0} s. Export the adapter for llama.cpp with:\n  \
         edgetune export --model {} --adapter {} --format gguf --out {}",
        path.display(),
        svg_path.display(),
        start.elapsed().as_secs_f64(),
        model.display(),
        adapter.display(),
        dir.join("adapter.gguf").display()
    );
    Ok(())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

/// Writes the training conversations (`train.jsonl`) and the eval suites under `DIR/data/`.
fn write_data(dir: &Path, set: &AssistantSet) -> Result<()> {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io(&data, e))?;
    let train: Vec<serde_json::Value> = set.train.iter().map(|p| p.to_json()).collect();
    let train_path = data.join("train.jsonl");
    write_jsonl(&train_path, &train)?;
    for (name, cases) in [
        ("heldout.jsonl", &set.heldout),
        ("harmful.jsonl", &set.harmful),
        ("retention.jsonl", &set.retention),
        ("seed.jsonl", &set.seed_cases),
    ] {
        let lines: Vec<serde_json::Value> = cases.iter().map(|c| c.to_json()).collect();
        write_jsonl(&data.join(name), &lines)?;
    }
    Ok(())
}

/// `DIR/run`, emptied of an earlier demo run (recognised by its `metrics.jsonl`); anything
/// else there is left alone and refused.
fn fresh_run_dir(dir: &Path) -> Result<PathBuf> {
    let run = dir.join("run");
    if run.exists() {
        if !run.join("metrics.jsonl").exists() && !run.join("checkpoints").exists() {
            return Err(Error::Invalid(format!(
                "{} exists and is not an earlier demo run; move it away or pick another --dir",
                run.display()
            )));
        }
        std::fs::remove_dir_all(&run).map_err(|e| Error::io(&run, e))?;
    }
    Ok(run)
}

/// [`measure`] with a progress bar on a terminal.
fn evaluate(
    llama: &Llama,
    tok: &Tokenizer,
    suites: &AssistantSuites,
    opts: &EvalOptions,
) -> Result<AssistantMeasure> {
    let t = Instant::now();
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(suites.len() as u64);
        b.set_style(
            ProgressStyle::with_template("   {bar:30} {pos}/{len} prompts  [{elapsed_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    });
    let m = measure(llama, tok, suites, opts, || {
        if let Some(b) = &bar {
            b.inc(1);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "   held-out {:.0} %, general knowledge {:.0} %, harmful refused {:.0} %, benign refused \
         {:.0} % ({} prompts in {:.0} s)",
        100.0 * m.heldout,
        100.0 * m.retention,
        100.0 * m.refusal_rate,
        100.0 * m.false_refusal_rate,
        suites.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(m)
}

fn print_table(before: &AssistantMeasure, after: &AssistantMeasure, s: &Summary) {
    let pct = |x: f64| format!("{:.0} %", 100.0 * x);
    println!("\n7. before → after");
    println!("   | measure                          | before | after  |");
    println!("   |----------------------------------|-------:|-------:|");
    for (name, b, a) in [
        ("held-out prompts passed", before.heldout, after.heldout),
        ("general knowledge kept", before.retention, after.retention),
        (
            "seed cases (Fibonacci, 9.11 vs 9.9)",
            before.seed,
            after.seed,
        ),
        (
            "harmful prompts refused",
            before.refusal_rate,
            after.refusal_rate,
        ),
        (
            "benign prompts refused (lower is better)",
            before.false_refusal_rate,
            after.false_refusal_rate,
        ),
    ] {
        println!("   | {name:<32} | {:>6} | {:>6} |", pct(b), pct(a));
    }
    if let (Some(a), Some(b)) = (s.first_loss, s.final_loss) {
        println!(
            "   training: loss {a:.3} → {b:.3} in {} steps, {:.0} s, {:.0} tok/s; planned {:.1} \
             MiB, peak RSS {}",
            s.steps,
            s.elapsed_s,
            s.tok_per_s,
            mib(s.planned_bytes),
            s.peak_bytes
                .map_or("not measured".into(), |p| format!("{:.1} MiB", mib(p)))
        );
    }
}

/// One held-out prompt of each kind, answered before and after.
fn print_examples(
    set: &AssistantSet,
    suites: &AssistantSuites,
    before: &AssistantMeasure,
    after: &AssistantMeasure,
) {
    println!("\n8. a few held-out prompts, before → after:");
    let mut shown = std::collections::HashSet::new();
    let all: Vec<&synth::HeldoutCase> = set
        .heldout
        .iter()
        .chain(&set.harmful)
        .chain(&set.retention)
        .collect();
    let in_suites = |id: &str| {
        [&suites.heldout, &suites.harmful, &suites.retention]
            .iter()
            .any(|s| s.cases.iter().any(|c| c.id == id))
    };
    for case in all {
        if !in_suites(&case.id) || !shown.insert(case.task) {
            continue;
        }
        let find = |m: &AssistantMeasure| {
            m.answers
                .iter()
                .find(|(id, _)| *id == case.id)
                .map(|(_, a)| one_line(a))
                .unwrap_or_default()
        };
        println!("   [{}] {}", case.task, one_line(&case.input));
        println!("     before: {}", find(before));
        println!("     after:  {}", find(after));
    }
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(110) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}
