//! `edgetune export --model M --adapter PATH --format gguf|peft|native --out PATH
//! [--dtype f32|f16|bf16|q8_0] [--base-name ID] [--task NAME | --all-tasks] [--json]`: converts
//! an adapter (any format edgetune reads) for llama.cpp, Hugging Face PEFT, or our own format.
//! An MT-LoRA checkpoint exports one task (`--task`, default its first) as a plain LoRA of rank
//! `r_sh + r_t`, or every task with `--all-tasks`: task `T` goes to `<stem>.T.<ext>` beside a
//! gguf `--out` (`a/b.gguf` → `a/b.T.gguf`) and to `<out>/T/` for the directory formats, each
//! exactly what `--task T --out` that path writes.

use std::path::{Path, PathBuf};

use clap::ValueEnum;
use edgetune::export::{self, AdapterFormat, PeftOptions, native};
use edgetune::gguf::GgufFile;
use edgetune::model::LlamaConfig;
use edgetune::quant::GgmlType;
use edgetune::train::{AdapterSet, method_io, method_tasks};
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
    #[arg(long, value_name = "NAME", conflicts_with = "all_tasks")]
    task: Option<String>,
    /// mtlora checkpoints: every task, one adapter each: `<stem>.<task>.<ext>` beside a gguf
    /// --out, `<out>/<task>/` for peft and native (each what --task <task> writes).
    #[arg(long)]
    all_tasks: bool,
    /// `base_model_name_or_path` for PEFT (a Hugging Face id).
    #[arg(long)]
    base_name: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    export::atomic::check_not_input(&args.out, &args.model, "base model")?;
    export::atomic::check_not_input(&args.out, &args.adapter, "adapter being exported")?;
    let file = GgufFile::open(&args.model)?;
    let model = LlamaConfig::from_gguf(&file)?;
    let (source, source_path) = export::detect_format(&args.adapter)?;
    let dtype = GgmlType::from_name(&args.dtype)
        .ok_or_else(|| Error::Invalid(format!("unknown --dtype `{}`", args.dtype)))?;
    // Our format carries the training configuration and metrics; pass them on.
    let notes = match source {
        AdapterFormat::Native => Json::Object(native::extra_meta(&source_path)?),
        _ => Json::Null,
    };
    if args.all_tasks {
        return run_all_tasks(&args, &file, &model, dtype, &notes);
    }
    let set = match &args.task {
        None => export::load_any(&args.adapter, &model)?,
        Some(name) => {
            let mut set = load_method_set(&args, &file, &format!("--task {name}"))?;
            method_tasks::select_task(&mut set, name)?;
            set
        }
    };
    let report = write_one(&args, &set, &model, dtype, &notes, &args.out)?;
    if args.json {
        let mut r = report;
        r["adapters"] = set.len().into();
        if let Some(t) = &args.task {
            r["task"] = t.clone().into();
        }
        r["out"] = args.out.display().to_string().into();
        print_json(&r)?;
    } else {
        println!(
            "{}: {} adapted linears ({:?} source) → {} ({:?})",
            args.adapter.display(),
            set.len(),
            source,
            args.out.display(),
            args.format
        );
        print_folded(&report);
        if args.task.is_none()
            && let Some(tasks) = mtlora_tasks(&args.adapter)
        {
            println!(
                "MT-LoRA checkpoint: exported its first task `{}` of [{}] (--task NAME or \
                 --all-tasks for the others)",
                tasks[0],
                tasks.join(", ")
            );
        }
    }
    Ok(())
}

/// `--all-tasks`: every task of an MT-LoRA checkpoint, each written as `--task NAME` would
/// write it, to [`task_out`]'s path.
fn run_all_tasks(
    args: &Args,
    file: &GgufFile,
    model: &LlamaConfig,
    dtype: GgmlType,
    notes: &Json,
) -> Result<()> {
    let mut set = load_method_set(args, file, "--all-tasks")?;
    let tasks = method_tasks::task_names(&set, "--all-tasks")?;
    // Every path first, so a name that cannot be a file name fails before anything is written.
    let outs = tasks
        .iter()
        .map(|t| task_out(&args.out, args.format, t))
        .collect::<Result<Vec<_>>>()?;
    let mut written = Vec::with_capacity(tasks.len());
    for (task, out) in tasks.iter().zip(&outs) {
        method_tasks::select_task(&mut set, task)?;
        let mut r = write_one(args, &set, model, dtype, notes, out)?;
        if !args.json {
            println!(
                "{} task {task}: {} adapted linears → {} ({:?})",
                args.adapter.display(),
                set.len(),
                out.display(),
                args.format
            );
            print_folded(&r);
        }
        r["task"] = task.clone().into();
        r["out"] = out.display().to_string().into();
        written.push(r);
    }
    if args.json {
        print_json(&json!({
            "adapters": set.len(),
            "tasks": written,
            "files": outs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        }))?;
    }
    Ok(())
}

/// Where `--all-tasks` writes task `task`: `<stem>.<task>.<ext>` beside a gguf `out` (no
/// extension: `<out>.<task>`), `out/<task>/` for the directory formats. A task name that is
/// not a plain file name (empty, `.`, `..`, a path separator or a control character) is an
/// error: that task can still be exported alone with `--task`.
fn task_out(out: &Path, format: Format, task: &str) -> Result<PathBuf> {
    let bad = task.is_empty()
        || task == "."
        || task == ".."
        || task
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if bad {
        return Err(Error::Invalid(format!(
            "--all-tasks: the task name {task:?} cannot be part of a file name; export it \
             alone with --task and --out"
        )));
    }
    Ok(match format {
        Format::Gguf => {
            let stem = out.file_stem().unwrap_or_default().to_string_lossy();
            let name = match out.extension() {
                Some(ext) => format!("{stem}.{task}.{}", ext.to_string_lossy()),
                None => format!("{stem}.{task}"),
            };
            out.with_file_name(name)
        }
        Format::Peft | Format::Native => out.join(task),
    })
}

/// The method state of `--adapter` (what `--task` and `--all-tasks` need); `flag` names the
/// option in the error.
fn load_method_set(args: &Args, file: &GgufFile, flag: &str) -> Result<AdapterSet> {
    if !method_io::has_method_state(&args.adapter) {
        return Err(Error::Invalid(format!(
            "{flag}: {} is not an edgetune method checkpoint (only MT-LoRA checkpoints have \
             tasks)",
            args.adapter.display()
        )));
    }
    method_io::load_set(&args.adapter, file)
}

/// The task names of an MT-LoRA checkpoint directory (`None` for anything else).
fn mtlora_tasks(dir: &Path) -> Option<Vec<String>> {
    let meta = method_io::read_meta(dir).ok()?;
    let tasks = meta.method_opts.mtlora_tasks;
    (meta.method.task_routed() && !tasks.is_empty()).then_some(tasks)
}

/// Writes `set` to `out` in `args.format`; the format's report.
fn write_one(
    args: &Args,
    set: &AdapterSet,
    model: &LlamaConfig,
    dtype: GgmlType,
    notes: &Json,
    out: &Path,
) -> Result<Json> {
    Ok(match args.format {
        Format::Gguf => {
            let r = export::export_gguf(set, model, out, dtype)?;
            json!({"format": "gguf", "alpha": r.alpha, "tensors": r.tensors, "folded": r.folded})
        }
        Format::Peft => {
            let opts = PeftOptions {
                dtype,
                base_model_name_or_path: args.base_name.clone(),
                base_file: Some(args.model.clone()),
                notes: notes.clone(),
            };
            let r = export::export_peft(set, model, out, &opts)?;
            json!({"format": "peft", "dtype": r.dtype, "tensors": r.tensors.len(),
                   "folded": r.folded, "base_sha256": r.base_sha256})
        }
        Format::Native => {
            if dtype != GgmlType::F32 {
                return Err(Error::Invalid("the native format stores f32 only".into()));
            }
            let extra = match notes {
                Json::Null => json!({"exported_from": args.adapter.display().to_string()}),
                other => other.clone(),
            };
            export::save_adapter(set, out, &extra)?;
            json!({"format": "native", "tensors": 2 * set.len()})
        }
    })
}

fn print_folded(report: &Json) {
    if let Some(f) = report
        .get("folded")
        .and_then(Json::as_array)
        .filter(|f| !f.is_empty())
    {
        println!("scale folded into lora_B for {} modules", f.len());
    }
}

fn print_json(v: &Json) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?
    );
    Ok(())
}
