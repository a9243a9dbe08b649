//! GGUF v2/v3: a hostile-input-safe reader over a memory map, and a streaming writer.
//!
//! [`GgufFile::open`] maps the file read-only, parses the header, metadata and tensor infos,
//! and validates everything before returning (see [`reader`] for the layout and the caps).
//! Tensor data are slices of the map ([`GgufFile::tensor_data`]): never copied, paged in by the
//! OS when a kernel reads them. [`GgufFile::from_bytes`] runs the same checks on an owned buffer
//! (tests, fuzzing).
//!
//! Limits (constants in [`reader`]): every count is first bounded by the bytes left in the file
//! divided by the smallest encoding of one item (an array of `n` strings needs ≥ 8n bytes), so
//! parsed metadata costs at most ~3× the file's bytes; on top of that, ≤ 2^20 metadata entries,
//! ≤ 2^20 tensors, keys and tensor names ≤ 64 KiB, string values ≤ 1 GiB, arrays nested ≤ 8
//! deep, 1..=4 dims each ≥ 1, `general.alignment` a power of two ≤ 2^31. Tensors may appear in
//! any order in the data section but must not overlap (llama.cpp also requires file order).
//!
//! [`GgufWriter`] writes a file without holding its data: the header and infos are computed
//! up front, then a callback streams each tensor's bytes, in chunks of any size, into a
//! [`TensorSink`] that refuses too many bytes and reports too few.
//!
//! ```
//! use edgetune_core::gguf::{GgufFile, GgufWriter, Value};
//! use edgetune_core::quant::GgmlType;
//!
//! let mut w = GgufWriter::new(32);
//! w.add_kv("general.architecture", Value::String("llama".into()))?;
//! w.add_tensor("blk.0.attn_q.weight.lora_a", &[64, 8], GgmlType::F32)?;
//! let mut bytes = Vec::new();
//! w.write(&mut bytes, |_index, info, sink| {
//!     // Stream `info.n_bytes` bytes, here one row (64 f32) at a time.
//!     let row = [0u8; 64 * 4];
//!     for _ in 0..info.n_rows() {
//!         sink.write_all(&row)?;
//!     }
//!     Ok(())
//! })?;
//!
//! let f = GgufFile::from_bytes("adapter.gguf", bytes)?;
//! assert_eq!(f.str("general.architecture")?, "llama");
//! let (info, data) = f.tensor_by_name("blk.0.attn_q.weight.lora_a")?;
//! assert_eq!((info.dims.as_slice(), data.len()), (&[64u64, 8][..], 64 * 8 * 4));
//! # Ok::<(), edgetune_core::Error>(())
//! ```

mod cursor;
pub mod ggml_type;
pub mod memlock;
pub mod metadata;
pub mod reader;
pub mod tensor;
pub mod value;
pub mod writer;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use ggml_type::GgmlType;
pub use metadata::Metadata;
pub use reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
pub use tensor::TensorInfo;
pub use value::{Array, Value, ValueType};
pub use writer::{GgufWriter, TensorSink};

use crate::Error;

/// The bytes of an open file: a read-only map, or an owned buffer.
enum Backing {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Map(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file and its bytes.
pub struct GgufFile {
    path: PathBuf,
    backing: Backing,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("file_size", &self.file_size())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only, then parses and validates it.
    pub fn open(path: impl AsRef<Path>) -> crate::Result<GgufFile> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if meta.is_dir() {
            return Err(Error::Invalid(format!(
                "{}: is a directory, not a GGUF file (give the model's .gguf file)",
                path.display()
            )));
        }
        let len = meta.len();
        if len == 0 {
            // Mapping an empty file fails on some systems; the parser reports the truncation.
            return Self::from_backing(path.to_path_buf(), Backing::Owned(Vec::new()));
        }
        // SAFETY: the map is only ever read as `&[u8]`, and all parsing is bounds-checked, so
        // any *contents* are fine. What Rust cannot guarantee is that the bytes do not change
        // underneath us: we assume no other process modifies or truncates a model file while
        // edgetune has it open (truncation would raise SIGBUS on access). edgetune itself never
        // writes a file in place: `GgufWriter::write_to_path` writes a temporary file and
        // renames it, so an existing map keeps the old inode.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Self::from_backing(path.to_path_buf(), Backing::Map(map))
    }

    /// Parses and validates `bytes` as a GGUF file; `name` is used in messages.
    pub fn from_bytes(name: impl Into<PathBuf>, bytes: Vec<u8>) -> crate::Result<GgufFile> {
        Self::from_backing(name.into(), Backing::Owned(bytes))
    }

    fn from_backing(path: PathBuf, backing: Backing) -> crate::Result<GgufFile> {
        let p = reader::parse(&path, backing.bytes())?;
        Ok(GgufFile {
            path,
            backing,
            version: p.version,
            alignment: p.alignment,
            data_offset: p.data_offset,
            metadata: p.metadata,
            tensors: p.tensors,
            tensor_index: p.tensor_index,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// `general.alignment`, or 32.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the data section (tensor offsets are relative to it).
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Whether the bytes are a map of the file at [`GgufFile::path`] (not [`GgufFile::from_bytes`]).
    pub fn is_mapped(&self) -> bool {
        matches!(self.backing, Backing::Map(_))
    }

    pub fn file_size(&self) -> u64 {
        self.backing.bytes().len() as u64
    }

    /// The whole file.
    pub fn as_bytes(&self) -> &[u8] {
        self.backing.bytes()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of `t`, borrowed from the map. `t` must be one of this file's tensors (all of
    /// which were checked to lie inside the file); a foreign `TensorInfo` whose range does not
    /// fit yields an empty slice.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        let start = self.data_offset.saturating_add(t.offset);
        let end = start.saturating_add(t.n_bytes);
        match (usize::try_from(start), usize::try_from(end)) {
            (Ok(s), Ok(e)) => self.backing.bytes().get(s..e).unwrap_or(&[]),
            _ => &[],
        }
    }

    /// Locks the whole map in memory (`mlock`), so no weight page is evicted and re-read
    /// during training (`--lock-weights`). Fails, with a message naming `RLIMIT_MEMLOCK` and its
    /// current value, when the limit is below the file size (and the process lacks
    /// `CAP_IPC_LOCK`), and for a file that was not mapped ([`GgufFile::from_bytes`]).
    pub fn lock(&self) -> crate::Result<()> {
        match &self.backing {
            Backing::Map(m) => m.lock().map_err(|e| {
                memlock::memlock_error(&self.path, m.len() as u64, memlock::memlock_limit(), e)
            }),
            Backing::Owned(_) => Err(Error::Invalid(format!(
                "{}: held in memory, not mapped: there is no map to lock",
                self.path.display()
            ))),
        }
    }

    /// Drops this process's mapping of every page it touched (`madvise(MADV_DONTNEED)`): the
    /// pages leave the process's resident set and stay in the page cache, and a later access
    /// maps them again. Streamed training (`model::stream`) calls it after loading, so the
    /// norm vectors and the header read through the map leave no file-backed residue. A no-op
    /// for a file held in memory.
    pub fn release_pages(&self) -> crate::Result<()> {
        #[cfg(unix)]
        if let Backing::Map(m) = &self.backing {
            // SAFETY: the map is read-only and file-backed: dropping its pages loses nothing
            // (they are re-read from the file on the next access), and no reference into the
            // map observes a change in value.
            unsafe { m.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) }
                .map_err(|e| Error::io(&self.path, e))?;
        }
        Ok(())
    }

    /// The info and bytes of tensor `name`; a missing tensor is `Error::Tensor` naming the file.
    pub fn tensor_by_name(&self, name: &str) -> crate::Result<(&TensorInfo, &[u8])> {
        let t = self.tensor(name).ok_or_else(|| Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            what: format!("not in the file ({} tensors)", self.tensors.len()),
        })?;
        Ok((t, self.tensor_data(t)))
    }
}
