//! Streamed frozen weights (`--weights stream`): each layer's seven matrices are read from the
//! model file with positioned reads into one of two staging buffers, the next layer's read
//! running on a background thread while the current layer computes, so the process holds two
//! layers of weights instead of the whole file.
//!
//! # Why
//!
//! Mapped weights stay resident once a step has read them: the memory floor is the file (Llama
//! 3.1 70B Q4_0: 37 GiB; 8B Q4_K_M: 4.6 GiB). A step needs layer `l`'s weights only while layer
//! `l` runs, and reads them twice (forward; recompute + backward), so two staging buffers of the
//! largest layer (70B Q4_0: 2 × 0.45 GiB) replace the map. Reads go through the page cache,
//! which is the kernel's memory, not the process's; nothing of the map is touched.
//!
//! # Schedule
//!
//! [`LayerSource::with_layer`]`(l, next, f)` runs `f` on layer `l` and, while `f` runs, reads
//! `next` into the other buffer. The training step asks for `0, 1, …, L−1` (forward), then
//! `L−1, …, 0` (recompute + backward): the turn at the top reuses layer `L−1` and the next
//! step's forward starts on layer 0, still staged — `2L − 2` layer reads per micro-batch. A
//! layer asked for out of that order is read synchronously (correct, only slower).
//!
//! The output head is either resident, in an owned buffer read once (the untied `output.weight`,
//! or the tied `token_embd` that is also the head), or streamed too (`StreamOptions::stream_head`):
//! cut into chunks of whole rows that fit a staging buffer, read through the same two buffers
//! ([`WeightStream::with_head`]), so the head costs no memory of its own (0.8 GiB for Llama 3.1
//! 70B's `[128256, 8192]` Q6_K head). A caller asks for the head after the last layer (`next =
//! Some(`[`HEAD`]`)` prefetches its first chunk). With a streamed tied head the embedding rows
//! are read one token at a time ([`LayerSource::embed`]); the untied embedding is gathered
//! through the map in inference and by row reads in training (`train::embed_rows`).
//!
//! Nothing is allocated per layer: the buffers, the reader thread and its bounded channels are
//! made once in [`WeightStream::open`].

use std::fs::File;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use super::config::LlamaConfig;
use super::forward::BackendLayer;
use super::stream_io::{
    Filled, QuantMatrixSpec, Request, Staging, Unit, bytes_of, bytes_of_mut, head_chunks,
    layer_spans, lines_for, read_at, read_head, read_unit, reopen, spawn_reader,
};
use super::weights::LlamaWeights;
use crate::backend::CpuBackend;
use crate::gguf::GgufFile;
use crate::quant::Compute;
use crate::quant::matmul::QuantMatrix;
use crate::{Error, Result};

mod source;

pub use super::layer_source::{HEAD, HeadRows, LayerSource};

/// Counters of a stream's reads, summed since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StreamStats {
    /// Layer reads (each the layer's seven matrices).
    pub layer_reads: u64,
    /// Reads of a chunk of the streamed output head.
    pub head_chunk_reads: u64,
    pub bytes_read: u64,
    /// Seconds the reader spent in `pread` (overlapped with the compute where prefetched).
    pub read_s: f64,
    /// Seconds the compute waited for a layer that was not staged yet.
    pub wait_s: f64,
}

/// How a [`WeightStream`] holds the output head.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Stream the head in chunks of rows through the staging buffers (else: read once, resident).
    pub stream_head: bool,
    /// At most this many head rows a chunk (`None`: as many as fit a staging buffer). Tests use
    /// it to cut a small model's head into several chunks.
    pub head_chunk_rows: Option<usize>,
}

/// Where a tied head's embedding rows are read from when the head is streamed.
#[derive(Clone, Copy, Debug)]
struct TableRows {
    spec: QuantMatrixSpec,
    file_offset: u64,
    row_bytes: usize,
}

/// Two staging buffers and a reader thread over one model file.
pub struct WeightStream {
    path: PathBuf,
    /// Layers `0..n_layer`, then the streamed head's chunks (none when it is resident).
    units: Vec<Unit>,
    n_layer: usize,
    /// Per layer: the decoded `attn_norm` / `ffn_norm` (moved into the [`BackendLayer`] built
    /// for a call, moved back after it).
    norms: Vec<(Vec<f32>, Vec<f32>)>,
    /// The layer staged in `current` and its buffer.
    current: Option<(usize, Staging)>,
    /// The buffers neither current nor being read into (two at the start).
    idle: Vec<Staging>,
    /// The layer being read into the other buffer.
    pending: Option<usize>,
    requests: Option<SyncSender<Request>>,
    /// In a mutex only so that the stream (and a trainer holding it) is `Sync`: every use has
    /// `&mut self` and takes it with `get_mut`, never locking.
    filled: Mutex<Receiver<Filled>>,
    reader: Option<JoinHandle<()>>,
    /// The synchronous path's own handle (a read out of order).
    file: File,
    staging_bytes: usize,
    /// The resident head (`None`: streamed in `units`).
    head: Option<(QuantMatrixSpec, Staging)>,
    /// The head is the tied `token_embd` (it is the embedding table too).
    tied: bool,
    /// A streamed tied head's rows, read one token at a time into `row`.
    table_rows: Option<TableRows>,
    row: Staging,
    compute: Compute,
    stats: StreamStats,
}

impl std::fmt::Debug for WeightStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightStream")
            .field("path", &self.path)
            .field("layers", &self.n_layer)
            .field("head_chunks", &(self.units.len() - self.n_layer))
            .field("staging_bytes", &self.staging_bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl WeightStream {
    /// Whether `file` can be streamed: a mapped file on a platform with positioned reads (a file
    /// held in memory has nothing to stream from).
    pub fn applies(file: &GgufFile) -> bool {
        cfg!(unix) && file.is_mapped()
    }

    /// Plans the spans of every layer of `weights` (views of `file`, checked by
    /// [`LlamaWeights::from_gguf`]), allocates the two staging buffers and the resident head,
    /// and starts the reader. `compute` is the arithmetic the staged matrices are multiplied
    /// with (as [`LlamaWeights::with_compute`]).
    pub fn open(
        file: &GgufFile,
        cfg: &LlamaConfig,
        weights: &LlamaWeights<'_>,
        compute: Compute,
    ) -> Result<WeightStream> {
        Self::open_with(file, cfg, weights, compute, StreamOptions::default())
    }

    /// [`WeightStream::open`] with the head placed as `options` says.
    pub fn open_with(
        file: &GgufFile,
        cfg: &LlamaConfig,
        weights: &LlamaWeights<'_>,
        compute: Compute,
        options: StreamOptions,
    ) -> Result<WeightStream> {
        if !Self::applies(file) {
            return Err(Error::Invalid(format!(
                "{}: streamed weights need a mapped file on a platform with positioned reads",
                file.path().display()
            )));
        }
        let path = file.path().to_path_buf();
        let (spans, staging_bytes) = layer_spans(file, cfg.n_layer)?;
        let mut units: Vec<Unit> = spans.into_iter().map(Unit::Layer).collect();
        let norms = weights
            .layers
            .iter()
            .map(|l| (l.attn_norm.clone(), l.ffn_norm.clone()))
            .collect();
        let handle = reopen(file)?;
        let head_name = if weights.tied_output {
            "token_embd.weight"
        } else {
            "output.weight"
        };
        let (head, table_rows, row) = if options.stream_head {
            units.extend(head_chunks(
                file,
                head_name,
                staging_bytes,
                options.head_chunk_rows,
            )?);
            let table_rows = if weights.tied_output {
                let t = super::stream_io::tensor(file, head_name)?;
                let spec = QuantMatrixSpec {
                    ty: t.ty,
                    rows: t.n_rows() as usize,
                    cols: t.dims[0] as usize,
                    bytes: t.row_bytes() as usize,
                };
                Some(TableRows {
                    spec,
                    file_offset: file.data_offset().saturating_add(t.offset),
                    row_bytes: t.row_bytes() as usize,
                })
            } else {
                None
            };
            let row = lines_for(table_rows.map_or(0, |t| t.row_bytes));
            (None, table_rows, row)
        } else {
            // Read once into an owned buffer (the tied table doubles as the embedding).
            (Some(read_head(file, &handle, head_name)?), None, Vec::new())
        };
        let head_chunks = units.len() - cfg.n_layer;
        let (req_tx, fill_rx, reader) = spawn_reader(file, units.clone())?;
        log::info!(
            "{}: streaming {} layers through 2 × {:.1} MiB staging; head {head_name} {}",
            path.display(),
            cfg.n_layer,
            staging_bytes as f64 / 1048576.0,
            match &head {
                Some((spec, _)) => format!("resident ({:.1} MiB)", spec.bytes as f64 / 1048576.0),
                None => format!("streamed in {head_chunks} chunks"),
            }
        );
        Ok(WeightStream {
            path,
            units,
            n_layer: cfg.n_layer,
            norms,
            current: None,
            idle: vec![lines_for(staging_bytes), lines_for(staging_bytes)],
            pending: None,
            requests: Some(req_tx),
            filled: Mutex::new(fill_rx),
            reader: Some(reader),
            file: handle,
            staging_bytes,
            head,
            tied: weights.tied_output,
            table_rows,
            row,
            compute,
            stats: StreamStats::default(),
        })
    }

    /// The arithmetic the staged matrices and the head are multiplied with from now on.
    pub fn set_compute(&mut self, compute: Compute) {
        self.compute = compute;
    }

    /// Layers the stream serves.
    pub fn n_layer(&self) -> usize {
        self.n_layer
    }

    /// Whether the head is streamed in chunks (else resident).
    pub fn head_streamed(&self) -> bool {
        self.head.is_none()
    }

    /// Chunks of the streamed head (0: resident).
    pub fn head_chunks(&self) -> usize {
        self.units.len() - self.n_layer
    }

    /// Bytes of the two staging buffers.
    pub fn staging_bytes(&self) -> usize {
        2 * self.staging_bytes
    }

    /// Bytes of the resident head.
    pub fn head_bytes(&self) -> usize {
        self.head.as_ref().map_or(0, |(s, _)| s.bytes)
    }

    /// Layer `l`'s matrix bytes.
    pub fn layer_bytes(&self, l: usize) -> u64 {
        if l < self.n_layer {
            self.unit_bytes(l)
        } else {
            0
        }
    }

    /// Unit `u`'s bytes (a layer's matrices, or a head chunk's rows).
    fn unit_bytes(&self, u: usize) -> u64 {
        self.units.get(u).map_or(0, Unit::bytes)
    }

    /// Counts one read of unit `u`.
    fn count_read(&mut self, u: usize) {
        if u < self.n_layer {
            self.stats.layer_reads += 1;
        } else {
            self.stats.head_chunk_reads += 1;
        }
        self.stats.bytes_read += self.unit_bytes(u);
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Whether the head is the tied embedding table.
    pub fn head_is_embedding(&self) -> bool {
        self.tied
    }

    /// The resident output head (`[n_vocab, dim]`); an error when it is streamed.
    pub fn head(&self) -> Result<QuantMatrix<'_>> {
        let (s, buf) = self.head.as_ref().ok_or_else(|| {
            Error::Invalid("weight stream: the head is streamed in chunks, not resident".into())
        })?;
        Ok(
            QuantMatrix::new(s.ty, s.rows, s.cols, &bytes_of(buf)[..s.bytes])?
                .with_compute(self.compute),
        )
    }

    /// Waits for the read in flight, returning its buffer to `idle` (or, when it is `want`,
    /// making it current).
    fn finish_pending(&mut self, want: Option<usize>) -> Result<()> {
        let Some(unit) = self.pending.take() else {
            return Ok(());
        };
        let t0 = Instant::now();
        let rx = self
            .filled
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let filled = rx.recv().map_err(|_| {
            Error::Invalid(format!(
                "{}: the weight reader stopped (reading unit {unit})",
                self.path.display()
            ))
        })?;
        self.stats.wait_s += t0.elapsed().as_secs_f64();
        self.stats.read_s += filled.read.as_secs_f64();
        self.count_read(filled.unit);
        let ok = filled.result.is_ok();
        if ok && want == Some(filled.unit) {
            self.make_current(filled.unit, filled.buf);
        } else {
            self.idle.push(filled.buf);
        }
        filled.result
    }

    /// Makes unit `l` current: taken from the read in flight, kept, or read now.
    fn stage(&mut self, l: usize) -> Result<()> {
        if l >= self.units.len() {
            return Err(Error::Invalid(format!(
                "weight stream: unit {l} asked for; the stream has {} layers and {} head chunks",
                self.n_layer,
                self.head_chunks()
            )));
        }
        if self.current.as_ref().is_some_and(|(c, _)| *c == l) {
            return Ok(());
        }
        let prefetched = self.pending == Some(l);
        self.finish_pending(Some(l))?;
        if prefetched {
            return Ok(());
        }
        // Out of order (or the first layer): read it here into an idle buffer.
        let mut buf = self
            .idle
            .pop()
            .ok_or_else(|| Error::Invalid("weight stream: no idle staging buffer".into()))?;
        let t0 = Instant::now();
        let result = read_unit(&self.file, &self.path, l, &self.units[l], &mut buf);
        let spent = t0.elapsed().as_secs_f64();
        self.stats.wait_s += spent;
        self.stats.read_s += spent;
        self.count_read(l);
        match result {
            Ok(()) => {
                self.make_current(l, buf);
                Ok(())
            }
            Err(e) => {
                self.idle.push(buf);
                Err(e)
            }
        }
    }

    /// `buf` (holding `l`) becomes current; the previous current buffer goes idle.
    fn make_current(&mut self, l: usize, buf: Staging) {
        if let Some((_, old)) = self.current.replace((l, buf)) {
            self.idle.push(old);
        }
    }

    /// The unit a caller's `next` names: a layer, or [`HEAD`] (the first head chunk; none when
    /// the head is resident).
    fn unit_of(&self, next: usize) -> Option<usize> {
        if next == HEAD {
            (self.head_chunks() > 0).then_some(self.n_layer)
        } else {
            (next < self.n_layer).then_some(next)
        }
    }

    /// Starts reading unit `next` into an idle buffer (nothing when it is current or in flight).
    fn prefetch(&mut self, next: usize) -> Result<()> {
        if next >= self.units.len()
            || self.pending.is_some()
            || self.current.as_ref().is_some_and(|(c, _)| *c == next)
        {
            return Ok(());
        }
        let Some(tx) = self.requests.as_ref() else {
            return Ok(());
        };
        let Some(buf) = self.idle.pop() else {
            return Ok(());
        };
        tx.send(Request { unit: next, buf }).map_err(|_| {
            Error::Invalid(format!(
                "{}: the weight reader stopped (prefetching unit {next})",
                self.path.display()
            ))
        })?;
        self.pending = Some(next);
        Ok(())
    }

    /// The current layer `l` as backend weights, its norms moved in from `self.norms`.
    fn run_current(
        &mut self,
        l: usize,
        f: &mut dyn FnMut(&BackendLayer<'_, CpuBackend>) -> Result<()>,
    ) -> Result<()> {
        let Some(Unit::Layer(spans)) = self.units.get(l) else {
            return Err(Error::Invalid(format!("weight stream: {l} is not a layer")));
        };
        let (attn_norm, ffn_norm) = std::mem::take(&mut self.norms[l]);
        let compute = self.compute;
        let Some((_, buf)) = &self.current else {
            self.norms[l] = (attn_norm, ffn_norm);
            return Err(Error::Invalid("weight stream: nothing staged".into()));
        };
        let bytes = bytes_of(buf);
        let m = |i: usize| -> Result<QuantMatrix<'_>> {
            let s = spans[i];
            let data = bytes.get(s.at..s.at + s.bytes).ok_or_else(|| {
                Error::Invalid(format!(
                    "weight stream: layer {l} matrix {i} outside staging"
                ))
            })?;
            Ok(QuantMatrix::new(s.ty, s.rows, s.cols, data)?.with_compute(compute))
        };
        let built = (|| Ok::<_, Error>([m(0)?, m(1)?, m(2)?, m(3)?, m(4)?, m(5)?, m(6)?]))();
        let [q, k, v, o, gate, up, down] = match built {
            Ok(x) => x,
            Err(e) => {
                self.norms[l] = (attn_norm, ffn_norm);
                return Err(e);
            }
        };
        let lw = BackendLayer::<CpuBackend> {
            attn_norm,
            attn_q: q,
            attn_k: k,
            attn_v: v,
            attn_output: o,
            ffn_norm,
            ffn_gate: gate,
            ffn_up: up,
            ffn_down: down,
        };
        let result = f(&lw);
        self.norms[l] = (lw.attn_norm, lw.ffn_norm);
        result
    }
}

impl Drop for WeightStream {
    fn drop(&mut self) {
        // Closing the request channel ends the reader's loop; a read in flight finishes first.
        self.requests = None;
        if self.pending.take().is_some() {
            let rx = self
                .filled
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner);
            let _ = rx.recv();
        }
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod sync_tests {
    /// A trainer holds its stream and crosses threads in the front ends (the trainer's own
    /// check is beside it, in edgetune-train's `train/trainer.rs`).
    #[test]
    fn a_stream_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<super::WeightStream>();
    }
}
