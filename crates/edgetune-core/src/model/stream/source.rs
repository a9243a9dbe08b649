//! The weight stream as a [`LayerSource`]: layers from the staging buffers, the head resident or
//! in chunks of rows through the same buffers, and a streamed tied head's embedding rows read one
//! token at a time.

use super::{TableRows, Unit, WeightStream, bytes_of, bytes_of_mut, read_at};
use crate::backend::{Backend, CpuBackend};
use crate::model::forward::BackendLayer;
use crate::model::layer_source::{HeadRows, LayerSource};
use crate::quant::matmul::QuantMatrix;
use crate::{Error, Result};

impl WeightStream {
    /// The staged head chunk `u` as a matrix of its rows, and its first row.
    fn current_chunk(&self, u: usize) -> Result<(usize, QuantMatrix<'_>)> {
        let (Some(Unit::HeadChunk { v0, span, .. }), Some((c, buf))) =
            (self.units.get(u), &self.current)
        else {
            return Err(Error::Invalid(format!(
                "weight stream: {u} is not a head chunk"
            )));
        };
        if *c != u {
            return Err(Error::Invalid(format!(
                "weight stream: head chunk {u} not staged"
            )));
        }
        let data = &bytes_of(buf)[..span.bytes];
        let m = QuantMatrix::new(span.ty, span.rows, span.cols, data)?.with_compute(self.compute);
        Ok((*v0, m))
    }

    /// Reads a streamed tied head's rows of `tokens` one at a time and dequantizes each into
    /// its row of `x` (`[tokens, dim]`).
    fn embed_by_rows(&mut self, t: TableRows, tokens: &[u32], x: &mut [f32]) -> Result<()> {
        let dim = t.spec.cols;
        if x.len() != tokens.len() * dim {
            return Err(Error::Invalid(format!(
                "embedding: {} values for {} tokens of dim {dim}",
                x.len(),
                tokens.len()
            )));
        }
        for (&tok, xr) in tokens.iter().zip(x.chunks_exact_mut(dim.max(1))) {
            let r = tok as usize;
            if r >= t.spec.rows {
                return Err(Error::Invalid(format!(
                    "embedding: token {tok} is outside the vocabulary of {}",
                    t.spec.rows
                )));
            }
            let at = t.file_offset.saturating_add((r * t.row_bytes) as u64);
            let dst = &mut bytes_of_mut(&mut self.row)[..t.row_bytes];
            read_at(&self.file, dst, at).map_err(|e| Error::Tensor {
                path: self.path.clone(),
                name: "token_embd.weight".into(),
                what: format!("reading row {r}, {} B at byte {at}: {e}", t.row_bytes),
            })?;
            self.stats.bytes_read += t.row_bytes as u64;
            let one = QuantMatrix::new(t.spec.ty, 1, dim, &bytes_of(&self.row)[..t.row_bytes])?;
            CpuBackend.embedding(&one, &[0], xr)?;
        }
        Ok(())
    }
}

impl LayerSource<CpuBackend> for WeightStream {
    fn with_layer(
        &mut self,
        l: usize,
        next: Option<usize>,
        f: &mut dyn FnMut(&BackendLayer<'_, CpuBackend>) -> Result<()>,
    ) -> Result<()> {
        if l >= self.n_layer {
            return Err(Error::Invalid(format!(
                "weight stream: layer {l} asked for; the model has {}",
                self.n_layer
            )));
        }
        self.stage(l)?;
        if let Some(u) = next.and_then(|n| self.unit_of(n)) {
            self.prefetch(u)?;
        }
        self.run_current(l, f)
    }

    fn with_head(
        &mut self,
        next: Option<usize>,
        f: &mut dyn FnMut(&HeadRows<'_, CpuBackend>) -> Result<()>,
    ) -> Result<()> {
        if self.head.is_some() {
            let rows = self.head()?;
            return f(&HeadRows {
                v0: 0,
                n: rows.rows,
                rows,
            });
        }
        let first = self.n_layer;
        let end = self.units.len();
        for u in first..end {
            self.stage(u)?;
            let after = if u + 1 < end {
                Some(u + 1)
            } else {
                next.and_then(|n| self.unit_of(n))
            };
            if let Some(a) = after {
                self.prefetch(a)?;
            }
            let (v0, m) = self.current_chunk(u)?;
            f(&HeadRows {
                v0,
                n: m.rows,
                rows: m,
            })?;
        }
        Ok(())
    }

    fn embed(
        &mut self,
        be: &CpuBackend,
        table: &QuantMatrix<'_>,
        tokens: &[u32],
        x: &mut [f32],
    ) -> Result<()> {
        match (self.tied, self.table_rows) {
            (true, Some(t)) => self.embed_by_rows(t, tokens, x),
            (true, None) => be.embedding(&self.head()?, tokens, x),
            (false, _) => be.embedding(table, tokens, x),
        }
    }
}
