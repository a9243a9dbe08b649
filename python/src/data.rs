//! Held-out data for `Trainer.evaluate`: a dataset file, or records given in memory (as JSONL
//! text, parsed by the library's own reader), tokenized as training tokenizes (the model's
//! tokenizer and chat template; loss on the responses only) and cut into the trainer's
//! `batch × seq_len` batches, one pass (the order does not change the summed loss).

use std::path::{Path, PathBuf};

use edgetune::data::batch::{BatchConfig, Batcher};
use edgetune::data::tokenize::{
    TokenizeOptions, chat_template_for, pretokenized_all, tokenize_all,
};
use edgetune::data::{Batch, Dataset, Format, formats};
use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::train::TrainConfig;
use edgetune::{Error, Result};

/// Where held-out examples come from.
pub enum Source {
    File(PathBuf),
    /// JSONL text (one record per line).
    Records(String),
}

/// The dataset of `source`; `format` overrides detection.
pub fn dataset(source: &Source, format: Option<Format>) -> Result<Dataset> {
    match source {
        Source::File(p) => formats::load(p, format),
        Source::Records(text) => formats::parse_str(Path::new("<data_records>"), text, format),
    }
}

/// The batches of `data` for the trainer of `cfg` over `file`: every example once, in file
/// order (no shuffle, no packing), padded to the trainer's batch shape.
pub fn batches(file: &GgufFile, cfg: &TrainConfig, data: &Dataset) -> Result<Vec<Batch>> {
    let n_vocab = edgetune::model::LlamaConfig::from_gguf(file)?.n_vocab;
    let examples = match pretokenized_all(data, n_vocab) {
        Some(e) => e?,
        None => {
            let tok = Tokenizer::from_gguf(file)?;
            let chat = chat_template_for(file, &tok, data)?;
            let opts = TokenizeOptions {
                chat_template: chat.as_ref(),
                ..TokenizeOptions::default()
            };
            tokenize_all(&tok, data, &opts)?
        }
    };
    if examples.is_empty() {
        return Err(Error::Invalid("evaluate: no examples".into()));
    }
    let mut batcher = Batcher::new(
        &examples,
        BatchConfig {
            seq_len: cfg.seq_len,
            batch_size: cfg.batch,
            pack: false,
            seed: cfg.seed,
            epochs: Some(1),
            max_steps: None,
            pad_id: 0,
        },
    )?;
    let mut out = Vec::new();
    loop {
        let mut b = Batch::new(cfg.batch, cfg.seq_len);
        if !batcher.next_batch(&mut b) {
            break;
        }
        out.push(b);
    }
    Ok(out)
}
