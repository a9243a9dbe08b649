//! The C ABI's integration tests in one binary (feature `ffi`; without it both modules are
//! empty): one module per former `tests/ffi_*.rs` file, so fewer binaries link. Run one with
//! `cargo test --features ffi --test ffi MODULE::`.

mod c_abi;
mod trainer;

#[cfg(feature = "ffi")]
use std::ffi::{CStr, CString};

/// The calling thread's last error (`et_last_error`), as a string.
#[cfg(feature = "ffi")]
fn last_error() -> String {
    // SAFETY: et_last_error never returns NULL and the string is NUL-terminated.
    unsafe { CStr::from_ptr(edgetune::ffi::et_last_error()) }
        .to_str()
        .unwrap()
        .to_owned()
}

/// `s` as a C string.
#[cfg(feature = "ffi")]
fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}
