//! `et_train`: a whole training run from a JSON configuration (the fields of
//! `edgetune train`, parsed like `et_plan_json`'s), with a progress callback that can stop it;
//! `et_train_latest_checkpoint`: where the run's newest adapter is.

use std::ffi::{c_char, c_void};
use std::path::Path;

use super::plan::train_config_from_json;
use super::progress::{EtProgress, EtProgressFn};
use super::{EtStatus, FfiError, guard, str_arg, write_text};
use crate::train::{Progress, checkpoint, run};

/// The caller's `user_data`, handed back to the callback untouched.
struct UserData(*mut c_void);

// SAFETY: the pointer is never dereferenced here; it is only passed back to the caller's
// callback, which runs on one thread at a time (the header documents that the callback is
// called from a library worker thread).
unsafe impl Send for UserData {}
// SAFETY: as above: shared only to be copied into the serial callback calls.
unsafe impl Sync for UserData {}

impl UserData {
    /// The pointer (a method, so closures capture the Send + Sync wrapper, not the field).
    fn get(&self) -> *mut c_void {
        self.0
    }
}

/// Trains with the configuration in `config_json` (`model`, `data`, `out`, `steps`, `lora`
/// {`rank`, `alpha`, `targets`, ...}, `seq_len`, `batch`, ...: the fields of `edgetune train`;
/// missing fields take the CLI's defaults, unknown fields are an error). Writes
/// `out/metrics.jsonl`, checkpoints and `out/summary.json` as the CLI does, and refuses a run
/// over `budget_bytes` before allocating anything.
///
/// `progress` (may be NULL) is called after every optimizer step, from one of the library's
/// worker threads (never two at once), with a report valid during the call; a nonzero return
/// stops training after that step: a checkpoint is written and the call returns
/// `ET_STATUS_CANCELLED`.
///
/// # Safety
/// `config_json` is NULL or a NUL-terminated string valid for the call; `progress`, when not
/// NULL, is safe to call with a valid `EtProgress` pointer and `user_data` from another thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_train(
    config_json: *const c_char,
    progress: EtProgressFn,
    user_data: *mut c_void,
) -> EtStatus {
    guard(|| {
        // SAFETY: the caller promises NULL or a NUL-terminated string valid for the call.
        let cfg = train_config_from_json(unsafe { str_arg(config_json, "config_json") }?)?;
        let user = UserData(user_data);
        let mut stopped = false;
        let mut on_step = |p: &Progress| -> bool {
            let Some(f) = progress else { return true };
            let report = EtProgress::from(p);
            // SAFETY: the caller promises `f` may be called with a valid report and its
            // `user_data`; `report` lives for the call.
            let go_on = unsafe { f(&report, user.get()) } == 0;
            stopped |= !go_on;
            go_on
        };
        run(&cfg, &mut on_step)?;
        if stopped {
            return Err(FfiError::new(
                EtStatus::Cancelled,
                "training stopped by the progress callback (a checkpoint was written)",
            ));
        }
        Ok(())
    })
}

/// Copies the path of the newest checkpoint directory under `out_dir` (the `out` of an
/// `et_train` configuration: `out_dir/checkpoints/step-NNNNNNNN`) into `out_buf`. The directory
/// is an adapter directory: pass it to `et_model_set_adapter` or `et_adapter_export`.
/// `ET_STATUS_IO` when `out_dir` holds no checkpoint; buffer rules as for `et_generate`
/// (`*out_len` gets the path's length in bytes, also on `ET_STATUS_BUFFER_TOO_SMALL`).
///
/// # Safety
/// `out_dir` is NULL or a NUL-terminated string valid for the call; `out_buf` is NULL or valid
/// for `out_cap` bytes; `out_len` is NULL or valid for one `size_t` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_train_latest_checkpoint(
    out_dir: *const c_char,
    out_buf: *mut c_char,
    out_cap: usize,
    out_len: *mut usize,
) -> EtStatus {
    guard(|| {
        // SAFETY: the caller promises NULL or a NUL-terminated string valid for the call.
        let out_dir = Path::new(unsafe { str_arg(out_dir, "out_dir") }?);
        let dir = checkpoint::latest(out_dir)?.ok_or_else(|| {
            FfiError::new(
                EtStatus::Io,
                format!(
                    "{}: no checkpoint (step-NNNNNNNN directory) there",
                    checkpoint::checkpoints_dir(out_dir).display()
                ),
            )
        })?;
        let text = dir.to_str().ok_or_else(|| {
            FfiError::invalid(format!("{}: the path is not UTF-8", dir.display()))
        })?;
        // SAFETY: forwarded caller contract for out_buf / out_cap / out_len.
        unsafe { write_text(text, out_buf, out_cap, out_len) }
    })
}
