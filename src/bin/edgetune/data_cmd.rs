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
    /// Also write the held-out split (n/10 examples, prompts distinct from the training ones).
    #[arg(long)]
    heldout: Option<PathBuf>,
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
    let (train, heldout) = synth::generate(a.seed, a.n);
    write_jsonl(&a.out, &train)?;
    eprintln!("{}: {} examples", a.out.display(), train.len());
    if let Some(path) = &a.heldout {
        write_jsonl(path, &heldout)?;
        eprintln!("{}: {} held-out examples", path.display(), heldout.len());
    }
    Ok(())
}

/// Writes one JSON object per line, through a temporary file renamed into place.
pub(crate) fn write_jsonl(path: &Path, items: &[data::AlpacaExample]) -> Result<()> {
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
