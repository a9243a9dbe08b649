//! `edgetune quantize --in F16_OR_F32.gguf --out FILE --type q4_1 [--icq [--icq-lambda L]
//! [--icq-n N]] [--json]`: quantizes a full-precision GGUF's 2-D weights into a new standard
//! GGUF, with ggml's plain rule or (Q4_1) IR-QLoRA's entropy-maximising ICQ search
//! (docs/METHODS.md#ir-qlora-icq), and reports each tensor's quantization error and code entropy.

use std::path::PathBuf;

use edgetune::export::requantize::{QuantizeOptions, quantize_gguf};
use edgetune::gguf::GgufFile;
use edgetune::quant::GgmlType;
use edgetune::quant::icq::IcqParams;
use edgetune::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The full-precision model (F32, F16 or BF16 weights).
    #[arg(long = "in")]
    input: PathBuf,
    /// The quantized model to write.
    #[arg(long)]
    out: PathBuf,
    /// Type of the quantized 2-D tensors (ICQ needs q4_1).
    #[arg(long = "type", default_value = "q4_1")]
    ty: String,
    /// Choose each Q4_1 block's scale and offset by ICQ's entropy-maximising search.
    #[arg(long)]
    icq: bool,
    /// ICQ: half-width of the offset grid, in units of σ·max|w − median| (`λ` of
    /// docs/METHODS.md#ir-qlora-icq).
    #[arg(long, default_value_t = 0.1)]
    icq_lambda: f32,
    /// ICQ: the grid has 2·N + 1 offsets.
    #[arg(long, default_value_t = 100)]
    icq_n: usize,
    /// Print the report as JSON (instead of one line per tensor).
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let ty = GgmlType::from_name(&args.ty)
        .ok_or_else(|| Error::Invalid(format!("unknown type `{}` (try q4_1)", args.ty)))?;
    let opts = QuantizeOptions {
        ty,
        icq: args.icq.then_some(IcqParams {
            lambda: args.icq_lambda,
            n: args.icq_n,
        }),
    };
    let input = GgufFile::open(&args.input)?;
    let quiet = args.json;
    let report = quantize_gguf(&input, &args.out, opts, &mut |t| {
        if !quiet {
            let entropy = t
                .mean_entropy
                .map(|h| format!("  entropy {h:.3} bits"))
                .unwrap_or_default();
            let moved = t
                .icq_moved_blocks
                .map(|m| format!("  ICQ moved {m}/{} blocks", t.blocks))
                .unwrap_or_default();
            println!(
                "{:<28} {:>4} → {:<5} rms(W) {:.3e}  rms error {:.3e} (max {:.3e}){entropy}{moved}",
                t.name, t.from, t.to, t.rms_weight, t.rms_error, t.max_abs_error
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
            "{}: {} tensors quantized{} (rms error {:.3e}), {} copied unchanged",
            args.out.display(),
            report.quantized.len(),
            if report.icq { " with ICQ" } else { "" },
            report.rms_error,
            report.copied
        );
    }
    Ok(())
}
