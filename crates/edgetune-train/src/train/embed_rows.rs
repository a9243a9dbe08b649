//! The training step's embedding gather by positioned reads (`pread`) instead of through the
//! map, so that the untied `token_embd` never becomes resident.
//!
//! # Why
//!
//! A micro-batch gathers `T` rows of `token_embd` `[vocab, dim]` (128,256 × 2304 B in Q4_K for
//! Llama 3.1 8B: 282 MiB). Through the map each touched row faults in far more than its own
//! pages: the kernel maps whole page-cache folios and faults around, so on Linux 6.18 (this
//! machine, ext4) 512 random rows of the 8B table added **92 MiB** of file-backed RSS, and the
//! rows of later steps add to it (measured: the 8B Q4_K_M proof run peaked 151 MiB above its
//! plan after 2 steps, all of it file-backed). How much a fault maps depends on the kernel and on
//! how the file entered the page cache, so no plan can bound it. A positioned read copies exactly
//! `T · row_bytes` bytes (1.1 MiB for 512 tokens of the 8B table) into a staging buffer sized
//! once, which the plan counts, and maps nothing; the page cache it goes through is not the
//! process's memory.
//!
//! The tied case (no `output.weight`: the output projection reads the whole table every step
//! anyway) keeps the mapped gather unless the head is streamed (`--stream-head`: then the table
//! is never resident and its rows are read like the untied table's); `--lock-weights` (the
//! whole map is resident by request) keeps it too.

use std::fs::File;
use std::path::PathBuf;

use edgetune_core::gguf::GgufFile;
use edgetune_core::quant::GgmlType;
use edgetune_core::quant::matmul::QuantMatrix;
use edgetune_core::{Error, Result};

/// Reads micro-batch rows of `token_embd` from the model file into a staging buffer.
pub struct EmbeddingRows {
    file: File,
    path: PathBuf,
    /// Absolute file offset of row 0.
    offset: u64,
    ty: GgmlType,
    n_rows: usize,
    cols: usize,
    row_bytes: usize,
    /// `[tokens, row_bytes]` raw blocks of the current micro-batch.
    staging: Vec<u8>,
    /// `0..tokens`: the staging rows in order (the gather's index list).
    index: Vec<u32>,
}

impl std::fmt::Debug for EmbeddingRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingRows")
            .field("path", &self.path)
            .field("ty", &self.ty)
            .field("n_rows", &self.n_rows)
            .field("tokens", &self.index.len())
            .finish()
    }
}

impl EmbeddingRows {
    /// Whether the training step of `file` gathers its embedding rows by positioned reads: the
    /// output projection is a separate tensor (or, tied, the head is streamed) and the weights
    /// are not locked. The memory plan (`train::budget`) counts the gathered rows accordingly.
    /// A file held in memory ([`GgufFile::from_bytes`]) has no path to read from and keeps the
    /// in-memory gather.
    pub fn applies(file: &GgufFile, lock_weights: bool, head_streamed: bool) -> bool {
        !lock_weights
            && file.is_mapped()
            && (head_streamed || file.tensor("output.weight").is_some())
            && file.tensor("token_embd.weight").is_some()
    }

    /// A reader for `tokens` rows per micro-batch, or `None` when [`EmbeddingRows::applies`]
    /// says no or the platform has no positioned reads. Reopens the file by path and checks it
    /// is the one mapped (same length).
    pub fn for_file(
        file: &GgufFile,
        tokens: usize,
        lock_weights: bool,
        head_streamed: bool,
    ) -> Result<Option<EmbeddingRows>> {
        if !cfg!(unix) || !Self::applies(file, lock_weights, head_streamed) {
            return Ok(None);
        }
        let Some(t) = file.tensor("token_embd.weight") else {
            return Ok(None);
        };
        let path = file.path().to_path_buf();
        let handle = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let len = handle.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len != file.file_size() {
            return Err(Error::Invalid(format!(
                "{}: the file is {len} bytes now, {} when it was opened (changed while in use?)",
                path.display(),
                file.file_size()
            )));
        }
        let cols = t.dims.first().copied().unwrap_or(0) as usize;
        let n_rows = t.n_rows() as usize;
        let row_bytes = t.row_bytes() as usize;
        // Validates the type, the row length and the byte count once, here.
        QuantMatrix::new(t.ty, 0, cols, &[])?;
        let offset = file.data_offset().saturating_add(t.offset);
        let staging_len = tokens.checked_mul(row_bytes).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: {tokens} rows of {row_bytes} B overflow",
                path.display()
            ))
        })?;
        let index = (0..tokens)
            .map(|i| u32::try_from(i).map_err(|_| Error::Invalid(format!("{tokens} tokens"))))
            .collect::<Result<Vec<u32>>>()?;
        Ok(Some(EmbeddingRows {
            file: handle,
            path,
            offset,
            ty: t.ty,
            n_rows,
            cols,
            row_bytes,
            staging: vec![0; staging_len],
            index,
        }))
    }

    /// Rows the staging buffer holds.
    pub fn capacity(&self) -> usize {
        self.index.len()
    }

    /// Bytes of the staging buffer.
    pub fn staging_bytes(&self) -> usize {
        self.staging.len()
    }

    /// `out[i, :]` = row `ids[i]` of `token_embd`, dequantized (`out` is `[ids.len(), dim]`). An
    /// id ≥ vocab is an error naming it; nothing is allocated.
    pub fn gather(&mut self, ids: &[u32], out: &mut [f32]) -> Result<()> {
        let n = ids.len();
        if n > self.index.len() {
            return Err(Error::Invalid(format!(
                "embedding gather: {n} tokens, the staging buffer holds {}",
                self.index.len()
            )));
        }
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= self.n_rows {
                return Err(Error::Invalid(format!(
                    "embedding: token id {id} at position {i} is outside the vocabulary of {} rows",
                    self.n_rows
                )));
            }
            let dst = &mut self.staging[i * self.row_bytes..(i + 1) * self.row_bytes];
            let at = self.offset + id as u64 * self.row_bytes as u64;
            read_at(&self.file, dst, at).map_err(|e| Error::io(&self.path, e))?;
        }
        let table = QuantMatrix::new(self.ty, n, self.cols, &self.staging[..n * self.row_bytes])?;
        edgetune_core::backend::cpu::embedding::embedding(&table, &self.index[..n], out)
    }
}

#[cfg(unix)]
fn read_at(file: &File, dst: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, dst, at)
}

#[cfg(not(unix))]
fn read_at(_file: &File, _dst: &mut [u8], _at: u64) -> std::io::Result<()> {
    // `for_file` returns `None` off unix, so this is never reached.
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgetune_core::testmodel::{TINY, WeightTypes, write_test_model};

    #[test]
    fn gather_by_reads_equals_the_mapped_gather() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.gguf");
        // The tiny preset has a separate output projection, like Llama 3.1 8B.
        write_test_model(&TINY, WeightTypes::Uniform(GgmlType::Q4_K), 7, &path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let mut rows = EmbeddingRows::for_file(&file, 4, false, false)
            .unwrap()
            .unwrap();
        let t = file.tensor("token_embd.weight").unwrap();
        let dim = t.dims[0] as usize;
        let mapped = QuantMatrix::new(t.ty, t.n_rows() as usize, dim, file.tensor_data(t)).unwrap();
        let ids = [3u32, 0, 3, t.n_rows() as u32 - 1];
        let (mut a, mut b) = (vec![0f32; 4 * dim], vec![1f32; 4 * dim]);
        rows.gather(&ids, &mut a).unwrap();
        edgetune_core::backend::cpu::embedding::embedding_ref(&mapped, &ids, &mut b).unwrap();
        assert_eq!(a, b);
        // Fewer tokens than the staging holds; then bad input.
        rows.gather(&ids[..2], &mut a[..2 * dim]).unwrap();
        assert_eq!(a[..2 * dim], b[..2 * dim]);
        let e = rows
            .gather(&[t.n_rows() as u32], &mut a[..dim])
            .unwrap_err();
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
        assert!(rows.gather(&[0; 5], &mut vec![0.0; 5 * dim]).is_err());
        // Locked weights and an in-memory file keep the mapped gather.
        assert!(
            EmbeddingRows::for_file(&file, 4, true, false)
                .unwrap()
                .is_none()
        );
        let in_memory = GgufFile::from_bytes("m.gguf", std::fs::read(&path).unwrap()).unwrap();
        assert!(
            EmbeddingRows::for_file(&in_memory, 4, false, false)
                .unwrap()
                .is_none()
        );
    }
}
