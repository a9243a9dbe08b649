//! A bounds-checked little-endian reader over the bytes of a GGUF file.
//!
//! Every read checks the bytes left before touching them, and every failure becomes
//! `Error::Gguf` with the file's path and the byte offset where the bad field starts.

use std::path::Path;

use crate::Error;

/// A read position in `bytes`; `pos` is an absolute file offset.
pub(crate) struct Cursor<'a> {
    pub(crate) path: &'a Path,
    pub(crate) bytes: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(path: &'a Path, bytes: &'a [u8]) -> Self {
        Cursor {
            path,
            bytes,
            pos: 0,
        }
    }

    /// An `Error::Gguf` at `offset`.
    pub(crate) fn err_at(&self, offset: usize, what: impl Into<String>) -> Error {
        Error::Gguf {
            path: self.path.to_path_buf(),
            offset: offset as u64,
            what: what.into(),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub(crate) fn file_size(&self) -> usize {
        self.bytes.len()
    }

    /// The next `n` bytes; `what` names the field for the truncation message.
    pub(crate) fn take(&mut self, n: usize, what: &str) -> crate::Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.truncated(n, what));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn truncated(&self, n: usize, what: &str) -> Error {
        self.err_at(
            self.pos,
            format!(
                "file truncated: {what} needs {n} bytes but only {} remain (file is {} bytes)",
                self.remaining(),
                self.bytes.len()
            ),
        )
    }

    fn array<const N: usize>(&mut self, what: &str) -> crate::Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &str) -> crate::Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &str) -> crate::Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &str) -> crate::Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &str) -> crate::Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A `u64` count that must not exceed `max`; `why()` explains the limit in the message
    /// (a closure, so nothing is formatted on the success path).
    pub(crate) fn count(
        &mut self,
        what: &str,
        max: usize,
        why: impl FnOnce() -> String,
    ) -> crate::Result<usize> {
        let at = self.pos;
        let n = self.u64(what)?;
        if n > max as u64 {
            return Err(self.err_at(
                at,
                format!("{what} {n} exceeds the limit {max} ({})", why()),
            ));
        }
        Ok(n as usize)
    }

    /// A GGUF string: `u64` length, then that many bytes of UTF-8 (no NUL).
    /// `max_len` caps the length on top of the bytes left in the file.
    pub(crate) fn str(&mut self, what: &str, max_len: usize) -> crate::Result<&'a str> {
        let at = self.pos;
        // No `format!` on the success path: a vocabulary has 400k strings.
        let len = match self.bytes.get(at..).and_then(|b| b.first_chunk::<8>()) {
            Some(b) => u64::from_le_bytes(*b),
            None => return Err(self.truncated(8, &format!("{what} length"))),
        };
        self.pos += 8;
        let left = self.remaining();
        if len > left as u64 {
            return Err(self.err_at(
                at,
                format!(
                    "{what} length {len} exceeds the {left} bytes left in the file \
                     (file is {} bytes)",
                    self.bytes.len()
                ),
            ));
        }
        if len > max_len as u64 {
            return Err(self.err_at(
                at,
                format!("{what} length {len} exceeds the limit {max_len}"),
            ));
        }
        let raw = self.take(len as usize, what)?;
        std::str::from_utf8(raw).map_err(|e| {
            self.err_at(
                at + 8 + e.valid_up_to(),
                format!(
                    "{what} is not valid UTF-8 (invalid byte at {} of {len})",
                    e.valid_up_to()
                ),
            )
        })
    }
}
