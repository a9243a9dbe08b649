//! The plan's side of streamed weights (`--weights stream`, model/stream.rs): which tensors
//! are streamed, what the two staging buffers hold, and how many layer reads and bytes a step
//! costs, with the least time those reads take at the board's storage speed.

use serde::Serialize;

use super::ModelWeights;
use crate::train::TrainConfig;
use edgetune_core::Result;

/// Streamed layer weights (model/stream.rs): what is held instead of the layers, and what a
/// step reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamedLayers {
    /// Layers streamed, and the bytes of their matrices in the file.
    pub layers: usize,
    pub layer_file_bytes: u64,
    /// Two staging buffers of the largest layer (its seven matrices, 64-byte aligned each).
    pub staging_bytes: u64,
    /// The output head's bytes in the file (the tied `token_embd`, or `output`): read once into
    /// an owned buffer, or, with `head_chunks > 0`, streamed.
    pub head_bytes: u64,
    /// Chunks of rows the head is streamed in through the staging buffers (each fits one
    /// buffer); 0: the head is resident.
    pub head_chunks: u64,
    /// Why the head is streamed (`--stream-head on`, or the plan's reason); `None`: resident.
    pub head_reason: Option<String>,
    /// Layer reads per optimizer step: per micro-batch the forward (every layer; layer 0 is
    /// still staged from the previous backward when that reached it), the backward down to
    /// the lowest adapted layer (its top layer is the forward's last), and with the KL anchor
    /// a base forward on micro-batches that hold replay rows (counted on all of them here);
    /// twice that when the fused update clips (its norm-only pass). With a streamed head the
    /// backward reads its top layer again (the head's chunks evicted it).
    pub reads_per_step: u64,
    /// Head chunk reads per optimizer step (each micro-batch reads the head twice, once when it
    /// fits one chunk), with the same passes as the layers.
    pub head_reads_per_step: u64,
    pub read_bytes_per_step: u64,
    /// `read_bytes_per_step` at the storage's sequential read speed (the board's), in seconds;
    /// the reads overlap the compute, so this is a floor on the step time, not an addition.
    pub io_s_per_step: Option<f64>,
    /// Why the layers are streamed (`--weights stream`, or the plan's reason).
    pub reason: String,
}

/// Whether `name` is one of the seven matrices of a block (streamed under `--weights stream`).
pub(super) fn is_layer_matrix(name: &str) -> bool {
    name.strip_prefix("blk.").is_some_and(|rest| {
        edgetune_core::adapters::Target::ALL
            .iter()
            .any(|t| rest.ends_with(&format!(".{}.weight", t.gguf_stem())))
    })
}

/// The staging and the reads of streamed layers (the head's bytes are in `by_type` already).
pub(super) fn streamed_layers(model: &ModelWeights, cfg: &TrainConfig) -> Result<StreamedLayers> {
    let n = model.config.n_layer;
    let mut largest = 0u64;
    let mut total = 0u64;
    for l in 0..n {
        let prefix = format!("blk.{l}.");
        let mut at = 0u64;
        for t in model
            .tensors
            .iter()
            .filter(|t| t.name.starts_with(&prefix) && is_layer_matrix(&t.name))
        {
            at = at.div_ceil(64) * 64 + t.n_bytes;
            total += t.n_bytes;
        }
        largest = largest.max(at.div_ceil(64) * 64);
    }
    let head_tensor = model
        .tensors
        .iter()
        .find(|t| t.name == "output.weight")
        .or_else(|| model.tensors.iter().find(|t| t.name == "token_embd.weight"));
    let head = head_tensor.map_or(0, |t| t.n_bytes);
    let head_streamed = cfg.stream_head == crate::train::StreamHead::On;
    // As model/stream_io.rs cuts it: whole rows, as many as fit one staging buffer.
    let head_chunks = match head_tensor {
        Some(t) if head_streamed => {
            let fit = (largest.div_ceil(64) * 64 / t.row_bytes().max(1)).max(1);
            let fit = cfg
                .head_chunk_rows
                .map_or(fit, |m| (m as u64).clamp(1, fit));
            t.n_rows().div_ceil(fit)
        }
        _ => 0,
    };
    let lowest = cfg.lora.layers.map_or(0, |r| r.first.min(n));
    let n64 = n as u64;
    // Forward n (the first micro-batch's layer 0 included), backward n − lowest − 1 (its top
    // layer is staged; with a streamed head, n − lowest), the KL anchor's base forward n more.
    let backward = (n64 - lowest as u64).saturating_sub(u64::from(!head_streamed));
    let per_micro = n64 + backward + if cfg.kl_anchor > 0.0 { n64 } else { 0 };
    // The head's two passes; one chunk is read once (it stays staged for the second).
    let head_per_micro = match head_chunks {
        0 => 0,
        1 => 1,
        c => 2 * c,
    };
    // The fused update with clipping runs each step twice (a norm-only pass first).
    let passes = if cfg.fused_update == crate::train::FusedUpdate::On && cfg.max_grad_norm > 0.0 {
        2
    } else {
        1
    };
    let reads = per_micro * cfg.accum as u64 * passes;
    let head_reads = head_per_micro * cfg.accum as u64 * passes;
    let mean_layer = total.checked_div(n64).unwrap_or(0);
    let mean_chunk = head.checked_div(head_chunks).unwrap_or(0);
    let read_bytes = reads * mean_layer + head_reads * mean_chunk;
    Ok(StreamedLayers {
        layers: n,
        layer_file_bytes: total,
        staging_bytes: 2 * largest,
        head_bytes: head,
        head_chunks,
        head_reason: head_streamed.then(|| "--stream-head on".into()),
        reads_per_step: reads,
        head_reads_per_step: head_reads,
        read_bytes_per_step: read_bytes,
        io_s_per_step: cfg
            .storage_read_bytes_per_s
            .filter(|r| *r > 0.0)
            .map(|r| read_bytes as f64 / r),
        reason: "--weights stream".into(),
    })
}
