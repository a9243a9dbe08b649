//! The runtime overheads of a training process beside weights, arena, adapters and optimizer
//! state: named constants, each with how it was measured (`examples/measure_overheads.rs`,
//! release build, x86-64 Linux, glibc; every measurement in a fresh process), and the per-run
//! list [`overheads`] builds from them.

use serde::Serialize;

use super::ModelWeights;
use crate::train::TrainConfig;
use edgetune_core::backend::cpu::cross_entropy_vocab::RowLse;
use edgetune_core::model::LlamaConfig;
use edgetune_core::{Error, Result};

/// The `edgetune` binary and its shared libraries, resident once the inference, tokenizer and
/// training code has run. Measured on x86-64 after a 4-step `train` on the `tiny` test model
/// (file-backed pages, less the 0.75 MiB model): 9.8 MiB for the release build and 11.2 MiB for
/// the test profile's build (opt-level 2, which `cargo test` runs); `edgetune --version` alone
/// peaks at 4.0 MiB. 12 MiB covers both.
pub const BINARY_RESIDENT_BYTES: u64 = 12 << 20;

/// Anonymous bytes per tokenizer entry (token or merge rule) held by the parsed GGUF metadata and
/// the tokenizer built from it. Measured: the real Llama 3.1 tokenizer (128,256 tokens + 280,147
/// merges, a 7.8 MB header) grows anonymous memory by 22.8 MiB at `GgufFile::open` and 75.1 MiB
/// at `Tokenizer::from_gguf`: 251 B per entry; the synthetic 128,256-token vocabulary (127,744
/// merges) 63.3 MiB: 259 B per entry.
pub const TOKENIZER_BYTES_PER_ENTRY: u64 = 260;

/// The tokenizer's fixed part (pre-tokenizer regex, special-token tables): the 261-token byte
/// vocabulary without merges grows anonymous memory by 0.96 MiB.
pub const TOKENIZER_FIXED_BYTES: u64 = 1 << 20;

/// Resident bytes per worker thread: its touched stack (2 MiB reserved, a few pages touched),
/// TLS and its malloc arena — measured 46–50 KiB per thread for rayon pools of 2 and 8 threads
/// — plus the 64 KiB of stack tiles the dense GEMM packs (`backend/cpu/gemm.rs`: `A` 48 KiB,
/// `B` 16 KiB).
pub const THREAD_RESIDENT_BYTES: u64 = 128 << 10;

/// Anonymous bytes held per byte of the dataset file once it has been read, parsed, tokenized
/// and batched: measured 9.5 on 20,000 synthetic IoT Alpaca examples (6.05 MB, 2.28M Llama 3
/// tokens; the Batcher alone 10.7 B per token), 6.4 on 2,000. glibc keeps the freed parse and
/// per-example allocations, so dropping them does not lower the count.
pub const DATASET_BYTES_PER_FILE_BYTE: u64 = 10;

/// The same for a byte-level vocabulary (at most [`BYTE_LEVEL_VOCAB`] tokens: one token per
/// byte instead of Llama 3's ~4, plus the prompt template's tokens): measured 35 on 2,000
/// synthetic IoT examples (0.57 MB) with the test models' byte vocabulary (`edgetune train`
/// with `RUST_LOG=edgetune=debug`: anonymous RSS +19.8 MB from reading to batching).
pub const DATASET_BYTES_PER_FILE_BYTE_BYTE_LEVEL: u64 = 36;

/// Vocabularies this small tokenize one byte per token.
pub const BYTE_LEVEL_VOCAB: usize = 512;

/// The quantized matmul's per-thread scratch (`quant/matmul.rs`): a 16-row dequantized panel
/// plus one row (`in · (NR + 1)` f32) for `x·Wᵀ`, a `ROW_TILE × STRIP` = 128 × 256 f32 tile for
/// `dy·W`; the larger of the two for the widest linear input.
pub(crate) fn matmul_scratch_bytes(cfg: &LlamaConfig) -> u64 {
    let widest_in = cfg.dim.max(cfg.q_dim()).max(cfg.ffn) as u64;
    let nr = edgetune_core::quant::microkernel::NR as u64;
    4 * (widest_in * (nr + 1)).max(128 * 256)
}

/// One runtime overhead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Overhead {
    pub name: String,
    pub bytes: u64,
    pub note: String,
}

/// A streamed head's per-token statistics of the training loss (`train/step_loss.rs`, held
/// beside the arena); 0 with a resident head.
fn head_statistics_bytes(cfg: &TrainConfig) -> u64 {
    let streamed = cfg.weights == crate::train::WeightsMode::Stream
        && cfg.stream_head == crate::train::StreamHead::On;
    if streamed {
        (std::mem::size_of::<RowLse>() * cfg.tokens_per_micro_batch()) as u64
    } else {
        0
    }
}

/// The measured runtime overheads for this model and run.
pub(crate) fn overheads(
    model: &ModelWeights,
    cfg: &TrainConfig,
    tokens: u64,
) -> Result<Vec<Overhead>> {
    let threads = cfg
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1) as u64;
    let scratch = matmul_scratch_bytes(&model.config);
    let data_file = if cfg.data.as_os_str().is_empty() {
        None
    } else {
        Some(
            std::fs::metadata(&cfg.data)
                .map_err(|e| Error::io(&cfg.data, e))?
                .len(),
        )
    };
    let per_file_byte = if model.config.n_vocab <= BYTE_LEVEL_VOCAB {
        DATASET_BYTES_PER_FILE_BYTE_BYTE_LEVEL
    } else {
        DATASET_BYTES_PER_FILE_BYTE
    };
    let head_stats = head_statistics_bytes(cfg);
    let o = |name: &str, bytes: u64, note: String| Overhead {
        name: name.into(),
        bytes,
        note,
    };
    Ok(vec![
        o(
            "binary",
            BINARY_RESIDENT_BYTES,
            "edgetune and its libraries, resident".into(),
        ),
        o(
            "gguf header",
            model.header_bytes,
            "metadata and tensor infos, mapped and read at open".into(),
        ),
        o(
            "tokenizer",
            TOKENIZER_FIXED_BYTES + TOKENIZER_BYTES_PER_ENTRY * model.tokenizer_entries,
            format!(
                "parsed metadata + tokenizer for {} tokens and merges",
                model.tokenizer_entries
            ),
        ),
        o(
            "dataset",
            12 * tokens + data_file.map_or(0, |b| b * per_file_byte),
            match data_file {
                Some(b) => {
                    format!("batch buffers + {b}-byte dataset file × {per_file_byte}")
                }
                None => "batch buffers (no dataset given: add its size with --data)".into(),
            },
        ),
        o(
            "replay data",
            crate::train::replay::planned_file_bytes(cfg)? * per_file_byte,
            match &cfg.replay {
                None => "none (--replay self|FILE mixes general conversations in)".into(),
                Some(_) => format!(
                    "{} bytes of replay conversations × {per_file_byte}",
                    crate::train::replay::planned_file_bytes(cfg)?
                ),
            },
        ),
        o(
            "kl anchor",
            crate::train::step_kl::kl_anchor_bytes(
                &model.config,
                cfg.tokens_per_micro_batch(),
                cfg.ce_chunk.min(cfg.tokens_per_micro_batch()),
                cfg.kl_anchor,
            ),
            if cfg.kl_anchor > 0.0 {
                format!(
                    "base hidden states [{} × {}] + base logits [{} × {}] + token weights, f32",
                    cfg.tokens_per_micro_batch(),
                    model.config.dim,
                    cfg.ce_chunk.min(cfg.tokens_per_micro_batch()),
                    model.config.n_vocab
                )
            } else {
                "none (--kl-anchor λ anchors replay rows to the base model)".into()
            },
        ),
        o(
            "head statistics",
            head_stats,
            if head_stats > 0 {
                format!(
                    "a streamed head's loss state, {} B × {} tokens",
                    std::mem::size_of::<RowLse>(),
                    cfg.tokens_per_micro_batch()
                )
            } else {
                "none (the head is resident)".into()
            },
        ),
        o(
            "threads",
            threads * (THREAD_RESIDENT_BYTES + scratch),
            format!(
                "{threads} workers × (stack, malloc arena, GEMM tiles + {scratch} B matmul scratch)"
            ),
        ),
        o(
            "kv cache",
            0,
            "none: training attends within the sequence".into(),
        ),
    ])
}
