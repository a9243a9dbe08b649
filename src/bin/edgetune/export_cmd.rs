//! `edgetune export --model M --adapter PATH --format gguf|peft|native --out PATH
//! [--dtype f32|f16|bf16|q8_0] [--base-name ID] [--task NAME] [--json]`: converts an adapter
//! (any format edgetune reads) for llama.cpp, Hugging Face PEFT, or our own format. An MT-LoRA
//! checkpoint exports one task (`--task`, default its first) as a plain LoRA of rank
//! `r_sh + r_t`.

use std::path::PathBuf;

use clap::ValueEnum;
use edgetune::export::{self, AdapterFormat, PeftOptions, native};
use edgetune::gguf::GgufFile;
use edgetune::model::LlamaConfig;
use edgetune::quant::GgmlType;
use edgetune::train::{method_io, method_tasks};
use edgetune::{Error, Result};
use serde_json::{Value as Json, json};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Format {
    /// llama.cpp LoRA GGUF (`llama-cli --lora FILE`).
    Gguf,
    /// Hugging Face PEFT directory (adapter_config.json + adapter_model.safetensors).
    Peft,
    /// edgetune's own directory (adapter.json + adapter.safetensors).
    Native,
}

#[derive(clap::Args)]
pub struct Args {
    /// The base model GGUF the adapter belongs to (checked against; its name and SHA-256 go
    /// into a PEFT README).
    #[arg(long)]
    model: PathBuf,
    /// The adapter: an edgetune or PEFT directory, or a GGUF adapter file.
    #[arg(long)]
    adapter: PathBuf,
    #[arg(long, value_enum)]
    format: Format,
    /// Output file (gguf) or directory (peft, native).
    #[arg(long)]
    out: PathBuf,
    /// Tensor type: f32, f16, bf16 (gguf, peft) or q8_0 (gguf; rows that cannot be q8_0 are
    /// f16). Native is always f32.
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// mtlora checkpoints: the task to export (a name of the training data's `task` field);
    /// default: the checkpoint's plain-LoRA files, which hold its first task.
    #[arg(long, value_name = "NAME")]
    task: Option<String>,
    /// `base_model_name_or_path` for PEFT (a Hugging Face id).
    #[arg(long)]
    base_name: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let file = GgufFile::open(&args.model)?;
    let model = LlamaConfig::from_gguf(&file)?;
    let (source, source_path) = export::detect_format(&args.adapter)?;
    let set = match &args.task {
        None => export::load_any(&args.adapter, &model)?,
        Some(name) => {
            if !method_io::has_method_state(&args.adapter) {
                return Err(Error::Invalid(format!(
                    "--task {name}: {} is not an edgetune method checkpoint (only MT-LoRA \
                     checkpoints have tasks)",
                    args.adapter.display()
                )));
            }
            let mut set = method_io::load_set(&args.adapter, &file)?;
            method_tasks::select_task(&mut set, name)?;
            set
        }
    };
    let dtype = GgmlType::from_name(&args.dtype)
        .ok_or_else(|| Error::Invalid(format!("unknown --dtype `{}`", args.dtype)))?;
    // Our format carries the training configuration and metrics; pass them on.
    let notes = match source {
        AdapterFormat::Native => Json::Object(native::extra_meta(&source_path)?),
        _ => Json::Null,
    };
    let report = match args.format {
        Format::Gguf => {
            let r = export::export_gguf(&set, &model, &args.out, dtype)?;
            json!({"format": "gguf", "alpha": r.alpha, "tensors": r.tensors, "folded": r.folded})
        }
        Format::Peft => {
            let opts = PeftOptions {
                dtype,
                base_model_name_or_path: args.base_name.clone(),
                base_file: Some(args.model.clone()),
                notes,
            };
            let r = export::export_peft(&set, &model, &args.out, &opts)?;
            json!({"format": "peft", "dtype": r.dtype, "tensors": r.tensors.len(),
                   "folded": r.folded, "base_sha256": r.base_sha256})
        }
        Format::Native => {
            if dtype != GgmlType::F32 {
                return Err(Error::Invalid("the native format stores f32 only".into()));
            }
            let extra = match notes {
                Json::Null => json!({"exported_from": args.adapter.display().to_string()}),
                other => other,
            };
            export::save_adapter(&set, &args.out, &extra)?;
            json!({"format": "native", "tensors": 2 * set.len()})
        }
    };
    if args.json {
        let mut r = report;
        r["adapters"] = set.len().into();
        if let Some(t) = &args.task {
            r["task"] = t.clone().into();
        }
        r["out"] = args.out.display().to_string().into();
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Error::Invalid(e.to_string()))?
        );
    } else {
        println!(
            "{}: {} adapted linears ({:?} source) → {} ({:?})",
            args.adapter.display(),
            set.len(),
            source,
            args.out.display(),
            args.format
        );
        if let Some(f) = report
            .get("folded")
            .and_then(Json::as_array)
            .filter(|f| !f.is_empty())
        {
            println!("scale folded into lora_B for {} modules", f.len());
        }
    }
    Ok(())
}
