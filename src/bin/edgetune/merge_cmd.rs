//! `edgetune merge --model M --adapter A --out MERGED.gguf [--type same|f32|f16|q8_0|q4_k|…]
//! [--json]`: bakes an adapter into a new GGUF, streaming, and reports the re-quantization
//! error added to each merged tensor.

use std::path::PathBuf;

use edgetune::export::{self, MergeType};
use edgetune::gguf::GgufFile;
use edgetune::model::LlamaConfig;
use edgetune::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The base model GGUF.
    #[arg(long)]
    model: PathBuf,
    /// The adapter: an edgetune or PEFT directory, or a GGUF adapter file.
    #[arg(long)]
    adapter: PathBuf,
    /// The merged model to write.
    #[arg(long)]
    out: PathBuf,
    /// Type of the merged tensors: `same` (each tensor's own) or a type edgetune writes.
    #[arg(long = "type", default_value = "same")]
    ty: String,
    /// Print the report as JSON (instead of one line per tensor).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let ty = MergeType::parse(&args.ty)?;
    let file = GgufFile::open(&args.model)?;
    let model = LlamaConfig::from_gguf(&file)?;
    // A DoRA or HiRA checkpoint has no plain-LoRA form: rebuild it on the base.
    let method_only = edgetune::train::method_io::has_method_state(&args.adapter)
        && !args.adapter.join(export::native::ADAPTER_JSON).is_file();
    let set = if method_only {
        edgetune::train::method_io::load_set(&args.adapter, &file)?
    } else {
        export::load_any(&args.adapter, &model)?
    };
    let quiet = args.json;
    let report = export::merge_adapter(&file, &set, &args.out, ty, &mut |m| {
        if !quiet {
            println!(
                "{:<28} {:>5} → {:<5} rms(ΔW) {:.3e}  added rms error {:.3e} (max {:.3e})",
                m.name, m.from, m.to, m.rms_delta, m.rms_quant_error, m.max_abs_quant_error
            );
        }
    })?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?
        );
    } else {
        println!(
            "{}: {} tensors merged, {} copied unchanged",
            args.out.display(),
            report.merged.len(),
            report.copied
        );
    }
    Ok(())
}
