//! `edgetune inspect FILE [--json] [--tensor NAME --dequantize OUT.npy]`.

use std::path::PathBuf;

use edgetune::gguf::GgufFile;
use edgetune::inspect::{self, Report};
use edgetune::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF file (a model or an adapter).
    file: PathBuf,
    /// Print the report as one JSON document.
    #[arg(long)]
    json: bool,
    /// With --dequantize: the tensor to export.
    #[arg(long, requires = "dequantize")]
    tensor: Option<String>,
    /// Write --tensor dequantized to f32 as a .npy array of shape [ne1, ne0] ([ne0] for 1-D).
    #[arg(long, value_name = "OUT.npy", requires = "tensor")]
    dequantize: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let file = GgufFile::open(&args.file)?;
    if let (Some(name), Some(out)) = (&args.tensor, &args.dequantize) {
        inspect::dequantize_to_npy(&file, name, out)?;
        let (info, _) = file.tensor_by_name(name)?;
        eprintln!(
            "wrote {} ({} {:?} → f32 {:?})",
            out.display(),
            info.ty,
            info.dims,
            inspect::npy_shape(info)
        );
        return Ok(());
    }
    let report = inspect::report(&file)?;
    if args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| Error::Invalid(e.to_string()))?;
        println!("{text}");
    } else {
        print_text(&report);
    }
    Ok(())
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

fn print_text(r: &Report) {
    println!("file          {} ({})", r.file, human_bytes(r.file_bytes));
    println!(
        "gguf          v{}, alignment {}, data at byte {}",
        r.gguf_version, r.alignment, r.data_offset
    );
    println!(
        "architecture  {}",
        r.architecture.as_deref().unwrap_or("(none)")
    );
    if let Some(name) = &r.name {
        println!("name          {name}");
    }
    if !r.hyperparameters.is_empty() {
        println!("\nhyper-parameters");
        for (k, v) in &r.hyperparameters {
            println!("  {k:<48} {v}");
        }
    }
    if let Some(t) = &r.tokenizer {
        println!("\ntokenizer");
        println!(
            "  model {} (pre {}), {} tokens ({} special), {} merges, bos {}, eos {}, chat template: {}",
            t.model.as_deref().unwrap_or("?"),
            t.pre.as_deref().unwrap_or("-"),
            t.tokens,
            t.special_tokens,
            t.merges,
            t.bos_token_id.map_or("-".into(), |v| v.to_string()),
            t.eos_token_id.map_or("-".into(), |v| v.to_string()),
            if t.has_chat_template { "yes" } else { "no" },
        );
    }
    let other: Vec<_> = r
        .metadata
        .iter()
        .filter(|(k, _)| !k.starts_with("tokenizer.ggml."))
        .collect();
    if !other.is_empty() {
        println!("\nmetadata");
        for (k, v) in other {
            let text = v.to_string();
            let shown: String = text.chars().take(100).collect();
            println!(
                "  {k:<48} {shown}{}",
                if text.chars().count() > 100 {
                    "…"
                } else {
                    ""
                }
            );
        }
    }
    println!("\ntensors ({})", r.tensors.len());
    let width = r
        .tensors
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    println!(
        "  {:<width$}  {:<22} {:<7} {:>12}",
        "name", "shape (ne)", "type", "bytes"
    );
    for t in &r.tensors {
        let shape = format!("{:?}", t.shape);
        println!(
            "  {:<width$}  {:<22} {:<7} {:>12}",
            t.name, shape, t.ty, t.bytes
        );
    }
    println!("\ntotals by type");
    println!(
        "  {:<7} {:>7} {:>15} {:>12} {:>7}",
        "type", "tensors", "elements", "size", "bpw"
    );
    for t in &r.totals_by_type {
        println!(
            "  {:<7} {:>7} {:>15} {:>12} {:>7.3}",
            t.ty,
            t.tensors,
            t.elements,
            human_bytes(t.bytes),
            t.bits_per_weight
        );
    }
    println!(
        "  {:<7} {:>7} {:>15} {:>12}",
        "all",
        r.tensors.len(),
        r.total_elements,
        human_bytes(r.total_tensor_bytes)
    );
}
