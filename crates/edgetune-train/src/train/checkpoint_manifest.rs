//! A checkpoint's manifest, `step-NNNNNNNN/manifest.json`: the size and SHA-256 of every other
//! file of the checkpoint, written last into the temporary directory (after every file is
//! fsynced, before the directory is renamed into place) and checked before a checkpoint is
//! resumed from. A file that is missing, has another size or another hash makes the checkpoint
//! corrupt ([`Error::Corrupt`], naming the file and the numbers). Checkpoints written before
//! manifests existed have none and are taken as they are ([`Verified::Legacy`]).

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use edgetune_core::{Error, Result};

/// The manifest's file name in a checkpoint directory.
pub const MANIFEST: &str = "manifest.json";

const FORMAT: &str = "edgetune-checkpoint-manifest-1";

/// One file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The file's name in the checkpoint directory.
    pub name: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub files: Vec<Entry>,
}

/// What [`verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verified {
    /// Every file matches the manifest.
    Complete,
    /// No manifest (a checkpoint from before manifests); `state.json` is there.
    Legacy,
}

/// Writes `dir/manifest.json` over every regular file in `dir` (sorted by name), fsynced.
pub fn write(dir: &Path) -> Result<Manifest> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let kind = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_file() && name != MANIFEST {
            names.push(name);
        }
    }
    names.sort();
    let mut files = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let bytes = std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len();
        files.push(Entry {
            sha256: file_sha256(&path)?,
            name,
            bytes,
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Invalid(format!("checkpoint manifest: {e}")))?;
    let path = dir.join(MANIFEST);
    let mut f = File::create(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&path, e))?;
    Ok(manifest)
}

/// Checks every file of checkpoint `dir` against its manifest; the first mismatch is an
/// [`Error::Corrupt`] naming the file. Without a manifest the checkpoint is
/// [`Verified::Legacy`] if it has `state.json`, else corrupt.
pub fn verify(dir: &Path) -> Result<Verified> {
    let path = dir.join(MANIFEST);
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let state = dir.join("state.json");
            return match state.is_file() {
                true => Ok(Verified::Legacy),
                false => Err(Error::Corrupt {
                    path: state,
                    what: format!("missing (and no {MANIFEST}): an incomplete checkpoint"),
                }),
            };
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let manifest: Manifest =
        serde_json::from_reader(BufReader::new(f)).map_err(|e| Error::Corrupt {
            path: path.clone(),
            what: format!("unreadable manifest: {e}"),
        })?;
    if manifest.format != FORMAT {
        return Err(Error::Corrupt {
            path,
            what: format!("format `{}`, expected `{FORMAT}`", manifest.format),
        });
    }
    for entry in &manifest.files {
        let file = dir.join(&entry.name);
        let bytes = match std::fs::metadata(&file) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Corrupt {
                    path: file,
                    what: format!("missing (the manifest lists {} bytes)", entry.bytes),
                });
            }
            Err(e) => return Err(Error::io(&file, e)),
        };
        if bytes != entry.bytes {
            return Err(Error::Corrupt {
                path: file,
                what: format!("{bytes} bytes, the manifest says {}", entry.bytes),
            });
        }
        let sha = file_sha256(&file)?;
        if sha != entry.sha256 {
            return Err(Error::Corrupt {
                path: file,
                what: format!("SHA-256 {sha}, the manifest says {}", entry.sha256),
            });
        }
    }
    Ok(Verified::Complete)
}

/// SHA-256 of a file as lowercase hex, read in 64 KiB pieces (a checkpoint is hashed while
/// the run's arena is live: the memory plan has no room for a large read buffer).
fn file_sha256(path: &Path) -> Result<String> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_missing_or_cut_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("state.json"), b"{}").unwrap();
        std::fs::write(d.join("optimizer.bin"), vec![7u8; 1000]).unwrap();
        let m = write(d).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(verify(d).unwrap(), Verified::Complete);
        // Same size, one byte flipped.
        let mut bytes = vec![7u8; 1000];
        bytes[500] = 8;
        std::fs::write(d.join("optimizer.bin"), &bytes).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("optimizer.bin") && e.contains("SHA-256"), "{e}");
        // Cut short.
        std::fs::write(d.join("optimizer.bin"), &bytes[..10]).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(
            e.contains("optimizer.bin: 10 bytes, the manifest says 1000"),
            "{e}"
        );
        std::fs::remove_file(d.join("optimizer.bin")).unwrap();
        let e = verify(d).unwrap_err().to_string();
        assert!(e.contains("optimizer.bin: missing"), "{e}");
        // Without a manifest: legacy when state.json is there.
        std::fs::remove_file(d.join(MANIFEST)).unwrap();
        assert_eq!(verify(d).unwrap(), Verified::Legacy);
        std::fs::remove_file(d.join("state.json")).unwrap();
        assert!(verify(d).unwrap_err().to_string().contains("state.json"));
    }
}
