//! Paged optimizer state (DESIGN.md §4.4, derivatives.md §2.4): every tensor's state lives in its
//! own page of one backing store outside the arena — a zeroed `Vec` in RAM, or a file-backed
//! shared map in a directory (`--optimizer-state ram|disk`). A tensor's update borrows only its
//! own page, so on disk only that tensor's pages are brought in (the staging window is one
//! tensor's state); the kernel may evict clean or written-back pages of the others under memory
//! pressure, which anonymous RAM without swap cannot do.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use crate::{Error, Result};

/// Where the optimizer state lives.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StateStorage {
    /// A zeroed heap allocation.
    #[default]
    Ram,
    /// A file created in this directory, mapped shared, and deleted when the optimizer is dropped
    /// (on Unix it is unlinked right after mapping, so a killed run leaves nothing behind).
    Disk(PathBuf),
}

/// Pages start on this many bytes, so any page can be viewed as f32 (the map itself is
/// page-aligned and the RAM store is a `Vec<u64>`).
pub const PAGE_ALIGN: usize = 64;

/// Rounds `bytes` up to [`PAGE_ALIGN`].
pub fn page_round(bytes: usize) -> usize {
    bytes.div_ceil(PAGE_ALIGN) * PAGE_ALIGN
}

/// The backing bytes of all pages.
pub(crate) struct StateStore {
    backing: Backing,
    len: usize,
}

enum Backing {
    Ram(Vec<u64>),
    Disk {
        map: MmapMut,
        _file: File,
        #[cfg_attr(unix, allow(dead_code))]
        path: PathBuf,
    },
}

/// Distinguishes the files of several optimizers in one process.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

impl StateStore {
    /// A zero-filled store of `len` bytes (`len` a multiple of [`PAGE_ALIGN`]).
    pub(crate) fn new(storage: &StateStorage, len: usize) -> Result<Self> {
        debug_assert_eq!(len % PAGE_ALIGN, 0);
        let backing = match storage {
            StateStorage::Ram => Backing::Ram(vec![0u64; len / 8]),
            StateStorage::Disk(dir) => Self::create_file(dir, len)?,
        };
        Ok(Self { backing, len })
    }

    fn create_file(dir: &Path, len: usize) -> Result<Backing> {
        let name = format!(
            "edgetune-optim-{}-{}.state",
            std::process::id(),
            FILE_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // A sparse file of zeros: f32 zeros and 8-bit absmax zeros are all-zero bytes, and the
        // 8-bit codes are set by the optimizer after construction.
        file.set_len(len.max(1) as u64)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: the file was just created by us (create_new) and is only accessed through this
        // map; nothing else truncates it while mapped.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io(&path, e))?;
        #[cfg(unix)]
        if let Err(e) = std::fs::remove_file(&path) {
            log::warn!(
                "{}: could not unlink optimizer state file: {e}",
                path.display()
            );
        }
        Ok(Backing::Disk {
            map,
            _file: file,
            path,
        })
    }

    /// Total bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// All bytes (for checkpoints).
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Ram(v) => &bytemuck::cast_slice(v)[..self.len],
            Backing::Disk { map, .. } => &map[..self.len],
        }
    }

    /// All bytes, writable (for checkpoint loads).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.backing {
            Backing::Ram(v) => &mut bytemuck::cast_slice_mut(v)[..self.len],
            Backing::Disk { map, .. } => &mut map[..self.len],
        }
    }

    /// One page: `len` bytes from `offset` (both validated by the layout).
    pub(crate) fn page_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        &mut self.bytes_mut()[offset..offset + len]
    }
}

// On Unix the file was unlinked right after mapping. Elsewhere, remove it now (best effort: the
// handle is still open at this point, so some systems refuse and leave the file behind).
#[cfg(not(unix))]
impl Drop for StateStore {
    fn drop(&mut self) {
        if let Backing::Disk { path, .. } = &self.backing {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// How one tensor's state is stored in its page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PageKind {
    /// `m: [f32; n]` then `v: [f32; n]`.
    F32,
    /// `absmax: [f32; 2·nb]` (m's then v's), `q_m: [u8; n]`, `q_v: [u8; n]` (state8bit.rs).
    Eight,
}

/// Where one tensor's state lives in the store.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Page {
    pub offset: usize,
    pub numel: usize,
    pub kind: PageKind,
}

impl Page {
    /// Bytes of state (before rounding to the page alignment).
    pub(crate) fn state_bytes(&self) -> usize {
        match self.kind {
            PageKind::F32 => 8 * self.numel,
            PageKind::Eight => super::state8bit::state_bytes_8bit(self.numel),
        }
    }
}

/// Lays the pages out one after the other; returns the pages and the store's total length.
pub(crate) fn layout(
    numels: impl Iterator<Item = (usize, PageKind)>,
) -> Result<(Vec<Page>, usize)> {
    let mut pages = Vec::new();
    let mut offset = 0usize;
    for (numel, kind) in numels {
        let page = Page {
            offset,
            numel,
            kind,
        };
        let bytes = page
            .numel
            .checked_mul(8)
            .map(|_| page_round(page.state_bytes()))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "optimizer: tensor of {numel} elements is too large"
                ))
            })?;
        offset = offset
            .checked_add(bytes)
            .ok_or_else(|| Error::Invalid("optimizer: state size overflows usize".into()))?;
        pages.push(page);
    }
    Ok((pages, offset))
}
