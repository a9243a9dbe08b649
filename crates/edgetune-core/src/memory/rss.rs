//! What the process really holds: resident memory split into file-backed pages (the mapped
//! weights), anonymous pages (arena, optimizer state, everything allocated) and shared memory,
//! the high-water mark, and locked bytes — read from `/proc/self/status` and
//! `/proc/self/smaps_rollup` on Linux (elsewhere there is nothing to read: `None`).
//!
//! `smaps_rollup` walks the page tables, so its `Rss`/`Anonymous`/`Locked` are exact; the
//! `status` counters (`VmRSS`, `RssAnon`, …) are kept per thread and folded in lazily on kernels
//! before 6.2, so they can lag by up to 64 page events per thread. We take the exact numbers
//! where `smaps_rollup` exists (Linux ≥ 4.14) and the `status` ones otherwise; `VmHWM` (the peak)
//! and `RssShmem` come from `status` only.

use serde::Serialize;

use crate::{Error, Result};

/// Resident memory of this process, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MemoryUsage {
    /// Resident set: `rss_file + rss_anon + rss_shmem`.
    pub rss: u64,
    /// Resident pages of mapped files (the weights, the binary and its libraries).
    pub rss_file: u64,
    /// Resident anonymous pages (heap, stacks, the arena, RAM optimizer state).
    pub rss_anon: u64,
    /// Resident shared memory (tmpfs / shm maps).
    pub rss_shmem: u64,
    /// The resident high-water mark (`VmHWM`).
    pub peak_rss: u64,
    /// Locked bytes (`mlock`), 0 when nothing is locked.
    pub locked: u64,
    /// Swapped-out anonymous bytes.
    pub swap: u64,
}

/// The `status` and `smaps_rollup` paths of this process.
const STATUS: &str = "/proc/self/status";
const SMAPS_ROLLUP: &str = "/proc/self/smaps_rollup";

/// This process's memory now: `Ok(None)` where there is no `/proc` (not Linux); an error when
/// the files exist but cannot be read or parsed.
pub fn memory_usage() -> Result<Option<MemoryUsage>> {
    if !cfg!(target_os = "linux") {
        return Ok(None);
    }
    let status = std::fs::read_to_string(STATUS).map_err(|e| Error::io(STATUS, e))?;
    // Absent before Linux 4.14 and in some sandboxes: fall back to the status counters.
    let rollup = std::fs::read_to_string(SMAPS_ROLLUP).ok();
    MemoryUsage::parse(&status, rollup.as_deref()).map(Some)
}

impl MemoryUsage {
    /// Parses the text of `/proc/<pid>/status` and, when given, `/proc/<pid>/smaps_rollup`.
    /// Missing or malformed fields are errors naming the file and the field.
    pub fn parse(status: &str, smaps_rollup: Option<&str>) -> Result<MemoryUsage> {
        let st = |key: &str| kib_field(status, key, STATUS);
        let peak_rss = st("VmHWM")?;
        let rss_shmem = st("RssShmem")?;
        let swap = st("VmSwap")?;
        let (rss, rss_anon, locked) = match smaps_rollup {
            Some(text) => {
                let ro = |key: &str| kib_field(text, key, SMAPS_ROLLUP);
                (ro("Rss")?, ro("Anonymous")?, ro("Locked")?)
            }
            None => (st("VmRSS")?, st("RssAnon")?, st("VmLck")?),
        };
        // The rollup's Rss includes shmem; status's RssShmem may lag it by a few pages, so
        // saturate rather than underflow.
        let rss_file = rss.saturating_sub(rss_anon).saturating_sub(rss_shmem);
        Ok(MemoryUsage {
            rss,
            rss_file,
            rss_anon,
            rss_shmem,
            // The peak is at least what is resident now (the counters may lag each other).
            peak_rss: peak_rss.max(rss),
            locked,
            swap,
        })
    }
}

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`: the top of the heap
/// and, since glibc 2.8, whole free pages inside it). After a large one-time structure is freed
/// (a checkpoint's adapters loaded in RAM and then paged to a file), glibc would otherwise keep
/// those pages resident for reuse. Elsewhere (musl, other systems) nothing happens.
pub fn return_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory malloc holds as free; no pointer is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Resident bytes of the mapping that starts at `addr`, from `/proc/self/smaps`: `Ok(None)` where
/// there is no `/proc` (not Linux) or no mapping starts there. For residency checks of paged
/// state (optimizer state, adapter weights).
pub fn mapping_resident_bytes(addr: usize) -> Result<Option<u64>> {
    const SMAPS: &str = "/proc/self/smaps";
    if !cfg!(target_os = "linux") {
        return Ok(None);
    }
    let smaps = std::fs::read_to_string(SMAPS).map_err(|e| Error::io(SMAPS, e))?;
    // Each mapping is a header line `start-end perms …` (hex, no 0x) and its fields; the first
    // `Rss:` after the header is the mapping's own.
    let header = format!("{addr:x}-");
    let at = if smaps.starts_with(&header) {
        Some(0)
    } else {
        smaps.find(&format!("\n{header}"))
    };
    at.map(|at| kib_field(&smaps[at..], "Rss", SMAPS))
        .transpose()
}

/// The value of a `Key:   123 kB` line, in bytes. `origin` names the file in errors.
pub(crate) fn kib_field(text: &str, key: &str, origin: &str) -> Result<u64> {
    let bad = |what: String| Error::Invalid(format!("{origin}: field `{key}`: {what}"));
    let rest = text
        .lines()
        .find_map(|line| line.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
        .ok_or_else(|| bad("missing".into()))?;
    let mut parts = rest.split_whitespace();
    let number = parts.next().ok_or_else(|| bad("no value".into()))?;
    let kib: u64 = number
        .parse()
        .map_err(|_| bad(format!("`{number}` is not a number")))?;
    match parts.next() {
        Some(unit) if unit.eq_ignore_ascii_case("kb") => {}
        other => return Err(bad(format!("unit {other:?}, expected kB"))),
    }
    kib.checked_mul(1024)
        .ok_or_else(|| bad(format!("{kib} kB overflows u64 bytes")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_FIXTURE: &str = "Name:\tedgetune\nVmPeak:\t 5000 kB\nVmLck:\t     8 kB\n\
        VmHWM:\t    3000 kB\nVmRSS:\t    2000 kB\nRssAnon:\t     500 kB\nRssFile:\t    1400 kB\n\
        RssShmem:\t     100 kB\nVmSwap:\t       4 kB\nThreads:\t1\n";

    const ROLLUP_FIXTURE: &str = "55a598058000-7ffc75b08000 ---p 00000000 00:00 0   [rollup]\n\
        Rss:                2048 kB\nPss:                 324 kB\nPss_Anon:            112 kB\n\
        Anonymous:           600 kB\nLazyFree:              0 kB\nSwap:                  4 kB\n\
        Locked:               16 kB\n";

    #[test]
    fn parses_status_alone_and_with_the_rollup() {
        let m = MemoryUsage::parse(STATUS_FIXTURE, None).unwrap();
        assert_eq!(
            m,
            MemoryUsage {
                rss: 2000 * 1024,
                rss_file: 1400 * 1024,
                rss_anon: 500 * 1024,
                rss_shmem: 100 * 1024,
                peak_rss: 3000 * 1024,
                locked: 8 * 1024,
                swap: 4 * 1024,
            }
        );
        let m = MemoryUsage::parse(STATUS_FIXTURE, Some(ROLLUP_FIXTURE)).unwrap();
        assert_eq!(m.rss, 2048 * 1024);
        assert_eq!(m.rss_anon, 600 * 1024);
        assert_eq!(m.rss_file, (2048 - 600 - 100) * 1024);
        assert_eq!(m.locked, 16 * 1024);
        assert_eq!(m.peak_rss, 3000 * 1024);
    }

    #[test]
    fn malformed_fields_are_errors_naming_file_and_field() {
        let e = MemoryUsage::parse("VmRSS: 1 kB\n", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/proc/self/status") && e.contains("VmHWM"),
            "{e}"
        );
        let bad = STATUS_FIXTURE.replace("3000 kB", "lots kB");
        let e = MemoryUsage::parse(&bad, None).unwrap_err().to_string();
        assert!(e.contains("VmHWM") && e.contains("lots"), "{e}");
        let bad = STATUS_FIXTURE.replace("3000 kB", "3000 MB");
        assert!(MemoryUsage::parse(&bad, None).is_err());
        let huge = STATUS_FIXTURE.replace("3000 kB", "99999999999999999999 kB");
        assert!(MemoryUsage::parse(&huge, None).is_err());
        let e = MemoryUsage::parse(STATUS_FIXTURE, Some("Rss: 1 kB\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("smaps_rollup") && e.contains("Anonymous"), "{e}");
        // A key that is only a prefix of another does not match it.
        assert!(kib_field("VmRSSx: 1 kB\n", "VmRSS", "t").is_err());
    }
}
