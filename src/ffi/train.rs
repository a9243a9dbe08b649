//! `et_train`: a whole training run from a JSON configuration (the fields of
//! `edgetune train`, parsed like `et_plan_json`'s), with a progress callback that can stop it.

use std::ffi::{c_char, c_void};

use super::plan::train_config_from_json;
use super::progress::{EtProgress, EtProgressFn};
use super::{EtStatus, FfiError, guard, str_arg};
use crate::train::{Progress, run};

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
            let report = EtProgress {
                step: p.step,
                total_steps: p.total_steps,
                loss: p.loss as f32,
                lr: p.lr,
                tokens_per_s: p.tok_per_s,
                elapsed_s: p.elapsed_s,
            };
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
