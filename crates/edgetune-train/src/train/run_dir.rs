//! The run directory (`train --out DIR`) before a run starts: the exclusive lock `DIR/.lock`
//! held for the whole run, and the rule that a fresh run starts in an empty (or absent)
//! directory.
//!
//! **The lock.** [`RunLock::acquire`] opens (creating) `DIR/.lock` and takes an exclusive,
//! non-blocking advisory lock on it (`flock` through std's [`File::try_lock`]), then writes the
//! holder's pid into it. The kernel drops the lock when its process ends, however it ends
//! (kill -9 included), so a `.lock` file left behind by a dead run is *stale* and does not
//! block: only a lock actually held refuses a second run, naming the directory and the pid
//! written in the file. The file itself is never removed (removing it while another process
//! has it open would let two runs each hold a lock on a different file).
//!
//! **A previous run.** A directory holds a previous run when it has any of [`RUN_MARKERS`]
//! (`checkpoints/`, `metrics.jsonl`, `summary.json`) that is not empty (a run stopped before
//! its first step leaves an empty `metrics.jsonl`: nothing to keep). A fresh run (neither `resume` nor
//! `overwrite`) is refused there; with `overwrite` the previous run's files ([`RUN_FILES`]:
//! the markers plus `eval-adapter/`, `best/`) are removed first. Entries a run writes before it
//! trains, or that are meant to outlive a run ([`PREPARED`]: `.lock`, the `replay/` cache of
//! `--replay self`), never count. Any other entry makes the directory "not empty": a fresh run
//! is refused there too (it would silently write into someone else's directory), unless
//! `overwrite` is given, which then writes beside those entries and leaves them alone.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::config::TrainConfig;
use edgetune_core::{Error, Result};

/// The lock file's name in the run directory.
pub const LOCK_FILE: &str = ".lock";

/// Entries whose presence means the directory holds a previous run.
pub const RUN_MARKERS: [&str; 3] = ["checkpoints", "metrics.jsonl", "summary.json"];

/// Entries a run writes that `overwrite` removes (the markers, evaluation adapters).
pub const RUN_FILES: [&str; 5] = [
    "checkpoints",
    "metrics.jsonl",
    "summary.json",
    "eval-adapter",
    "best",
];

/// Entries that do not make a directory "used": the lock, and caches meant to survive between
/// runs into the same directory.
pub const PREPARED: [&str; 2] = [LOCK_FILE, "replay"];

/// An exclusive lock on a run directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct RunLock {
    file: File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `dir` if needed and locks it; a lock held by another live run is an error that
    /// names the directory and the holder's pid.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("process {pid}"),
                    Err(_) => "another process (pid not yet written)".to_string(),
                };
                return Err(Error::Invalid(format!(
                    "{}: this run directory is in use by {holder} (lock {}); wait for that run \
                     to end or train into another directory",
                    dir.display(),
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .and_then(|()| file.flush())
            .map_err(|e| Error::io(&path, e))?;
        log::debug!("{}: locked by process {pid}", path.display());
        Ok(RunLock { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes it immediate.
        let _ = self.file.unlock();
    }
}

/// Locks `cfg.out` and makes it ready for the run: a `resume` needs the directory to exist
/// (checkpoints are looked for later); a fresh run needs it empty but for [`PREPARED`]
/// entries, or `overwrite` (which removes a previous run's [`RUN_FILES`]). Leftover temporary
/// checkpoint directories of a killed run are removed under the lock.
pub fn prepare(cfg: &TrainConfig) -> Result<RunLock> {
    let out = &cfg.out;
    if cfg.resume && !out.is_dir() {
        return Err(Error::Invalid(format!(
            "--resume {}: no checkpoint in {} to continue from (the directory does not exist; \
             start a new run with --out)",
            out.display(),
            super::checkpoint::checkpoints_dir(out).display()
        )));
    }
    let lock = RunLock::acquire(out)?;
    if !cfg.resume {
        let (markers, others) = entries(out)?;
        if !markers.is_empty() && !cfg.overwrite {
            return Err(Error::Invalid(format!(
                "{}: holds a previous run ({}); continue it with --resume, or start over with \
                 --overwrite (which deletes its checkpoints and metrics)",
                out.display(),
                markers.join(", ")
            )));
        }
        if !others.is_empty() && !cfg.overwrite {
            let shown: Vec<&str> = others.iter().take(5).map(String::as_str).collect();
            return Err(Error::Invalid(format!(
                "{}: not empty and not a run directory (holds {}{}); train into an empty or new \
                 directory, or give --overwrite to write beside these files",
                out.display(),
                shown.join(", "),
                if others.len() > 5 { ", …" } else { "" }
            )));
        }
        if cfg.overwrite {
            for name in RUN_FILES {
                remove_any(&out.join(name))?;
            }
            if !markers.is_empty() {
                log::info!("{}: --overwrite: the previous run removed", out.display());
            }
        }
    }
    super::checkpoint::clean_leftovers(&super::checkpoint::checkpoints_dir(out))?;
    Ok(lock)
}

/// The entries of `dir`: those of a previous run ([`RUN_MARKERS`]), and the others that are
/// neither run files nor [`PREPARED`] (atomic-write temporaries of run files count as run
/// files).
fn entries(dir: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let (mut markers, mut others) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if RUN_MARKERS.contains(&name.as_str()) && !is_empty(&entry.path()) {
            markers.push(name);
        } else if RUN_FILES.contains(&name.as_str())
            || PREPARED.contains(&name.as_str())
            || is_run_temporary(&name)
        {
            continue;
        } else {
            others.push(name);
        }
    }
    markers.sort();
    others.sort();
    Ok((markers, others))
}

/// An empty file or directory: a run that stopped before its first step left nothing there.
fn is_empty(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none()),
        Ok(m) => m.len() == 0,
        Err(_) => false,
    }
}

/// `.metrics.jsonl.tmp-<pid>` and the like: an atomic write of a run file cut by a kill.
/// Also `edgetune-optim-<pid>-<n>.state`, `--optimizer-state disk`'s pages, unlinked once
/// mapped (one stays only when a run is killed in between).
fn is_run_temporary(name: &str) -> bool {
    RUN_FILES
        .iter()
        .any(|f| name.starts_with(&format!(".{f}.tmp-")))
        || (name.starts_with("edgetune-optim-") && name.ends_with(".state"))
}

/// Removes a file or a directory tree; absent is fine.
fn remove_any(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let removed = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    removed.map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(out: &Path) -> TrainConfig {
        TrainConfig {
            out: out.to_path_buf(),
            ..TrainConfig::default()
        }
    }

    #[test]
    fn a_held_lock_refuses_a_second_and_a_dropped_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&dir.path().display().to_string()), "{e}");
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        drop(first);
        // The file stays behind (stale) and does not block.
        assert!(dir.path().join(LOCK_FILE).is_file());
        RunLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_fresh_run_needs_an_empty_directory_or_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        // Absent, then empty but for the prepared entries: fine.
        drop(prepare(&cfg(&out)).unwrap());
        std::fs::create_dir_all(out.join("replay")).unwrap();
        std::fs::write(out.join("replay").join("self-0.jsonl"), "{}\n").unwrap();
        drop(prepare(&cfg(&out)).unwrap());
        // A previous run: refused, naming it; --overwrite removes it but keeps the cache.
        std::fs::create_dir_all(out.join("checkpoints").join("step-00000003")).unwrap();
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let e = prepare(&cfg(&out)).unwrap_err().to_string();
        assert!(
            e.contains("previous run") && e.contains("checkpoints") && e.contains("--overwrite"),
            "{e}"
        );
        let over = TrainConfig {
            overwrite: true,
            ..cfg(&out)
        };
        drop(prepare(&over).unwrap());
        assert!(!out.join("checkpoints").exists() && !out.join("metrics.jsonl").exists());
        assert!(out.join("replay").join("self-0.jsonl").is_file());
        // A resume keeps everything.
        std::fs::write(out.join("metrics.jsonl"), "{}\n").unwrap();
        let resume = TrainConfig {
            resume: true,
            ..cfg(&out)
        };
        drop(prepare(&resume).unwrap());
        assert!(out.join("metrics.jsonl").is_file());
        // An unrelated file: refused; with --overwrite written beside, not removed.
        let other = dir.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("notes.txt"), "mine").unwrap();
        let e = prepare(&cfg(&other)).unwrap_err().to_string();
        assert!(e.contains("not empty") && e.contains("notes.txt"), "{e}");
        drop(
            prepare(&TrainConfig {
                overwrite: true,
                ..cfg(&other)
            })
            .unwrap(),
        );
        assert!(other.join("notes.txt").is_file());
    }

    #[test]
    fn resume_of_a_missing_directory_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("missing");
        let e = prepare(&TrainConfig {
            resume: true,
            ..cfg(&out)
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("no checkpoint in"), "{e}");
        assert!(!out.exists());
    }
}
