//! Where a training step's frozen weights come from: the mapped (or device-resident) model, or
//! a [`WeightStream`] that stages one layer at a time (`--weights stream`), and the order the
//! step asks for layers in, so a stream reads the next one while the current one computes.
//!
//! ```text
//! forward    0 → 1 → … → L−1            (at L−1 the backward's first read, L−2, starts)
//! loss       the head (resident either way)
//! backward   L−1 → L−2 → … → lowest     (at `lowest`, layer 0 for the next micro-batch)
//! ```

use super::step::TrainStep;
use crate::train::budget::TrainingPlan;
use edgetune_core::backend::CpuBackend;
use edgetune_core::gguf::GgufFile;
use edgetune_core::model::BackendModel;
use edgetune_core::model::Llama;
use edgetune_core::model::forward::BackendLayer;
use edgetune_core::model::stream::{LayerSource, StreamOptions, WeightStream};
use edgetune_core::quant::Compute;
use edgetune_core::quant::matmul::QuantMatrix;
use edgetune_core::{Error, Result};

/// The weights one micro-batch reads.
pub(super) struct StepWeights<'a, 'w> {
    /// Config, norms of the head, RoPE frequencies; the layers too unless streamed.
    pub model: &'a BackendModel<'w, CpuBackend>,
    pub stream: Option<&'a mut WeightStream>,
}

impl StepWeights<'_, '_> {
    /// Runs `f` on layer `l`; `next` is the layer asked for after it.
    pub fn layer(
        &mut self,
        l: usize,
        next: Option<usize>,
        f: &mut dyn FnMut(&BackendLayer<'_, CpuBackend>) -> Result<()>,
    ) -> Result<()> {
        match self.stream.as_deref_mut() {
            Some(s) => s.with_layer(l, next, f),
            None => {
                let mut mapped = self.model;
                mapped.with_layer(l, next, f)
            }
        }
    }

    /// Whether the head comes in chunks from the stream (`--stream-head`).
    pub fn head_streamed(&self) -> bool {
        self.stream
            .as_deref()
            .is_some_and(WeightStream::head_streamed)
    }

    /// The output projection `[n_vocab, dim]`, when resident.
    pub fn output(&self) -> Result<QuantMatrix<'_>> {
        match self.stream.as_deref() {
            Some(s) => s.head(),
            None => Ok(self.model.output),
        }
    }

    /// The embedding table for a gather that is not done by row reads: the streamed head when
    /// it is the tied table, else the mapped `token_embd`.
    pub fn embedding(&self) -> Result<QuantMatrix<'_>> {
        match self.stream.as_deref() {
            Some(s) if s.head_is_embedding() => s.head(),
            _ => Ok(self.model.token_embd),
        }
    }
}

/// Whether `planned` streams the layers (`--weights stream`, or the plan's choice under a small
/// budget); an error when `file` cannot be streamed.
pub(super) fn plans_streaming(file: &GgufFile, planned: &TrainingPlan) -> Result<bool> {
    let Some(s) = &planned.breakdown.weights.streamed else {
        return Ok(false);
    };
    if !WeightStream::applies(file) {
        return Err(Error::Invalid(format!(
            "{}: streamed weights need a mapped file on a platform with positioned reads",
            file.path().display()
        )));
    }
    log::info!("weights: layers streamed ({})", s.reason);
    Ok(true)
}

/// Opens the weight stream of `llama` (loaded from `file`) for `step`, multiplying with
/// `compute`; whatever loading read through the map (norms, the adapters' init from the base
/// weights, replay generation) then leaves the process's resident set. A streamed head
/// (planned in the step's shape) comes in chunks of at most `head_chunk_rows` rows.
pub(super) fn attach_stream(
    step: &mut TrainStep,
    file: &GgufFile,
    llama: &Llama<'_>,
    compute: Compute,
    head_chunk_rows: Option<usize>,
) -> Result<()> {
    let options = StreamOptions {
        stream_head: step.shape().stream_head,
        head_chunk_rows,
    };
    let stream = WeightStream::open_with(file, llama.config(), llama.weights(), compute, options)?;
    step.set_weight_stream(stream)?;
    file.release_pages()
}

/// The layer after `l` in a forward over `n` layers; after the last, `then`.
pub(super) fn forward_next(l: usize, n: usize, then: Option<usize>) -> Option<usize> {
    if l + 1 < n { Some(l + 1) } else { then }
}

/// The layer after `l` in a backward down to `lowest`; after it, layer 0 (the next forward).
pub(super) fn backward_next(l: usize, lowest: usize) -> Option<usize> {
    if l > lowest { Some(l - 1) } else { Some(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_turns_at_the_top_and_wraps_to_layer_zero() {
        // Forward of 4 layers, then a backward to layer 1: the forward's last prefetches the
        // backward's second layer (the first is the one just run).
        let fwd: Vec<_> = (0..4).map(|l| forward_next(l, 4, Some(2))).collect();
        assert_eq!(fwd, [Some(1), Some(2), Some(3), Some(2)]);
        let bwd: Vec<_> = (1..4).rev().map(|l| backward_next(l, 1)).collect();
        assert_eq!(bwd, [Some(2), Some(1), Some(0)]);
    }
}
