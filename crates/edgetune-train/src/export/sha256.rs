//! SHA-256 of a file, streamed in 1 MiB reads (the `sha2` crate): names the base model a PEFT
//! export was trained on, and checks the pinned hashes of fetched models.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use edgetune_core::{Error, Result};

/// SHA-256 of a file's bytes, as lowercase hex.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
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
    fn fips_180_2_examples() {
        let dir = tempfile::tempdir().unwrap();
        for (data, want) in [
            (
                &b"abc"[..],
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            ),
            (
                &b""[..],
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ),
        ] {
            let p = dir.path().join("f");
            std::fs::write(&p, data).unwrap();
            assert_eq!(file_sha256(&p).unwrap(), want);
        }
        // Longer than one read: one million 'a'.
        let p = dir.path().join("a");
        std::fs::write(&p, vec![b'a'; 1_000_000]).unwrap();
        assert_eq!(
            file_sha256(&p).unwrap(),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
        assert!(file_sha256(&dir.path().join("missing")).is_err());
    }
}
