//! The `README.md` of a PEFT export: which base it belongs to (file name and SHA-256), the
//! LoRA settings, the Q/K row-order note, and the training configuration and metrics.

use std::fmt::Write;
use std::path::Path;

use serde_json::Value as Json;

use super::peft_config::PeftConfig;
use edgetune_core::model::LlamaConfig;

/// Everything the README states.
pub struct ReadmeInfo<'a> {
    pub config: &'a PeftConfig,
    pub model: &'a LlamaConfig,
    pub n_modules: usize,
    pub base_file: Option<&'a Path>,
    pub base_sha256: Option<&'a str>,
    pub folded: &'a [String],
    pub notes: &'a Json,
}

/// The README text (Markdown).
pub fn peft_readme(i: &ReadmeInfo<'_>) -> String {
    let c = i.config;
    let m = i.model;
    let mut s = String::new();
    // Writing to a String cannot fail; the results are ignored.
    let _ = writeln!(
        s,
        "---\nlibrary_name: peft\ntags:\n- lora\n- edgetune\n---\n"
    );
    let _ = writeln!(s, "# LoRA adapter (exported by edgetune)\n");
    let _ = writeln!(s, "## Base model\n");
    match i.base_file {
        Some(p) => {
            let name = p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let _ = writeln!(s, "- File: `{name}`");
            let _ = writeln!(
                s,
                "- SHA-256: `{}`",
                i.base_sha256.unwrap_or("not computed")
            );
        }
        None => {
            let _ = writeln!(s, "- File: not recorded");
        }
    }
    if let Some(id) = &c.base_model_name_or_path {
        let _ = writeln!(s, "- `base_model_name_or_path`: `{id}`");
    }
    let _ = writeln!(
        s,
        "- Llama: {} layers, width {}, {} query heads / {} KV heads of {}, FFN {}, vocabulary {}\n",
        m.n_layer, m.dim, m.n_head, m.n_head_kv, m.head_dim, m.ffn, m.n_vocab
    );
    let _ = writeln!(s, "## Adapter\n");
    let _ = writeln!(
        s,
        "- LoRA rank {}, alpha {}, {} scaling, dropout {}",
        c.r,
        c.lora_alpha,
        if c.use_rslora {
            "rsLoRA (alpha/√r)"
        } else {
            "alpha/r"
        },
        c.lora_dropout
    );
    let _ = writeln!(
        s,
        "- Targets: {} ({} adapted linears)",
        c.target_modules.join(", "),
        i.n_modules
    );
    if !c.rank_pattern.is_empty() {
        let _ = writeln!(
            s,
            "- Per-module ranks (`rank_pattern`): {} modules",
            c.rank_pattern.len()
        );
    }
    if !i.folded.is_empty() {
        let _ = writeln!(
            s,
            "- Scale folded into `lora_B` (not expressible in the config): {}",
            i.folded.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "- Trained against the GGUF base, whose `q_proj`/`k_proj` rows llama.cpp's converter \
         permutes; `lora_B` of `q_proj` and `k_proj` is written back in Hugging Face row order, \
         so the adapter applies to the Hugging Face checkpoint of the same model.\n"
    );
    let _ = writeln!(s, "## Usage\n");
    let _ = writeln!(
        s,
        "```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM\n\n\
         base = AutoModelForCausalLM.from_pretrained(\"<the base model>\")\n\
         model = PeftModel.from_pretrained(base, \"<this directory>\")\n```\n"
    );
    if !i.notes.is_null() {
        let _ = writeln!(s, "## Training configuration and metrics\n");
        let body = serde_json::to_string_pretty(i.notes).unwrap_or_else(|_| i.notes.to_string());
        let _ = writeln!(s, "```json\n{body}\n```");
    }
    s
}
