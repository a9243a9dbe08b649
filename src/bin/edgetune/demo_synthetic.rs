//! `edgetune demo --synthetic`: the whole path on built-in data, no download — a seeded test
//! model and the generated IoT task set are written into DIR, the memory plan is printed, a
//! LoRA adapter is trained on the CPU, the loss curve is drawn as text, and a few held-out
//! prompts are answered before and after.
//!
//! What it shows, honestly: a small model with RANDOM weights (it knows no language) learning
//! the synthetic set's format and frequent strings from scratch through its adapters. The loss
//! falls and the answers move toward the set's patterns; they are not correct answers.

use std::path::PathBuf;
use std::sync::Arc;

use edgetune::data::synth;
use edgetune::eval::plot::LossCurve;
use edgetune::gguf::GgufFile;
use edgetune::infer::{GenerateOptions, SamplingParams, generate};
use edgetune::model::Llama;
use edgetune::testmodel::{self, WeightTypes};
use edgetune::tokenizer::{Tokenizer, template};
use edgetune::train::budget;
use edgetune::train::{Summary, TrainConfig};
use edgetune::{Error, Result};

use crate::data_cmd::write_jsonl;
use crate::demo_cmd::Args;
use crate::train_cmd::train_with_progress;

/// Held-out prompts answered before and after training.
const SHOWN: usize = 3;

/// The synthetic demo's defaults: the test models' byte vocabulary makes a token of every
/// byte, so Alpaca prompts need long rows.
const STEPS: u64 = 60;
const SEQ_LEN: usize = 512;
const BATCH: usize = 2;

pub fn run(args: &Args) -> Result<()> {
    let steps = args.steps.unwrap_or(STEPS);
    let dir = &args.dir;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let preset = testmodel::preset(&args.preset)?;
    let model = dir.join(format!("{}-{}.gguf", preset.name, args.r#type));
    println!(
        "1. test model: {} ({} preset, {}, random weights)",
        model.display(),
        preset.name,
        args.r#type
    );
    testmodel::write_test_model(&preset, WeightTypes::parse(&args.r#type)?, 1, &model)?;
    let (train, heldout) = synth::generate(7, 2000);
    let train_path = dir.join("iot-train.jsonl");
    let heldout_path = dir.join("iot-heldout.jsonl");
    write_jsonl(&train_path, &train)?;
    write_jsonl(&heldout_path, &heldout)?;
    println!(
        "2. data: {} training and {} held-out examples of the synthetic IoT set (EN + ID) in {}",
        train.len(),
        heldout.len(),
        dir.display()
    );

    let cfg = TrainConfig {
        model: model.clone(),
        data: train_path,
        out: dir.join("run"),
        // A demo run again into the same --dir replaces the previous one.
        overwrite: true,
        steps: Some(steps),
        seq_len: args.seq_len.unwrap_or(SEQ_LEN),
        batch: args.batch.unwrap_or(BATCH),
        pack: true,
        lr: 2e-3,
        warmup_steps: steps / 10,
        decay: edgetune::train::Decay::Cosine,
        ..TrainConfig::default()
    };
    let file = GgufFile::open(&model)?;
    let planned = budget::plan_training(&file, &cfg)?;
    println!(
        "3. memory plan (LoRA r={}, all 7 projections, {} × {} tokens):",
        cfg.lora.rank, cfg.batch, cfg.seq_len
    );
    println!("{}", planned.breakdown.report());

    let tok = Tokenizer::from_gguf(&file)?;
    let prompts: Vec<&edgetune::data::AlpacaExample> = heldout.iter().take(SHOWN).collect();
    let before = answers(&file, &tok, &prompts, None)?;
    println!("4. training {steps} steps (progress below) …");
    let summary = train_with_progress(&cfg)?;
    if summary.interrupted {
        return Err(Error::Invalid(format!(
            "demo: interrupted after step {}; the partial run is in {}",
            summary.steps,
            cfg.out.display()
        )));
    }
    println!("5. loss per step:");
    let curve = LossCurve::from_metrics("LoRA", &cfg.out.join("metrics.jsonl"))?;
    print!("{}", loss_curve(&curve, 12, 60));
    report(&summary);
    let adapter = summary
        .last_checkpoint
        .clone()
        .ok_or_else(|| Error::Invalid("demo: the run wrote no checkpoint".into()))?;
    let after = answers(&file, &tok, &prompts, Some(&adapter))?;
    println!("6. held-out prompts, before → after:");
    for ((ex, b), a) in prompts.iter().zip(&before).zip(&after) {
        println!(
            "   prompt:   {}",
            one_line(&format!("{} {}", ex.instruction, ex.input))
        );
        println!("   expected: {}", one_line(&ex.output));
        println!("   before:   {}", one_line(b));
        println!("   after:    {}", one_line(a));
        println!();
    }
    println!(
        "Note: the base model has random weights, so it knows no language; the adapter learns \
         the set's format and frequent strings, not correct answers. Train on a real Llama GGUF \
         with `edgetune train` for that."
    );
    Ok(())
}

/// Greedy answers to `prompts` (Alpaca template), with the adapter at `adapter` if given.
fn answers(
    file: &GgufFile,
    tok: &Tokenizer,
    prompts: &[&edgetune::data::AlpacaExample],
    adapter: Option<&PathBuf>,
) -> Result<Vec<String>> {
    let mut llama = Llama::load(file)?;
    if let Some(dir) = adapter {
        let set = edgetune::export::native::load_adapter(dir, llama.config())?;
        llama.set_adapters(Some(Arc::new(set)))?;
    }
    let opts = GenerateOptions {
        max_tokens: 48,
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        stop_at_eos: true,
    };
    prompts
        .iter()
        .map(|ex| {
            let input = (!ex.input.is_empty()).then_some(ex.input.as_str());
            let rendered = template::alpaca(&ex.instruction, input, None);
            let ids = tok.encode(rendered.prompt(), tok.add_bos_default(), false)?;
            let mut text = String::new();
            generate(&llama, tok, &ids, &opts, |piece| {
                text.push_str(piece);
                true
            })?;
            Ok(text)
        })
        .collect()
}

fn one_line(s: &str) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &flat[..i]),
        None => flat,
    }
}

fn report(s: &Summary) {
    if let (Some(a), Some(b)) = (s.first_loss, s.final_loss) {
        println!(
            "   loss {a:.3} → {b:.3} in {} steps, {:.1} s, {:.0} tok/s",
            s.steps, s.elapsed_s, s.tok_per_s
        );
    }
    if let Some(p) = s.peak_bytes {
        println!(
            "   planned {:.1} MiB, measured peak RSS {:.1} MiB",
            s.planned_bytes as f64 / 1048576.0,
            p as f64 / 1048576.0
        );
    }
}

/// A run's losses as a text plot, `rows` high and at most `width` wide.
pub fn loss_curve(curve: &LossCurve, rows: usize, width: usize) -> String {
    let losses: Vec<f64> = curve.points.iter().map(|&(_, loss)| loss).collect();
    if losses.is_empty() {
        return "   (no steps)\n".into();
    }
    // Average into at most `width` columns.
    let cols = losses.len().min(width);
    let col: Vec<f64> = (0..cols)
        .map(|c| {
            let (a, b) = (
                c * losses.len() / cols,
                ((c + 1) * losses.len() / cols).max(c * losses.len() / cols + 1),
            );
            losses[a..b].iter().sum::<f64>() / (b - a) as f64
        })
        .collect();
    let (lo, hi) = col
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let span = (hi - lo).max(1e-9);
    let mut out = String::new();
    for r in 0..rows {
        let level = hi - span * r as f64 / (rows - 1).max(1) as f64;
        out.push_str(&format!("   {level:7.3} │"));
        for &v in &col {
            let row = ((hi - v) / span * (rows - 1) as f64).round() as usize;
            out.push(if row == r { '●' } else { ' ' });
        }
        out.push('\n');
    }
    out.push_str(&format!("           └{}\n", "─".repeat(cols)));
    out.push_str(&format!(
        "            step 1{:>w$}\n",
        losses.len(),
        w = cols.saturating_sub(6)
    ));
    out
}
