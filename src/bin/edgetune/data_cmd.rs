//! `edgetune data synth --out FILE [--n N] [--seed S] [--heldout FILE2]` writes the built-in
//! synthetic IoT set as Alpaca JSONL; `edgetune data check FILE [--format F] [--model M
//! --seq-len L --pack]` reads a dataset, checks every record and prints what it holds.

use std::io::Write;
use std::path::{Path, PathBuf};

use edgetune::data::{self, BatchConfig, Batcher, Format, TokenizeOptions, synth};
use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

#[derive(clap::Subcommand)]
enum DataCommand {
    /// Write the synthetic IoT instruction set (English + Indonesian) as Alpaca JSONL.
    Synth(SynthArgs),
    /// Read a dataset, check every record, and print its format and size.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct SynthArgs {
    /// Where to write the training examples (JSONL).
    #[arg(long)]
    out: PathBuf,
    /// Number of training examples.
    #[arg(long, default_value_t = 2000)]
    n: usize,
    /// Seed: the same seed gives the same file.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the held-out split (tasks: n/10 Alpaca examples; assistant: an eval suite),
    /// prompts distinct from the training ones.
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Which set: `tasks` (computed answers as Alpaca records; what random-weights test models
    /// learn) or `assistant` (chat conversations about fictional devices for a real pretrained
    /// model: facts, telemetry → JSON, alarm triage, refusals; `--n` is ignored).
    #[arg(long, value_enum, default_value_t = SynthSet::Tasks)]
    set: SynthSet,
    /// Assistant set: write its other eval suites into this directory too (harmful.jsonl:
    /// must be refused; retention.jsonl: general knowledge; seed.jsonl: the seed cases).
    #[arg(long)]
    suites: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum SynthSet {
    Tasks,
    Assistant,
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The dataset (JSON array, JSONL or .txt).
    file: PathBuf,
    /// alpaca, chat, text or pretokenized (default: detected from the first record).
    #[arg(long)]
    format: Option<Format>,
    /// A model GGUF: also tokenize and report token counts with its tokenizer.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sequence length for the token report.
    #[arg(long, default_value_t = 512)]
    seq_len: usize,
    /// Pack examples into rows for the token report.
    #[arg(long)]
    pack: bool,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        DataCommand::Synth(a) => synth_cmd(a),
        DataCommand::Check(a) => check_cmd(a),
    }
}

fn synth_cmd(a: SynthArgs) -> Result<()> {
    if a.set == SynthSet::Assistant {
        return assistant_cmd(&a);
    }
    if a.suites.is_some() {
        return Err(Error::Invalid(
            "--suites is for --set assistant (the tasks set has no eval suites)".into(),
        ));
    }
    let (train, heldout) = synth::generate(a.seed, a.n);
    write_jsonl(&a.out, &train)?;
    eprintln!("{}: {} examples", a.out.display(), train.len());
    if let Some(path) = &a.heldout {
        write_jsonl(path, &heldout)?;
        eprintln!("{}: {} held-out examples", path.display(), heldout.len());
    }
    Ok(())
}

fn assistant_cmd(a: &SynthArgs) -> Result<()> {
    let set = synth::assistant_set(a.seed, synth::AssistantSizes::default());
    let lines = |cases: &[synth::HeldoutCase]| -> Vec<serde_json::Value> {
        cases.iter().map(|c| c.to_json()).collect()
    };
    let train: Vec<serde_json::Value> = set.train.iter().map(|p| p.to_json()).collect();
    write_jsonl(&a.out, &train)?;
    eprintln!("{}: {} conversations", a.out.display(), train.len());
    if let Some(path) = &a.heldout {
        write_jsonl(path, &lines(&set.heldout))?;
        eprintln!("{}: {} held-out cases", path.display(), set.heldout.len());
    }
    if let Some(dir) = &a.suites {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        for (name, cases) in [
            ("harmful.jsonl", &set.harmful),
            ("retention.jsonl", &set.retention),
            ("seed.jsonl", &set.seed_cases),
        ] {
            let path = dir.join(name);
            write_jsonl(&path, &lines(cases))?;
            eprintln!("{}: {} cases", path.display(), cases.len());
        }
    }
    Ok(())
}

/// Writes one JSON object per line, through a temporary file renamed into place; a missing
/// parent directory is created.
pub(crate) fn write_jsonl<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let tmp = path.with_extension("partial");
    let io = |e| Error::io(&tmp, e);
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    for ex in items {
        let line = serde_json::to_string(ex).map_err(|e| Error::Invalid(e.to_string()))?;
        writeln!(w, "{line}").map_err(io)?;
    }
    w.into_inner()
        .map_err(|e| Error::io(&tmp, e.into_error()))?
        .sync_all()
        .map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn check_cmd(a: CheckArgs) -> Result<()> {
    let ds = data::load(&a.file, a.format)?;
    println!(
        "{}: {} records, format {}",
        a.file.display(),
        ds.len(),
        ds.format
    );
    let Some(model) = &a.model else {
        return Ok(());
    };
    let file = GgufFile::open(model)?;
    let tok = Tokenizer::from_gguf(&file)?;
    let chat = data::chat_template_for(&file, &tok, &ds)?;
    let opts = TokenizeOptions {
        chat_template: chat.as_ref(),
        ..TokenizeOptions::default()
    };
    let examples = data::tokenize_all(&tok, &ds, &opts)?;
    let lens: Vec<usize> = examples.iter().map(|e| e.ids.len()).collect();
    let total: usize = lens.iter().sum();
    println!(
        "tokens: {total} in all, {} per record on average, longest {}",
        total / lens.len().max(1),
        lens.iter().max().copied().unwrap_or(0)
    );
    let cfg = BatchConfig {
        seq_len: a.seq_len,
        batch_size: 1,
        pack: a.pack,
        seed: 0,
        epochs: Some(1),
        max_steps: None,
        pad_id: tok.eos_ids().first().copied().unwrap_or(0),
    };
    let s = Batcher::new(&examples, cfg)?.stats();
    println!(
        "at seq-len {}{}: {} rows, {} truncated, {} left out (no target), {} target tokens",
        a.seq_len,
        if a.pack { " packed" } else { "" },
        s.rows,
        s.truncated,
        s.dropped,
        s.targets
    );
    Ok(())
}
