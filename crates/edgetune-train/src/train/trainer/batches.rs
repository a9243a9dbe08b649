//! The run's data, ready for the steps: the dataset loaded (or the one MT-LoRA's task names
//! were read from), tokenized with the model's chat template (or taken as it is when
//! pre-tokenized), batched, and mixed with replay rows (`--replay`), before anything of the
//! step is allocated.

use super::{eos_id, log_memory};
use crate::train::config::TrainConfig;
use crate::train::replay::ReplayReport;
use edgetune_core::data::batch::{BatchConfig, Batcher};
use edgetune_core::data::mix::MixedBatcher;
use edgetune_core::data::tokenize::{
    TokenizeOptions, chat_template_for, pretokenized_all, tokenize_all,
};
use edgetune_core::data::{Dataset, formats};
use edgetune_core::gguf::GgufFile;
use edgetune_core::model::Llama;
use edgetune_core::tokenizer::Tokenizer;
use edgetune_core::{Error, Result};

/// The batcher of the run described by `cfg` over `file`'s vocabulary of `n_vocab` tokens, the
/// replay report, and the run's optimizer steps (`--steps`, or the data's epochs).
/// `early_data`: the dataset when it was already loaded.
pub(super) fn load(
    file: &GgufFile,
    llama: &Llama,
    cfg: &TrainConfig,
    early_data: Option<Dataset>,
    n_vocab: usize,
) -> Result<(MixedBatcher, Option<ReplayReport>, u64)> {
    let data = match early_data {
        Some(d) => d,
        None => formats::load(&cfg.data, cfg.format)?,
    };
    // Pre-tokenized data needs no tokenizer, so a model whose tokenizer cannot be built
    // (e.g. an unknown pre-tokenizer) still trains on it.
    let examples = match pretokenized_all(&data, n_vocab) {
        Some(examples) => examples?,
        None => {
            let tok = Tokenizer::from_gguf(file)?;
            let chat = chat_template_for(file, &tok, &data)?;
            let tokenize_opts = TokenizeOptions {
                chat_template: chat.as_ref(),
                ..TokenizeOptions::default()
            };
            tokenize_all(&tok, &data, &tokenize_opts)?
        }
    };
    let micro_steps = cfg.steps.map(|s| s.saturating_mul(cfg.accum as u64));
    let main = Batcher::with_tasks(
        &examples,
        BatchConfig {
            seq_len: cfg.seq_len,
            batch_size: cfg.batch,
            pack: cfg.pack,
            seed: cfg.seed,
            epochs: cfg.epochs,
            max_steps: micro_steps,
            // Padding carries no loss and sits after every real token: any id will do.
            pad_id: eos_id(file).unwrap_or(0),
        },
        &cfg.method_opts.mtlora_tasks,
    )?;
    // `--replay`: the base model answers general prompts now, before anything of the step
    // is allocated (or its answers come from the run directory's cache).
    let (batcher, replay) = crate::train::replay::mix(file, llama, cfg, main)?;
    if cfg.method.task_routed() && batcher.task_names() != cfg.method_opts.mtlora_tasks {
        return Err(Error::Invalid(format!(
            "MT-LoRA: the batcher's tasks {:?} differ from the run's {:?}",
            batcher.task_names(),
            cfg.method_opts.mtlora_tasks
        )));
    }
    log_memory("data tokenized and batched");
    drop(examples);
    let total_steps = match cfg.steps {
        Some(s) => s,
        None => batcher
            .total_steps()
            .map_or(0, |m| m.div_ceil(cfg.accum as u64)),
    };
    Ok((batcher, replay, total_steps))
}
