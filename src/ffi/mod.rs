//! The C ABI (feature `ffi`): `et_`-prefixed functions over opaque handles, status codes plus a
//! thread-local error message, no panic across the boundary. `include/edgetune.h` is generated
//! from this module by cbindgen (`cbindgen.toml`; `scripts/check-header.sh` keeps it current).
//!
//! # Rules every function follows
//!
//! - It returns an [`EtStatus`] (or, for the two string getters, a pointer that is never NULL).
//!   On failure it stores a message, read with [`et_last_error`] on the same thread. Every
//!   fallible call clears the message on entry, so after a success it reads `""`.
//! - It catches panics ([`std::panic::catch_unwind`]) and turns them into
//!   [`EtStatus::Panic`]; nothing unwinds into C, nothing exits, nothing prints (the library
//!   logs through the `log` facade, which is silent unless the host installs a logger; Rust's
//!   default panic hook may still write a line to stderr if an internal bug panics).
//! - NULL pointers where a value is required give [`EtStatus::NullPointer`] naming the argument.
//!
//! # Ownership
//!
//! Handles ([`model::EtModel`]) are created by `et_*_open` and released by the matching
//! `et_*_free` (NULL is accepted and ignored). Strings passed in are borrowed for the call only.
//! Output text is copied into the caller's buffer; nothing the library returns must be freed
//! by the caller, except handles.
//!
//! # Threading
//!
//! A handle may be used from any thread and shared between threads; calls on one model are
//! serialised internally (the model's activation workspace is behind a mutex). The last-error
//! message is per thread.
//!
//! # Building
//!
//! The library crate only builds an rlib by default. The C libraries come from
//! `cargo rustc --release --lib --features ffi --crate-type cdylib,staticlib` (see
//! `examples/c/run.sh`, `scripts/cross-build.sh --lib` and the README's "C API" section), so the
//! normal build does not pay for them.

pub mod adapter;
pub mod model;
pub mod plan;
pub mod progress;
pub mod train;
pub mod trainer;

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::Error;

/// The result of every fallible call. `ET_STATUS_OK` is 0; every other value is a failure whose
/// message `et_last_error` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EtStatus {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullPointer = 1,
    /// An argument was out of range, not UTF-8, or not valid JSON / not a valid configuration.
    InvalidArgument = 2,
    /// The operating system refused a file operation (missing file, permissions, disk full).
    Io = 3,
    /// A file was read but is not a model edgetune can use (malformed GGUF, missing metadata or
    /// tensor, unsupported architecture or tensor type).
    Format = 4,
    /// The output buffer is too small: `*out_len` holds the text's length in bytes, and the
    /// buffer needs one byte more (the NUL).
    BufferTooSmall = 5,
    /// The callback asked to stop (reserved for the training call).
    Cancelled = 6,
    /// An internal error (a caught panic): a bug in edgetune, please report the message.
    Panic = 7,
    /// The memory plan does not fit the budget (`budget_bytes`): the message has the
    /// breakdown and the configurations that would fit. Nothing was allocated.
    OverBudget = 8,
    /// A record of an input file (a dataset line, an eval case) is malformed: the message
    /// names the file and the line.
    BadInput = 9,
    /// Valid, but not something this build or engine does (e.g. a method on a device backend):
    /// the message says what would work.
    Unsupported = 10,
    /// A computation gave NaN or Inf (a training loss or gradient, logits): the message names
    /// the step and where, with advice; nothing of that step was applied.
    NonFinite = 11,
}

/// A failure on its way out: the code and the message for `et_last_error`.
#[derive(Debug)]
pub(crate) struct FfiError {
    pub status: EtStatus,
    pub message: String,
}

impl FfiError {
    pub fn new(status: EtStatus, message: impl Into<String>) -> FfiError {
        FfiError {
            status,
            message: message.into(),
        }
    }

    pub fn null(arg: &str) -> FfiError {
        FfiError::new(EtStatus::NullPointer, format!("argument `{arg}` is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> FfiError {
        FfiError::new(EtStatus::InvalidArgument, message)
    }
}

impl From<Error> for FfiError {
    fn from(e: Error) -> FfiError {
        let status = match &e {
            Error::Io { .. } => EtStatus::Io,
            Error::Gguf { .. }
            | Error::Metadata { .. }
            | Error::Tensor { .. }
            | Error::UnsupportedType { .. }
            | Error::Corrupt { .. } => EtStatus::Format,
            Error::Invalid(_) => EtStatus::InvalidArgument,
            Error::OverBudget { .. } => EtStatus::OverBudget,
            Error::BadInput { .. } => EtStatus::BadInput,
            Error::Unsupported(_) => EtStatus::Unsupported,
            Error::NonFinite(_) => EtStatus::NonFinite,
        };
        FfiError::new(status, e.to_string())
    }
}

pub(crate) type FfiResult<T> = std::result::Result<T, FfiError>;

thread_local! {
    /// The message of the last failed call on this thread (`""` after a success).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with an interior NUL would be cut short in C: replace the NULs.
    let text = CString::new(message.replace('\0', "\u{FFFD}")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = text);
}

/// Runs the body of an `et_` function: clears the last error, catches panics, and turns the
/// outcome into a status (storing the message of a failure).
pub(crate) fn guard(body: impl FnOnce() -> FfiResult<()>) -> EtStatus {
    set_last_error("");
    // AssertUnwindSafe: after a panic the body's state is dropped or, for a model, behind a
    // mutex that reports poisoning as an error on the next call.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => EtStatus::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".into());
            set_last_error(&format!("internal error (panic): {what}"));
            EtStatus::Panic
        }
    }
}

/// Borrows a C string argument as UTF-8 for the duration of the call.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, arg: &str) -> FfiResult<&'a str> {
    if ptr.is_null() {
        return Err(FfiError::null(arg));
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string alive for 'a.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|e| {
        FfiError::invalid(format!(
            "argument `{arg}` is not UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Copies `text` and a NUL into the caller's buffer of `out_cap` bytes and stores its length
/// (bytes, NUL excluded) in `*out_len` (when not NULL) — also when the buffer is too small, so
/// the caller can retry with `*out_len + 1` bytes. A too-small buffer gets an empty string
/// (when it has room for the NUL).
///
/// # Safety
/// `out_buf` is NULL or valid for writes of `out_cap` bytes; `out_len` is NULL or valid for
/// one `usize` write.
pub(crate) unsafe fn write_text(
    text: &str,
    out_buf: *mut c_char,
    out_cap: usize,
    out_len: *mut usize,
) -> FfiResult<()> {
    if out_buf.is_null() && out_cap > 0 {
        return Err(FfiError::null("out_buf"));
    }
    if !out_len.is_null() {
        // SAFETY: non-NULL, and the caller promises it is valid for one usize write.
        unsafe { out_len.write(text.len()) };
    }
    if text.len() >= out_cap {
        if out_cap > 0 {
            // SAFETY: out_buf is non-NULL (checked above) and holds out_cap ≥ 1 bytes.
            unsafe { out_buf.write(0) };
        }
        return Err(FfiError::new(
            EtStatus::BufferTooSmall,
            format!(
                "the output needs {} bytes (text and NUL), the buffer has {out_cap}",
                text.len() + 1
            ),
        ));
    }
    // SAFETY: out_buf holds out_cap > text.len() bytes, so text and the NUL fit; the source is
    // a Rust string, which cannot overlap a buffer the caller owns.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), out_buf.cast::<u8>(), text.len());
        out_buf.add(text.len()).write(0);
    }
    Ok(())
}

/// The library's version (`"0.1.0"`): a static string, never NULL, never to be freed.
#[unsafe(no_mangle)]
pub extern "C" fn et_version() -> *const c_char {
    static VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        };
    VERSION.as_ptr()
}

/// The message of the last failed call on this thread, or `""` if the last call succeeded.
/// Never NULL. The string belongs to the library and stays valid until the next `et_` call on
/// this thread; copy it to keep it.
#[unsafe(no_mangle)]
pub extern "C" fn et_last_error() -> *const c_char {
    // Reading a thread-local cannot panic here except during thread teardown; fall back to a
    // static empty string then.
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"".as_ptr())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: et_last_error returns a valid NUL-terminated string, never NULL.
        unsafe { CStr::from_ptr(et_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_becomes_a_status_and_a_message() {
        let status = guard(|| panic!("boom {}", 7));
        assert_eq!(status, EtStatus::Panic);
        assert!(last_error().contains("boom 7"), "{}", last_error());
        assert_eq!(guard(|| Ok(())), EtStatus::Ok);
        assert_eq!(last_error(), "");
    }

    #[test]
    fn errors_map_to_codes() {
        let io = Error::io("/nope", std::io::Error::from(std::io::ErrorKind::NotFound));
        assert_eq!(FfiError::from(io).status, EtStatus::Io);
        let e = FfiError::from(Error::Invalid("x".into()));
        assert_eq!(e.status, EtStatus::InvalidArgument);
        let cases = [
            (
                Error::OverBudget {
                    needed: 2,
                    budget: 1,
                    report: "over".into(),
                },
                EtStatus::OverBudget,
            ),
            (
                Error::bad_input("d.jsonl", Some(3), "d.jsonl:3: bad".into()),
                EtStatus::BadInput,
            ),
            (Error::Unsupported("u".into()), EtStatus::Unsupported),
            (Error::NonFinite("n".into()), EtStatus::NonFinite),
        ];
        for (e, status) in cases {
            let text = e.to_string();
            let f = FfiError::from(e);
            assert_eq!((f.status, f.message), (status, text));
        }
        let status = guard(|| Err(FfiError::invalid("bad\0thing")));
        assert_eq!(status, EtStatus::InvalidArgument);
        assert_eq!(last_error(), "bad\u{FFFD}thing");
    }
}
