//! Test-only fault injection for `checkpoint.rs`: a write that fails with ENOSPC, a prune
//! stopped between its rename and its delete. Compiled into unit tests only
//! (`#[cfg(test)] mod fault`); release builds have no hook.

use std::cell::Cell;
use std::io::Write;
use std::path::Path;

thread_local! {
    /// `(file name, bytes that still fit)`: writes of that file fail with ENOSPC beyond.
    static FULL: Cell<Option<(&'static str, u64)>> = const { Cell::new(None) };
    static STOP_AFTER_TRASH: Cell<bool> = const { Cell::new(false) };
}

/// The disk is full after `fit` more bytes of any file named `name` (this thread).
pub fn disk_full_at(name: &'static str, fit: u64) {
    FULL.with(|f| f.set(Some((name, fit))));
}

/// A prune stops (with an error) right after renaming a checkpoint to `.trash-*`, as a
/// kill there would leave it.
pub fn stop_after_trash_rename(on: bool) {
    STOP_AFTER_TRASH.with(|f| f.set(on));
}

pub fn clear() {
    FULL.with(|f| f.set(None));
    STOP_AFTER_TRASH.with(|f| f.set(false));
}

pub(super) fn after_trash_rename() -> edgetune_core::Result<()> {
    match STOP_AFTER_TRASH.with(|f| f.get()) {
        true => Err(edgetune_core::Error::Invalid(
            "injected stop after the trash rename".into(),
        )),
        false => Ok(()),
    }
}

pub(super) struct Faulty<'a> {
    inner: &'a mut dyn Write,
    fit: Option<u64>,
}

impl<'a> Faulty<'a> {
    pub(super) fn new(inner: &'a mut dyn Write, path: &Path) -> Self {
        let fit = FULL
            .with(|f| f.get())
            .and_then(|(name, fit)| path.file_name().is_some_and(|n| n == name).then_some(fit));
        Faulty { inner, fit }
    }
}

impl Write for Faulty<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match &mut self.fit {
            None => self.inner.write(buf),
            Some(0) => Err(std::io::Error::from_raw_os_error(28)),
            Some(left) => {
                let n = buf.len().min(*left as usize);
                let n = self.inner.write(&buf[..n])?;
                *left -= n as u64;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
