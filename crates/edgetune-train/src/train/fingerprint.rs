//! The model file's fingerprint: FNV-1a (the `fnv` crate, stable across platforms and
//! releases) of its size, its first MiB (the GGUF header, the metadata and the first tensor
//! blocks) and its last MiB (the last blocks). Cheap — two reads however large the model — and
//! different for every real model and quantization. `--replay self` keys its answer cache with
//! it (`replay.rs`), and a checkpoint records it (`state.json`), so `--resume` refuses another
//! model file put at the same path.

use std::fs::File;
use std::hash::Hasher;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use edgetune_core::{Error, Result};

/// Bytes hashed at each end of the file.
const SPAN: u64 = 1 << 20;

/// The fingerprint of the file at `path` (see the module docs).
pub fn model_fingerprint(path: &Path) -> Result<u64> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut h = fnv::FnvHasher::default();
    h.write(&len.to_le_bytes());
    let mut buf = vec![0u8; SPAN.min(len) as usize];
    f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
    h.write(&buf);
    f.seek(SeekFrom::Start(len - buf.len() as u64))
        .map_err(|e| Error::io(path, e))?;
    f.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
    h.write(&buf);
    Ok(h.finish())
}

/// [`model_fingerprint`] as the 16 hex digits a checkpoint stores.
pub fn model_fingerprint_hex(path: &Path) -> Result<String> {
    Ok(format!("{:016x}", model_fingerprint(path)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_same_fingerprint_other_bytes_another() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
        let bytes: Vec<u8> = (0..3 * SPAN as usize + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&a, &bytes).unwrap();
        std::fs::write(&b, &bytes).unwrap();
        assert_eq!(
            model_fingerprint(&a).unwrap(),
            model_fingerprint(&b).unwrap()
        );
        // A change in the header, in the last block, or in the size.
        for change in [0, bytes.len() - 1] {
            let mut other = bytes.clone();
            other[change] ^= 1;
            std::fs::write(&b, &other).unwrap();
            assert_ne!(
                model_fingerprint(&a).unwrap(),
                model_fingerprint(&b).unwrap()
            );
        }
        std::fs::write(&b, &bytes[..bytes.len() - 1]).unwrap();
        assert_ne!(
            model_fingerprint(&a).unwrap(),
            model_fingerprint(&b).unwrap()
        );
        assert_eq!(model_fingerprint_hex(&a).unwrap().len(), 16);
        let e = model_fingerprint(&dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
