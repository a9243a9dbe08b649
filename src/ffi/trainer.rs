//! The step-by-step trainer handle of the C ABI: `et_trainer_new` builds a
//! [`Trainer`] from a JSON configuration (the fields of `edgetune train`), `et_trainer_step`
//! runs optimizer steps with a progress callback on the caller's thread,
//! `et_trainer_checkpoint` and `et_trainer_export` save the adapters, `et_trainer_free`
//! releases it. `et_train` (train.rs) is the one-call alternative.

use std::ffi::{c_char, c_void};
use std::fs;
use std::path::{Path, PathBuf};
use std::ptr::null_mut;

use self_cell::self_cell;
use serde_json::json;

use super::model::EtModel;
use super::plan::train_config_from_json;
use super::progress::{EtProgress, EtProgressFn};
use super::{EtStatus, FfiError, FfiResult, guard, str_arg, write_text};
use crate::export::{self, PeftOptions};
use crate::gguf::GgufFile;
use crate::model::LlamaConfig;
use crate::quant::GgmlType;
use crate::train::metrics::MetricsLog;
use crate::train::{Progress, TrainConfig, Trainer};
use crate::{Error, Result};

self_cell!(
    /// The mapped model file and the trainer whose model borrows it, owned together. `Trainer`
    /// holds a `Llama`, which is invariant in its lifetime, hence `not_covariant`.
    struct MappedTrainer {
        owner: GgufFile,
        #[not_covariant]
        dependent: Trainer,
    }
);

/// A training run driven step by step: the mapped model, the data, the adapters, the
/// optimizer and the step's arena. Opaque to C; create with `et_trainer_new`, release with
/// `et_trainer_free`. Not thread-safe: one call at a time (it may move between threads).
pub struct EtTrainer {
    trainer: MappedTrainer,
    /// The model's shapes, for the exports.
    model_config: LlamaConfig,
    /// The run's worker threads (`threads` of the configuration), kept for its lifetime.
    pool: rayon::ThreadPool,
    save_every: u64,
    seed: u64,
    /// `out/metrics.jsonl`, one line per step as `edgetune train` writes it.
    metrics: MetricsLog,
    /// Set while a call changes the trainer; still set on entry means that call panicked
    /// half-way, and the adapters and optimizer may be inconsistent.
    broken: bool,
}

// The header allows moving a trainer between threads (one call at a time).
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<EtTrainer>()
};

impl EtTrainer {
    /// Opens `cfg.model`, then loads the data and plans and allocates the run on the run's
    /// own thread pool (resuming from `cfg.out` when `cfg.resume` is set).
    pub fn new(cfg: &TrainConfig) -> Result<EtTrainer> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cfg.threads.unwrap_or(0))
            .build()
            .map_err(|e| Error::Invalid(format!("trainer: cannot start worker threads: {e}")))?;
        let file = GgufFile::open(&cfg.model)?;
        let model_config = LlamaConfig::from_gguf(&file)?;
        let trainer = MappedTrainer::try_new(file, |f| pool.install(|| Trainer::new(f, cfg)))?;
        let completed = trainer.with_dependent(|_, t| t.completed());
        let metrics = MetricsLog::open(&cfg.out, completed)?;
        Ok(EtTrainer {
            trainer,
            model_config,
            pool,
            save_every: cfg.save_every,
            seed: cfg.seed,
            metrics,
            broken: false,
        })
    }

    fn usable(&self) -> FfiResult<()> {
        if self.broken {
            return Err(FfiError::new(
                EtStatus::Panic,
                "the trainer was left inconsistent by an internal error in an earlier call: \
                 free it (its last checkpoint is intact)",
            ));
        }
        Ok(())
    }

    /// Optimizer steps completed (a resumed run counts the earlier ones).
    pub fn completed(&self) -> u64 {
        self.trainer.with_dependent(|_, t| t.completed())
    }

    pub fn total_steps(&self) -> u64 {
        self.trainer.with_dependent(|_, t| t.total_steps())
    }

    /// One optimizer step on the run's pool; `None` when the steps or the data are used up.
    /// The step's line goes to `out/metrics.jsonl`; a due `save_every` checkpoint is written
    /// before returning.
    pub fn step(&mut self) -> Result<Option<Progress>> {
        let pool = &self.pool;
        let p = self
            .trainer
            .with_dependent_mut(|_, t| pool.install(|| t.step()))?;
        if let Some(p) = &p {
            let tasks = self.trainer.with_dependent(|_, t| t.task_metrics());
            self.metrics.append(p, tasks)?;
        }
        if let Some(p) = &p
            && self.save_every > 0
            && p.step % self.save_every == 0
        {
            self.checkpoint()?;
        }
        Ok(p)
    }

    /// Writes a checkpoint (`out/checkpoints/step-NNNNNNNN`) and returns its directory.
    pub fn checkpoint(&self) -> Result<PathBuf> {
        self.trainer.with_dependent(|_, t| t.checkpoint())
    }

    /// Writes the current adapters as `format`: `"native"` (an edgetune adapter directory),
    /// `"gguf"` (a llama.cpp LoRA file, f32) or `"peft"` (a Hugging Face PEFT directory, f32).
    pub fn export(&self, format: &str, out: &Path) -> Result<()> {
        let meta = json!({ "step": self.completed(), "seed": self.seed });
        self.trainer.with_dependent(|file, t| -> Result<()> {
            let set = t.adapters();
            match format {
                "native" => export::save_adapter(set, out, &meta)?,
                "gguf" => {
                    export::export_gguf(set, &self.model_config, out, GgmlType::F32)?;
                }
                "peft" => {
                    let opts = PeftOptions {
                        dtype: GgmlType::F32,
                        base_model_name_or_path: None,
                        base_file: Some(file.path().to_path_buf()),
                        notes: meta,
                    };
                    export::export_peft(set, &self.model_config, out, &opts)?;
                }
                other => {
                    return Err(Error::Invalid(format!(
                        "format `{other}`: expected \"native\", \"gguf\" or \"peft\""
                    )));
                }
            }
            Ok(())
        })
    }
}

/// The configuration for `et_trainer_new`: `model` comes from the handle when one is given
/// (the configuration may then omit it or must name the same file).
fn resolve_config(model: Option<&EtModel>, json: &str) -> FfiResult<TrainConfig> {
    let mut cfg = train_config_from_json(json)?;
    match model {
        Some(m) => {
            let handle_path = m.file().path();
            if cfg.model.as_os_str().is_empty() {
                cfg.model = handle_path.to_path_buf();
            } else if !same_file(&cfg.model, handle_path)? {
                return Err(FfiError::invalid(format!(
                    "the configuration's \"model\" {} is not the model handle's file {}",
                    cfg.model.display(),
                    handle_path.display()
                )));
            }
        }
        None if cfg.model.as_os_str().is_empty() => {
            return Err(FfiError::invalid(
                "no model: pass a model handle or set the configuration's \"model\"",
            ));
        }
        None => {}
    }
    Ok(cfg)
}

/// Whether two paths name the same file (after resolving links and `..`).
fn same_file(a: &Path, b: &Path) -> Result<bool> {
    let canon = |p: &Path| fs::canonicalize(p).map_err(|e| Error::io(p, e));
    Ok(canon(a)? == canon(b)?)
}

/// The trainer behind a C pointer, or an error naming the argument.
///
/// # Safety
/// `trainer` is NULL or a live handle from `et_trainer_new` not used by another call now.
unsafe fn trainer_mut<'a>(trainer: *mut EtTrainer) -> FfiResult<&'a mut EtTrainer> {
    // SAFETY: forwarded caller contract; as_mut maps NULL to None.
    let t = unsafe { trainer.as_mut() }.ok_or_else(|| FfiError::null("trainer"))?;
    t.usable()?;
    Ok(t)
}

/// As [`trainer_mut`], shared.
///
/// # Safety
/// As for [`trainer_mut`].
unsafe fn trainer_ref<'a>(trainer: *const EtTrainer) -> FfiResult<&'a EtTrainer> {
    // SAFETY: forwarded caller contract; as_ref maps NULL to None.
    let t = unsafe { trainer.as_ref() }.ok_or_else(|| FfiError::null("trainer"))?;
    t.usable()?;
    Ok(t)
}

/// Creates a trainer from `config_json` (the fields of `edgetune train`: `data`, `out`,
/// `steps` or `epochs`, `lora` {`rank`, `alpha`, `targets`, ...}, `seq_len`, `batch`, `lr`,
/// `save_every`, `resume`, `threads`, ...; missing fields take the CLI's defaults, unknown
/// fields are an error) and stores it in `*out_trainer` (NULL on failure). The model is
/// `model`'s file when `model` is not NULL (the configuration may then omit `"model"`, or must
/// name the same file), else the configuration's `"model"`; the trainer maps the file itself,
/// so `model` may be freed before the trainer. Loads and tokenizes the data, plans the memory
/// (refusing a run over `budget_bytes` before allocating anything), builds the adapters and
/// the optimizer, and with `"resume": true` continues from the newest checkpoint in `out`.
///
/// # Safety
/// `model` is NULL or a live handle from `et_model_open`; `config_json` is NULL or a
/// NUL-terminated string valid for the call; `out_trainer` is NULL or valid for one pointer
/// write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_trainer_new(
    model: *const EtModel,
    config_json: *const c_char,
    out_trainer: *mut *mut EtTrainer,
) -> EtStatus {
    guard(|| {
        if out_trainer.is_null() {
            return Err(FfiError::null("out_trainer"));
        }
        // SAFETY: non-NULL; the caller promises it is valid for one pointer write.
        unsafe { out_trainer.write(null_mut()) };
        // SAFETY: the caller promises NULL or a NUL-terminated string valid for the call.
        let json = unsafe { str_arg(config_json, "config_json") }?;
        // SAFETY: the caller promises NULL or a live handle; as_ref maps NULL to None.
        let cfg = resolve_config(unsafe { model.as_ref() }, json)?;
        let trainer = Box::new(EtTrainer::new(&cfg)?);
        // SAFETY: as above.
        unsafe { out_trainer.write(Box::into_raw(trainer)) };
        Ok(())
    })
}

/// Releases a trainer from `et_trainer_new` (NULL is ignored). Nothing is saved: call
/// `et_trainer_checkpoint` or `et_trainer_export` first to keep the adapters.
///
/// # Safety
/// `trainer` is NULL or a handle from `et_trainer_new` not yet freed and not in use.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_trainer_free(trainer: *mut EtTrainer) {
    if trainer.is_null() {
        return;
    }
    // Dropping unmaps the model and frees the arena; a panic in a destructor must not reach C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the caller promises a handle from et_trainer_new (Box::into_raw), freed once.
        drop(unsafe { Box::from_raw(trainer) });
    }));
}

/// Runs up to `n_steps` optimizer steps. After each, `progress` (may be NULL) is called on the
/// calling thread with a report valid during the call; a nonzero return stops after that step
/// with `ET_STATUS_CANCELLED` (nothing is written then: checkpoint if you want to keep it).
/// `*out_steps_done` (may be NULL) receives the steps this call made, also on failure. Fewer
/// than `n_steps` with `ET_STATUS_OK` means the run is over (its `steps`, or its `epochs` of
/// data, are used up); later calls then make no step. Each step appends its line to
/// `out/metrics.jsonl` and a `save_every` of the configuration writes its checkpoints, as
/// `edgetune train` does (`summary.json` is `et_train`'s only). The work itself runs on the trainer's
/// worker threads (`threads` of the configuration).
///
/// # Safety
/// `trainer` is NULL or a live handle not used by another call now; `progress`, when not NULL,
/// is safe to call with a valid `EtProgress` pointer and `user_data`; `out_steps_done` is NULL
/// or valid for one `uint64_t` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_trainer_step(
    trainer: *mut EtTrainer,
    n_steps: u64,
    progress: EtProgressFn,
    user_data: *mut c_void,
    out_steps_done: *mut u64,
) -> EtStatus {
    guard(|| {
        let report_done = |n: u64| {
            if !out_steps_done.is_null() {
                // SAFETY: non-NULL; the caller promises it is valid for one u64 write.
                unsafe { out_steps_done.write(n) };
            }
        };
        report_done(0);
        // SAFETY: forwarded caller contract.
        let t = unsafe { trainer_mut(trainer) }?;
        t.broken = true;
        let mut done = 0;
        let outcome = (|| -> FfiResult<()> {
            while done < n_steps {
                let Some(p) = t.step()? else { break };
                done += 1;
                report_done(done);
                if let Some(f) = progress {
                    let report = EtProgress::from(&p);
                    // SAFETY: the caller promises `f` may be called with a valid report and
                    // its `user_data`; `report` lives for the call.
                    if unsafe { f(&report, user_data) } != 0 {
                        return Err(FfiError::new(
                            EtStatus::Cancelled,
                            format!("stopped by the progress callback after step {}", p.step),
                        ));
                    }
                }
            }
            Ok(())
        })();
        // Reached on success and on errors (a failed step leaves the trainer usable: the next
        // step starts from zeroed gradients); only a panic skips it.
        t.broken = false;
        outcome
    })
}

/// Writes a checkpoint of the current state into `out/checkpoints/step-NNNNNNNN` (the adapter,
/// the optimizer state and the data position: `"resume": true` continues from it; it is also
/// an adapter directory for `et_model_set_adapter` and `et_adapter_export`) and copies its path
/// into `out_buf`. Buffer rules as for `et_generate`, except that `out_buf` NULL with
/// `out_cap` 0 just skips the copy (`*out_len` still gets the path's length). On
/// `ET_STATUS_BUFFER_TOO_SMALL` the checkpoint is written; `et_train_latest_checkpoint` on
/// `out` finds it too.
///
/// # Safety
/// `trainer` is NULL or a live handle not used by another call now; `out_buf` is NULL or
/// valid for `out_cap` bytes; `out_len` is NULL or valid for one `size_t` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_trainer_checkpoint(
    trainer: *mut EtTrainer,
    out_buf: *mut c_char,
    out_cap: usize,
    out_len: *mut usize,
) -> EtStatus {
    guard(|| {
        // SAFETY: forwarded caller contract.
        let t = unsafe { trainer_mut(trainer) }?;
        let dir = t.checkpoint()?;
        let text = dir.to_str().ok_or_else(|| {
            FfiError::invalid(format!("{}: the path is not UTF-8", dir.display()))
        })?;
        if out_buf.is_null() && out_cap == 0 {
            if !out_len.is_null() {
                // SAFETY: non-NULL; the caller promises it is valid for one usize write.
                unsafe { out_len.write(text.len()) };
            }
            return Ok(());
        }
        // SAFETY: forwarded caller contract for out_buf / out_cap / out_len.
        unsafe { write_text(text, out_buf, out_cap, out_len) }
    })
}

/// Writes the trainer's current adapters to `out_path` as `format`: `"native"` an edgetune
/// adapter directory (`adapter.json`, `adapter.safetensors`: what `et_model_set_adapter` and
/// `edgetune generate --adapter` read), `"gguf"` a llama.cpp LoRA GGUF file (`llama-cli
/// --lora`), `"peft"` a Hugging Face PEFT directory (`adapter_config.json`,
/// `adapter_model.safetensors`, `README.md` with the base file's SHA-256); tensors in f32.
///
/// # Safety
/// `trainer` is NULL or a live handle not used by another call now; `format` and `out_path`
/// are NULL or NUL-terminated strings valid for the call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_trainer_export(
    trainer: *mut EtTrainer,
    format: *const c_char,
    out_path: *const c_char,
) -> EtStatus {
    guard(|| {
        // SAFETY (all three): forwarded caller contract.
        let t = unsafe { trainer_mut(trainer) }?;
        let format = unsafe { str_arg(format, "format") }?;
        let out_path = Path::new(unsafe { str_arg(out_path, "out_path") }?);
        Ok(t.export(format, out_path)?)
    })
}

/// Stores the optimizer steps completed so far in `*out_steps` (a resumed run counts the
/// checkpoint's steps).
///
/// # Safety
/// `trainer` is NULL or a live handle not used by another call now; `out_steps` is NULL or
/// valid for one `uint64_t` write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_trainer_completed(
    trainer: *const EtTrainer,
    out_steps: *mut u64,
) -> EtStatus {
    // SAFETY: forwarded caller contract.
    guard(|| unsafe { write_count(trainer, out_steps, EtTrainer::completed) })
}

/// Stores the optimizer steps the run makes in all in `*out_steps` (`steps` of the
/// configuration, or what `epochs` of the data give).
///
/// # Safety
/// As for `et_trainer_completed`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn et_trainer_total_steps(
    trainer: *const EtTrainer,
    out_steps: *mut u64,
) -> EtStatus {
    // SAFETY: forwarded caller contract.
    guard(|| unsafe { write_count(trainer, out_steps, EtTrainer::total_steps) })
}

/// `*out = count(trainer)` with the NULL checks of both.
///
/// # Safety
/// As for `et_trainer_completed`.
unsafe fn write_count(
    trainer: *const EtTrainer,
    out: *mut u64,
    count: fn(&EtTrainer) -> u64,
) -> FfiResult<()> {
    // SAFETY: forwarded caller contract.
    let t = unsafe { trainer_ref(trainer) }?;
    if out.is_null() {
        return Err(FfiError::null("out_steps"));
    }
    // SAFETY: non-NULL; the caller promises it is valid for one u64 write.
    unsafe { out.write(count(t)) };
    Ok(())
}
