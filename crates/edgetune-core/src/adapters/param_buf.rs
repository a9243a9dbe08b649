//! An adapter's trainable tensor, held in RAM or paged from a file ([`ParamBuf`],
//! `train --adapter-weights ram|disk`).
//!
//! # Why page the adapter weights
//!
//! With streamed layers (docs/ARCHITECTURE.md, "Streamed weights") the frozen weights no longer
//! set the memory floor; the f32 master weights of the adapters are then one of the largest
//! resident parts (Llama 3.1 70B, r=16 on all 7 projections: 0.8 GiB). Each layer's adapters
//! are only needed while that layer runs: its forward, its recompute and backward, its optimizer
//! update. [`ParamPager`] moves
//! every tensor into one file, each tensor mapped shared on its own; the step calls
//! [`ParamBuf::release`] when a layer is done with it, which writes dirty pages back
//! (`msync`) and drops them from the process (`madvise(MADV_DONTNEED)`). So about one layer's
//! adapter weights are resident at a time, at full f32 precision: no rounded working copy,
//! nothing to keep in step with a master copy. The next touch reads the pages back from the page
//! cache (or the file, when the kernel reclaimed them).
//!
//! Both forms give the same `&[f32]` to the adapter's maths, so a paged run is bit-identical to
//! a run in RAM (tests/train/adapter_paging.rs).

use std::fs::File;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::{MmapMut, MmapOptions};

use crate::{Error, Result};

/// Every paged tensor starts on this many bytes of the file: a page on the usual 4 KiB-page
/// systems, so releasing one tensor never drops a neighbour's page from its own map (memmap2
/// aligns other offsets itself, so larger pages only cost sharing, not correctness).
pub const PARAM_PAGE_ALIGN: u64 = 4096;

/// Bytes `numel` f32 values take in the paged file, rounded up to [`PARAM_PAGE_ALIGN`].
pub fn paged_bytes(numel: usize) -> u64 {
    (4 * numel as u64).div_ceil(PARAM_PAGE_ALIGN) * PARAM_PAGE_ALIGN
}

/// One trainable tensor of an adapter: `Deref<Target = [f32]>`, in RAM or paged from a file.
pub struct ParamBuf(Repr);

enum Repr {
    Owned(Vec<f32>),
    Paged(PagedTensor),
}

/// A tensor's own shared map of its range of the file.
struct PagedTensor {
    /// `4·len` bytes (dropped before `file`, so the last map goes before the file's guard).
    map: MmapMut,
    len: usize,
    /// Set by every writable borrow, cleared by the write-back in [`ParamBuf::release`]: a
    /// tensor only read since its last release is dropped without an `msync`.
    dirty: AtomicBool,
    file: Arc<PagedFile>,
}

/// The file behind a [`ParamPager`]'s tensors (unlinked on Unix right after it is created, so a
/// killed run leaves nothing behind; elsewhere removed when the last tensor goes).
struct PagedFile {
    path: PathBuf,
}

#[cfg(not(unix))]
impl Drop for PagedFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ParamBuf {
    /// A tensor of `n` zeros in RAM.
    pub fn zeros(n: usize) -> ParamBuf {
        ParamBuf(Repr::Owned(vec![0.0; n]))
    }

    /// Whether the tensor lives in a file.
    pub fn is_paged(&self) -> bool {
        matches!(self.0, Repr::Paged(_))
    }

    /// Done with the tensor for now. Paged: dirty pages are written back (`msync`) and every
    /// page is dropped from this process (`madvise(MADV_DONTNEED)`); the values stay (the map
    /// is shared over a file, so nothing is zeroed) and come back on the next touch. In RAM:
    /// nothing. A failed write-back is an error (a full disk must not lose an update); a failed
    /// `madvise` only leaves the pages resident and is logged.
    pub fn release(&self) -> Result<()> {
        let Repr::Paged(t) = &self.0 else {
            return Ok(());
        };
        if t.dirty.swap(false, Ordering::AcqRel) {
            t.map.flush().map_err(|e| Error::io(&t.file.path, e))?;
        }
        #[cfg(unix)]
        {
            // SAFETY: the map is MAP_SHARED over a file, so MADV_DONTNEED only unmaps the
            // pages: the next access reads the same bytes back from the page cache or the file.
            // Any `&[f32]` into the map stays valid (it only faults the pages in again).
            if let Err(e) = unsafe { t.map.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) } {
                log::debug!(
                    "{}: madvise(DONTNEED) failed, an adapter tensor stays resident: {e}",
                    t.file.path.display()
                );
            }
        }
        Ok(())
    }

    /// The tensor's map address and byte length when paged (for residency checks).
    pub fn paged_range(&self) -> Option<(usize, usize)> {
        match &self.0 {
            Repr::Paged(t) => Some((t.map.as_ptr() as usize, t.map.len())),
            Repr::Owned(_) => None,
        }
    }
}

impl From<Vec<f32>> for ParamBuf {
    fn from(v: Vec<f32>) -> ParamBuf {
        ParamBuf(Repr::Owned(v))
    }
}

impl Deref for ParamBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match &self.0 {
            Repr::Owned(v) => v,
            // The map starts on a page (f32-aligned) and is exactly `4·len` bytes.
            Repr::Paged(t) => &bytemuck::cast_slice(&t.map[..])[..t.len],
        }
    }
}

impl DerefMut for ParamBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        match &mut self.0 {
            Repr::Owned(v) => v,
            Repr::Paged(t) => {
                *t.dirty.get_mut() = true;
                &mut bytemuck::cast_slice_mut(&mut t.map[..])[..t.len]
            }
        }
    }
}

impl<'a> IntoIterator for &'a ParamBuf {
    type Item = &'a f32;
    type IntoIter = std::slice::Iter<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a> IntoIterator for &'a mut ParamBuf {
    type Item = &'a mut f32;
    type IntoIter = std::slice::IterMut<'a, f32>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

/// A copy is always in RAM (a second map of the same range would alias the first).
impl Clone for ParamBuf {
    fn clone(&self) -> ParamBuf {
        ParamBuf(Repr::Owned(self.to_vec()))
    }
}

impl PartialEq for ParamBuf {
    fn eq(&self, other: &ParamBuf) -> bool {
        self[..] == other[..]
    }
}

impl std::fmt::Debug for ParamBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if self.is_paged() { "paged" } else { "ram" };
        write!(f, "ParamBuf({} values, {place})", self.len())
    }
}

/// Moves tensors into one file, each into its own page-aligned range ([`paged_bytes`] each);
/// the file grows as tensors are added, so adapters can be paged one by one as they are built
/// and all of them never need to be in RAM at once.
pub struct ParamPager {
    file: File,
    guard: Arc<PagedFile>,
    /// Bytes of the file in use (where the next tensor goes).
    next: u64,
}

impl ParamPager {
    /// A new, empty file in `dir`.
    pub fn create(dir: &Path) -> Result<ParamPager> {
        let (file, path) = crate::optim::paged::create_scratch_file(dir, "adapter", "weights")?;
        Ok(ParamPager {
            file,
            guard: Arc::new(PagedFile { path }),
            next: 0,
        })
    }

    /// Bytes of the file so far.
    pub fn len(&self) -> u64 {
        self.next
    }

    /// Whether nothing was paged yet.
    pub fn is_empty(&self) -> bool {
        self.next == 0
    }

    /// Moves `buf`'s values into the file's next range and makes `buf` a view of it (released:
    /// nothing stays resident). An empty or already paged tensor is left as it is.
    pub fn page(&mut self, buf: &mut ParamBuf) -> Result<()> {
        let Repr::Owned(values) = &buf.0 else {
            return Ok(());
        };
        if values.is_empty() {
            return Ok(());
        }
        let path = &self.guard.path;
        let end = self
            .next
            .checked_add(paged_bytes(values.len()))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: a tensor of {} values past offset {} overflows the file size",
                    path.display(),
                    values.len(),
                    self.next
                ))
            })?;
        // Sparse growth: the maps of the earlier ranges stay valid.
        self.file.set_len(end).map_err(|e| Error::io(path, e))?;
        let bytes = 4 * values.len();
        // SAFETY: the file was created by this pager (create_new) and is only reached through
        // these maps, each over its own range; nothing truncates it while they live.
        let mut map = unsafe {
            MmapOptions::new()
                .offset(self.next)
                .len(bytes)
                .map_mut(&self.file)
        }
        .map_err(|e| Error::io(path, e))?;
        map.copy_from_slice(bytemuck::cast_slice(values));
        let tensor = PagedTensor {
            len: values.len(),
            map,
            dirty: AtomicBool::new(true),
            file: Arc::clone(&self.guard),
        };
        self.next = end;
        *buf = ParamBuf(Repr::Paged(tensor));
        buf.release()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident bytes of a paged tensor's map.
    fn resident(range: (usize, usize)) -> u64 {
        crate::memory::rss::mapping_resident_bytes(range.0)
            .unwrap()
            .expect("the tensor's map is in /proc/self/smaps")
    }

    #[test]
    fn a_paged_tensor_keeps_its_values_through_writes_and_releases() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<f32> = (0..5000).map(|i| i as f32 * 0.25 - 7.0).collect();
        let mut a = ParamBuf::from(values.clone());
        let mut b = ParamBuf::from(vec![1.5; 3]);
        let mut pager = ParamPager::create(dir.path()).unwrap();
        pager.page(&mut a).unwrap();
        pager.page(&mut b).unwrap();
        assert_eq!(pager.len(), paged_bytes(5000) + paged_bytes(3));
        assert_eq!((paged_bytes(5000), paged_bytes(3)), (20480, 4096));
        assert!(a.is_paged() && b.is_paged());
        assert_eq!(&a[..], &values[..]);
        assert_eq!(&b[..], &[1.5; 3]);
        a[4999] = 42.0;
        b[0] = -1.0;
        a.release().unwrap();
        b.release().unwrap();
        assert_eq!(a[4999], 42.0);
        assert_eq!(a[..4999], values[..4999]);
        assert_eq!(&b[..], &[-1.0, 1.5, 1.5]);
        // A copy is an independent tensor in RAM.
        let mut c = a.clone();
        assert!(!c.is_paged());
        c[0] = 9.0;
        assert_eq!(a[0], values[0]);
        // Nothing is left in the directory (unlinked on Unix).
        #[cfg(unix)]
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_release_drops_the_pages_from_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1 << 20; // 4 MiB
        let mut a = ParamBuf::zeros(n);
        let mut pager = ParamPager::create(dir.path()).unwrap();
        pager.page(&mut a).unwrap();
        let range = a.paged_range().unwrap();
        assert_eq!(range.1, 4 * n);
        assert_eq!(resident(range), 0, "paging leaves nothing resident");
        a.iter_mut().for_each(|v| *v += 1.0);
        assert_eq!(resident(range), 4 * n as u64, "a write brings the pages in");
        a.release().unwrap();
        assert_eq!(resident(range), 0, "a release drops them");
        assert!(a.iter().all(|&v| v == 1.0), "and the values come back");
    }

    #[test]
    fn a_pager_in_a_missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-run");
        let e = ParamPager::create(&missing).err().unwrap().to_string();
        assert!(e.contains("no-such-run"), "{e}");
    }
}
