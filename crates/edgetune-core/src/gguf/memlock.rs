//! The `RLIMIT_MEMLOCK` limit and the message for a failed `mlock` of a mapped model
//! ([`super::GgufFile::lock`], `--lock-weights`): the limit is read from `/proc/self/limits`
//! on Linux, so the message can say how far below the file size it is and how to raise it.

use std::path::Path;

use crate::Error;

/// `RLIMIT_MEMLOCK` of this process (soft limit, bytes) from `/proc/self/limits`: `Some(None)`
/// when unlimited, `None` when it cannot be read (not Linux, no `/proc`).
pub fn memlock_limit() -> Option<Option<u64>> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_memlock_limit(&text)
}

/// The soft `Max locked memory` limit of a `/proc/<pid>/limits` text (see [`memlock_limit`]).
pub fn parse_memlock_limit(limits: &str) -> Option<Option<u64>> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max locked memory"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(None),
        n => n.parse().ok().map(Some),
    }
}

/// The error for an `mlock` of `bytes` bytes of `path` that failed with `source`: it names
/// `RLIMIT_MEMLOCK`, the current limit `limit` (as from [`memlock_limit`]) and how to raise it.
pub fn memlock_error(
    path: &Path,
    bytes: u64,
    limit: Option<Option<u64>>,
    source: std::io::Error,
) -> Error {
    let limit = match limit {
        Some(Some(l)) => format!("{l} bytes ({:.1} MiB)", l as f64 / (1u64 << 20) as f64),
        Some(None) => "unlimited".into(),
        None => "unknown".into(),
    };
    Error::Invalid(format!(
        "{}: cannot lock {bytes} bytes ({:.2} GiB) of mapped weights in memory: {source}. \
         RLIMIT_MEMLOCK (max locked memory) is {limit}; raise it (`ulimit -l unlimited`, \
         `LimitMEMLOCK=infinity` in a systemd unit, or `memlock` in /etc/security/limits.conf), \
         run with CAP_IPC_LOCK, or train without --lock-weights",
        path.display(),
        bytes as f64 / (1u64 << 30) as f64
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_limit_and_message() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
            Max locked memory         8388608              16777216             bytes\n";
        assert_eq!(parse_memlock_limit(limits), Some(Some(8_388_608)));
        let unl = "Max locked memory         unlimited            unlimited            bytes\n";
        assert_eq!(parse_memlock_limit(unl), Some(None));
        assert_eq!(
            parse_memlock_limit("Max open files 1024 1024 files\n"),
            None
        );
        let e = memlock_error(
            Path::new("m.gguf"),
            4 << 30,
            Some(Some(8_388_608)),
            std::io::Error::from_raw_os_error(12),
        )
        .to_string();
        assert!(
            e.contains("m.gguf") && e.contains("RLIMIT_MEMLOCK") && e.contains("8388608"),
            "{e}"
        );
        assert!(e.contains("4294967296"), "{e}");
    }
}
