//! Paged optimizer state (docs/METHODS.md#paged-optimizer-state): every tensor's state lives in its
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
        /// Where the file was created (unlinked on Unix): for messages.
        path: PathBuf,
    },
}

/// Distinguishes the scratch files of one process.
static FILE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates `dir/edgetune-{kind}-{pid}-{n}.{ext}` (new, read-write) for state that lives outside
/// the process's memory (optimizer pages, paged adapter weights) and, on Unix, unlinks it at
/// once: the open handle and any map keep the data until the process lets go, so a killed run
/// leaves nothing behind. Returns the file and the path it had (for messages; elsewhere the
/// caller removes it when done).
pub(crate) fn create_scratch_file(dir: &Path, kind: &str, ext: &str) -> Result<(File, PathBuf)> {
    let name = format!(
        "edgetune-{kind}-{}-{}.{ext}",
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
    #[cfg(unix)]
    if let Err(e) = std::fs::remove_file(&path) {
        log::warn!("{}: could not unlink the {kind} file: {e}", path.display());
    }
    Ok((file, path))
}

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
        let (file, path) = create_scratch_file(dir, "optim", "state")?;
        // A sparse file of zeros: f32 zeros and 8-bit absmax zeros are all-zero bytes, and the
        // 8-bit codes are set by the optimizer after construction.
        file.set_len(len.max(1) as u64)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: the file was just created by us (create_new) and is only accessed through this
        // map; nothing else truncates it while mapped.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| Error::io(&path, e))?;
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

    /// Done with `len` bytes from `offset` for now. On disk: writes them back to the file
    /// (`msync(MS_SYNC)`) and drops them from this process (`madvise(MADV_DONTNEED)`), so at most
    /// one tensor's page is resident at a time — what the memory plan counts — and none is left
    /// dirty in the page cache for the kernel to write back later. In RAM: nothing.
    ///
    /// A failed write-back is an error (the state would otherwise be lost silently on a full
    /// disk); a failed `madvise` only leaves the pages resident and is logged.
    pub(crate) fn release(&self, offset: usize, len: usize) -> Result<()> {
        let Backing::Disk { map, path, .. } = &self.backing else {
            return Ok(());
        };
        if len == 0 {
            return Ok(());
        }
        map.flush_range(offset, len)
            .map_err(|e| Error::io(path, e))?;
        #[cfg(unix)]
        {
            // SAFETY: the map is MAP_SHARED over a file, so MADV_DONTNEED only unmaps the pages:
            // the next access reads them back from the page cache or the file, with the bytes
            // just written back (nothing is zeroed, unlike for private anonymous memory). No
            // reference into the range is alive here (`&self`, and every page view is
            // borrowed from `&mut self` for the length of one update).
            let advised = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len)
            };
            if let Err(e) = advised {
                log::debug!(
                    "{}: madvise(DONTNEED) failed, the page stays resident: {e}",
                    path.display()
                );
            }
        }
        Ok(())
    }

    /// The map's address and length on disk (for residency checks), `None` in RAM.
    #[cfg(test)]
    pub(crate) fn disk_map(&self) -> Option<(usize, usize)> {
        match &self.backing {
            Backing::Disk { map, .. } => Some((map.as_ptr() as usize, map.len())),
            Backing::Ram(_) => None,
        }
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

/// On disk, the state is resident one page at a time: after steps, a checkpoint save and a
/// load, the map holds at most the largest page (plus the two partial pages at its ends).
#[cfg(all(test, target_os = "linux"))]
mod residency_tests {
    use super::super::adamw::{AdamW, AdamWConfig};
    use super::super::{ParamGroup, ParamSpec, StateBits};
    use super::StateStorage;

    fn mapping_rss(addr: usize) -> u64 {
        crate::memory::rss::mapping_resident_bytes(addr)
            .unwrap()
            .unwrap_or_else(|| panic!("no mapping at {addr:#x} in /proc/self/smaps"))
    }

    #[test]
    fn disk_state_is_resident_one_page_at_a_time() {
        for bits in [StateBits::F32, StateBits::Eight] {
            let dir = tempfile::tempdir().unwrap();
            // 16 tensors of 256 Ki elements: 2 MiB of f32 state each, 32 MiB in all.
            let n = 1 << 18;
            let specs = vec![ParamSpec { numel: n, group: 0 }; 16];
            let groups = [ParamGroup::new(0.0)];
            let storage = StateStorage::Disk(dir.path().to_path_buf());
            let mut opt =
                AdamW::new(AdamWConfig::default(), &groups, &specs, bits, &storage).unwrap();
            let (addr, len) = opt.store_map().unwrap();
            let largest = opt.store_bytes() / specs.len();
            let bound = (largest + 2 * 4096) as u64;
            let mut params = vec![vec![0.5f32; n]; specs.len()];
            let grads = vec![vec![0.25f32; n]; specs.len()];
            for _ in 0..2 {
                let mut p: Vec<&mut [f32]> = params.iter_mut().map(|p| &mut p[..]).collect();
                let g: Vec<&[f32]> = grads.iter().map(|g| &g[..]).collect();
                opt.step(&mut p, &g, 1e-3).unwrap();
            }
            let after_steps = mapping_rss(addr);
            assert!(
                after_steps <= bound,
                "{bits:?}: {after_steps} B of the {len}-byte map resident after two steps (bound {bound})"
            );
            let mut saved = Vec::new();
            opt.save(&mut saved).unwrap();
            let after_save = mapping_rss(addr);
            assert!(
                after_save <= bound,
                "{bits:?}: {after_save} B resident after a save"
            );
            // The state survived the round trips through the file: a fresh optimizer loads it
            // and saves the same bytes.
            let mut again =
                AdamW::new(AdamWConfig::default(), &groups, &specs, bits, &storage).unwrap();
            again.load(&mut &saved[..]).unwrap();
            let (addr2, _) = again.store_map().unwrap();
            assert!(
                mapping_rss(addr2) <= bound,
                "{bits:?}: resident after a load"
            );
            let mut resaved = Vec::new();
            again.save(&mut resaved).unwrap();
            assert!(
                saved == resaved,
                "{bits:?}: the state changed through save and load"
            );
        }
    }
}
