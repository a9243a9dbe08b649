//! Where a pass gets each layer's weights and the output head: [`LayerSource`], implemented by
//! the mapped (or device-resident) model and by the weight stream (`model/stream.rs`).

use super::forward::{BackendLayer, BackendModel};
use crate::backend::Backend;
use crate::{Error, Result};

/// Runs a closure on one layer's weights, wherever they live.
pub trait LayerSource<B: Backend> {
    /// Runs `f` on layer `l`'s weights; `next` is the layer that will be asked for after it
    /// (a streamed source reads it meanwhile).
    fn with_layer(
        &mut self,
        l: usize,
        next: Option<usize>,
        f: &mut dyn FnMut(&BackendLayer<'_, B>) -> Result<()>,
    ) -> Result<()>;

    /// Runs `f` over the output head `[n_vocab, dim]` in chunks of rows ([`HeadRows`]; one call
    /// with the whole head unless the head is streamed). `next`: the layer asked for after the
    /// head (a streamed source reads it meanwhile).
    fn with_head(
        &mut self,
        next: Option<usize>,
        f: &mut dyn FnMut(&HeadRows<'_, B>) -> Result<()>,
    ) -> Result<()>;

    /// Embeds `tokens` into `x` (`[tokens, dim]`): from `table`, the model's `token_embd`, unless
    /// the source holds or reads its own (a stream's tied head).
    fn embed(
        &mut self,
        be: &B,
        table: &B::Weight<'_>,
        tokens: &[u32],
        x: B::ViewMut<'_>,
    ) -> Result<()> {
        be.embedding(table, tokens, x)
    }
}

/// Rows `v0..v0 + n` of the output head `[n_vocab, dim]`, as `rows` `[n, dim]`.
pub struct HeadRows<'w, B: Backend> {
    pub v0: usize,
    pub n: usize,
    pub rows: B::Weight<'w>,
}

/// As `next` of [`LayerSource::with_layer`]: the output head's first chunk comes next.
pub const HEAD: usize = usize::MAX;

/// Mapped (or device-resident) weights: every layer is there already.
impl<B: Backend> LayerSource<B> for &BackendModel<'_, B> {
    fn with_layer(
        &mut self,
        l: usize,
        _next: Option<usize>,
        f: &mut dyn FnMut(&BackendLayer<'_, B>) -> Result<()>,
    ) -> Result<()> {
        let lw = self.layers.get(l).ok_or_else(|| {
            Error::Invalid(format!(
                "layer {l} asked for; the model has {}",
                self.layers.len()
            ))
        })?;
        f(lw)
    }

    fn with_head(
        &mut self,
        _next: Option<usize>,
        f: &mut dyn FnMut(&HeadRows<'_, B>) -> Result<()>,
    ) -> Result<()> {
        f(&HeadRows {
            v0: 0,
            n: self.config.n_vocab,
            rows: self.output,
        })
    }
}
