//! Checkpoints: `DIR/checkpoints/step-NNNNNNNN/` holding the adapter (our native format,
//! `adapter.safetensors` + `adapter.json`), the optimizer state (`optimizer.bin`) and the run
//! state (`state.json`: step, data cursor, the RNG seeds, the run's configuration, counters).
//!
//! Atomicity: a checkpoint is written into `DIR/checkpoints/.tmp-step-NNNNNNNN/` (every file
//! fsynced, then `manifest.json` with every file's size and SHA-256:
//! `checkpoint_manifest.rs`), then the directory is renamed into place and the parent fsynced,
//! so a checkpoint directory either exists whole or not at all. A save that fails (a full
//! disk) removes its temporary directory and keeps the previous checkpoints. Only the newest
//! [`KEEP`] checkpoints are kept: an older one is first renamed to `.trash-step-NNNNNNNN`, then
//! deleted, so a kill in the middle never leaves a half-deleted `step-*`. Leftover `.tmp-*` and
//! `.trash-*` directories of a killed run are removed when a run starts and on every save
//! (under the run directory's lock, `run_dir.rs`).
//!
//! Resuming ([`resume_point`]) verifies the newest checkpoint against its manifest; a corrupt
//! one is refused, naming the file and the newest valid older checkpoint, which `fallback`
//! (`--resume-fallback`) takes instead (the corrupt ones are set aside as `corrupt-step-*`).
//!
//! Randomness: training draws no random numbers outside the seeded init; dropout masks are a
//! hash of (seed, step, micro-batch) and the data order follows from the cursor, so `seed` and
//! the step count are the whole RNG state.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::adapter_set::AdapterSet;
use super::checkpoint_manifest;
use super::config::TrainConfig;
use super::method::Method;
use super::method_hooks::MethodHooks;
use super::method_io;
use super::optimizer::Optimizer;
use edgetune_core::data::Cursor;
use edgetune_core::model::LlamaConfig;
use edgetune_core::{Error, Result};

/// Checkpoints kept (older ones are deleted after a new one is in place).
pub const KEEP: usize = 2;

/// The run state saved with every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format: String,
    /// Optimizer steps completed.
    pub step: u64,
    pub cursor: Cursor,
    /// The replay data's cursor (`train --replay`; absent without replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_cursor: Option<Cursor>,
    /// The seed every random stream derives from (init, dropout, data order).
    pub seed: u64,
    /// Tokens processed so far.
    pub tokens: u64,
    /// Training seconds so far (excluding time between a kill and the resume).
    pub elapsed_s: f64,
    pub config: TrainConfig,
    /// The model file's fingerprint (`fingerprint.rs`, 16 hex digits); absent in checkpoints
    /// written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_fingerprint: Option<String>,
}

const FORMAT: &str = "edgetune-checkpoint-1";

/// `DIR/checkpoints`.
pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Whether a run of `method` checkpoints its full method state (`method.json` +
/// `method.safetensors`, method_io.rs) and resumes from it; plain LoRA resumes from the
/// adapter itself, as before methods existed.
pub fn keeps_method_state(method: Method) -> bool {
    !method.spec().behaviour.adapter_is_state
}

/// Writes a checkpoint of step `state.step` atomically; returns its directory.
pub fn save(
    out: &Path,
    set: &AdapterSet,
    optimizer: &Optimizer,
    state: &RunState,
) -> Result<PathBuf> {
    save_with(out, set, optimizer, state, None)
}

/// [`save`] with the method's hooks: for every method but plain LoRA the method state is
/// written too (without `hooks`, fresh hooks stand in). The plain-LoRA adapter files
/// (`adapter.json`, `adapter.safetensors`: what `generate`, `export` and `merge` read) are
/// written when every adapter exports as a low-rank pair; merge-only methods (DoRA, HiRA)
/// have only the method state, which `edgetune merge` reads with the base.
pub fn save_with(
    out: &Path,
    set: &AdapterSet,
    optimizer: &Optimizer,
    state: &RunState,
    hooks: Option<&MethodHooks>,
) -> Result<PathBuf> {
    let root = checkpoints_dir(out);
    fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    clean_leftovers(&root)?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    if let Err(e) = fill_checkpoint(&tmp, set, optimizer, state, hooks) {
        // A full disk (or any failure): no partial checkpoint stays behind, the older ones do.
        if let Err(rm) = fs::remove_dir_all(&tmp) {
            log::warn!(
                "{}: cannot remove the partial checkpoint: {rm}",
                tmp.display()
            );
        }
        return Err(e);
    }
    let dst = root.join(&name);
    if dst.exists() {
        remove_via_trash(&root, &dst)?;
    }
    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    sync_dir(&root)?;
    prune(&root)?;
    Ok(dst)
}

/// Writes every file of a checkpoint into `tmp`, the manifest last.
fn fill_checkpoint(
    tmp: &Path,
    set: &AdapterSet,
    optimizer: &Optimizer,
    state: &RunState,
    hooks: Option<&MethodHooks>,
) -> Result<()> {
    let method = state.config.method;
    let meta = serde_json::json!({ "step": state.step, "seed": state.seed });
    let low_rank = set
        .iter()
        .all(|(_, _, a)| matches!(a.export(), edgetune_core::adapters::Export::LowRank { .. }));
    if low_rank {
        crate::export::native::save_adapter(set, tmp, &meta)?;
    }
    if keeps_method_state(method) {
        let fresh;
        let hooks = match hooks {
            Some(h) => h,
            None => {
                fresh = MethodHooks::with_options(method, set, &state.config.method_opts)?;
                &fresh
            }
        };
        method_io::save(tmp, set, hooks, method, &state.config.method_opts)?;
    }
    write_synced(&tmp.join("optimizer.bin"), |mut w| optimizer.save(&mut w))?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Invalid(format!("checkpoint state: {e}")))?;
    let state_path = tmp.join("state.json");
    write_synced(&state_path, |w| {
        w.write_all(&json).map_err(|e| Error::io(&state_path, e))
    })?;
    checkpoint_manifest::write(tmp)?;
    sync_dir(tmp)
}

/// The newest complete checkpoint under `out`, if any.
pub fn latest(out: &Path) -> Result<Option<PathBuf>> {
    Ok(list(&checkpoints_dir(out))?.pop().map(|(_, p)| p))
}

/// A checkpoint read back: the run state; the adapter and optimizer are loaded into the
/// caller's objects by [`load_into`].
pub fn read_state(dir: &Path) -> Result<RunState> {
    let path = dir.join("state.json");
    let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
    let state: RunState = serde_json::from_reader(BufReader::new(f))
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    if state.format != FORMAT {
        return Err(Error::Invalid(format!(
            "{}: format `{}`, expected `{FORMAT}`",
            path.display(),
            state.format
        )));
    }
    Ok(state)
}

/// Loads the adapter of checkpoint `dir` (for `model`) and its optimizer state into
/// `optimizer`.
pub fn load_into(dir: &Path, model: &LlamaConfig, optimizer: &mut Optimizer) -> Result<AdapterSet> {
    let set = crate::export::native::load_adapter(dir, model)?;
    let path = dir.join("optimizer.bin");
    let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
    optimizer
        .load(&mut BufReader::new(f))
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok(set)
}

/// Restores a method checkpoint `dir` into `set` (freshly built for the run's
/// configuration), `hooks` and `optimizer`.
pub fn load_method_into(
    dir: &Path,
    set: &mut AdapterSet,
    hooks: &mut MethodHooks,
    optimizer: &mut Optimizer,
) -> Result<()> {
    let meta = method_io::read_meta(dir)?;
    if meta.method != hooks.method() || meta.n_layer != set.n_layer() {
        return Err(Error::Invalid(format!(
            "{}: a {} checkpoint of {} layers, the run is {} with {} layers",
            dir.display(),
            meta.method,
            meta.n_layer,
            hooks.method(),
            set.n_layer()
        )));
    }
    method_io::load_into(dir, set, hooks)?;
    let path = dir.join("optimizer.bin");
    let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
    optimizer
        .load(&mut BufReader::new(f))
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

impl RunState {
    pub fn new(step: u64, cursor: Cursor, tokens: u64, elapsed_s: f64, cfg: &TrainConfig) -> Self {
        RunState {
            format: FORMAT.into(),
            step,
            cursor,
            replay_cursor: None,
            seed: cfg.seed,
            tokens,
            elapsed_s,
            // How this process started (not what the run trains): a resume of this state must
            // not inherit `overwrite`.
            config: TrainConfig {
                overwrite: false,
                resume_fallback: false,
                ..cfg.clone()
            },
            model_fingerprint: None,
        }
    }
}

/// The settings of `saved` and `now` that differ, ignoring those a resume may change
/// (`resume`, `resume_fallback`, `overwrite`, `steps`, `epochs`, `save_every`, `init_adapter`,
/// `out`, `threads`, and the evaluation settings). File paths (model, data, replay file) are
/// compared canonicalized (relative to the current directory), so `./iot.jsonl` and
/// `iot.jsonl` are the same file; that the model *file* is the same is checked by its
/// fingerprint ([`check_model`]).
pub fn config_differences(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let norm = |c: &TrainConfig| {
        let mut c = c.clone();
        c.resume = false;
        c.resume_fallback = false;
        c.overwrite = false;
        c.steps = None;
        c.epochs = None;
        c.save_every = 0;
        c.init_adapter = None;
        c.out = PathBuf::new();
        c.threads = None;
        // Streamed and mapped weights give bit-identical steps.
        c.weights = super::config::WeightsMode::Auto;
        c.storage_read_bytes_per_s = None;
        // So do the fused and the unfused update (the norm pass keeps clipping exact).
        c.fused_update = super::config::FusedUpdate::Auto;
        // And layer inputs in memory or on disk (the same values either way).
        c.checkpoints_on = super::config::StatePlace::Ram;
        // And adapter weights in RAM or paged from a file.
        c.adapter_weights = super::config::StatePlace::Ram;
        // How the run is watched may change on a resume; what it trains on may not.
        c.eval_every = 0;
        c.heldout = None;
        c.retention = None;
        c.eval_max_tokens = 0;
        c.keep_best = false;
        c.retention_tolerance = 0.0;
        // Files are compared by where they are, not how they are spelled (`./a` = `a`).
        c.model = canonical(&c.model);
        c.data = canonical(&c.data);
        if let Some(super::config::Replay::File(p)) = &mut c.replay {
            *p = canonical(p);
        }
        serde_json::to_value(c).unwrap_or_default()
    };
    let (a, b) = (norm(saved), norm(now));
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["<config>".into()];
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, v)| {
            format!(
                "{k}: checkpoint {v}, now {}",
                b.get(k).unwrap_or(&serde_json::Value::Null)
            )
        })
        .collect()
}

/// The canonical form of `p` (symlinks and `.`/`..` resolved); a path that does not exist is
/// made absolute instead, or kept.
fn canonical(p: &Path) -> PathBuf {
    fs::canonicalize(p)
        .or_else(|_| std::path::absolute(p))
        .unwrap_or_else(|_| p.to_path_buf())
}

/// Refuses to resume checkpoint `dir` (state `saved`) with another model file than the one it
/// was trained on: `now` is the fingerprint of the run's model file. Checkpoints from before
/// fingerprints were recorded pass.
pub fn check_model(dir: &Path, saved: &RunState, model: &Path, now: &str) -> Result<()> {
    match &saved.model_fingerprint {
        Some(was) if was != now => Err(Error::Invalid(format!(
            "{}: --resume with another model file: {} has fingerprint {now}, the checkpoint was              trained on a model with fingerprint {was} (size, header and blocks differ)",
            dir.display(),
            model.display()
        ))),
        _ => Ok(()),
    }
}

/// `(step, dir)` of every complete checkpoint in `root`, oldest first.
fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(Error::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name();
        let Some(step) = name
            .to_str()
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        found.push((step, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Deletes all but the newest [`KEEP`] checkpoints (each renamed to `.trash-*` first).
fn prune(root: &Path) -> Result<()> {
    let all = list(root)?;
    for (_, dir) in all.iter().take(all.len().saturating_sub(KEEP)) {
        remove_via_trash(root, dir)?;
    }
    Ok(())
}

/// Renames checkpoint `dir` to `root/.trash-<name>` (atomic: it stops being a checkpoint at
/// once), then deletes it.
fn remove_via_trash(root: &Path, dir: &Path) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let trash = root.join(format!(".trash-{}", name.unwrap_or_default()));
    if trash.exists() {
        fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))?;
    }
    fs::rename(dir, &trash).map_err(|e| Error::io(dir, e))?;
    #[cfg(test)]
    fault::after_trash_rename()?;
    fs::remove_dir_all(&trash).map_err(|e| Error::io(&trash, e))
}

/// Removes the `.tmp-*` (a save cut short) and `.trash-*` (a prune cut short) directories of
/// `root` (`DIR/checkpoints`); absent `root` is fine. Only safe under the run's lock.
pub fn clean_leftovers(root: &Path) -> Result<()> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(root, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".tmp-") || name.starts_with(".trash-") {
            let path = entry.path();
            log::info!("{}: removing a leftover of a killed run", path.display());
            let removed = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            removed.map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The checkpoint a resume of `out` continues from: the newest one that matches its manifest
/// (or has none: a checkpoint from before manifests). When newer ones are corrupt this is an
/// error naming the corrupt file and the newest valid checkpoint, unless `fallback`, which
/// sets the corrupt ones aside (`corrupt-step-*`) and takes the valid one. `None` when there is
/// no checkpoint.
pub fn resume_point(out: &Path, fallback: bool) -> Result<Option<PathBuf>> {
    let root = checkpoints_dir(out);
    let all = list(&root)?;
    let mut corrupt: Vec<(PathBuf, Error)> = Vec::new();
    for (_, dir) in all.iter().rev() {
        match checkpoint_manifest::verify(dir) {
            Ok(_) if corrupt.is_empty() => return Ok(Some(dir.clone())),
            Ok(_) if fallback => {
                for (bad, e) in &corrupt {
                    log::warn!(
                        "{}: corrupt ({e}); set aside, resuming from {}",
                        bad.display(),
                        dir.display()
                    );
                    set_aside(&root, bad)?;
                }
                return Ok(Some(dir.clone()));
            }
            Ok(_) => return Err(corrupt_error(corrupt, Some(dir))),
            Err(e @ Error::Corrupt { .. }) => corrupt.push((dir.clone(), e)),
            Err(e) => return Err(e),
        }
    }
    match corrupt.is_empty() {
        true => Ok(None),
        false => Err(corrupt_error(corrupt, None)),
    }
}

/// The error of a resume whose newest checkpoints are corrupt (`corrupt`, newest first).
fn corrupt_error(mut corrupt: Vec<(PathBuf, Error)>, valid: Option<&Path>) -> Error {
    let (dir, first) = corrupt.remove(0);
    let (path, what) = match first {
        Error::Corrupt { path, what } => (path, what),
        other => (dir.clone(), other.to_string()),
    };
    let others = match corrupt.len() {
        0 => String::new(),
        n => format!(" ({n} older one(s) too)"),
    };
    let next = match valid {
        Some(v) => format!(
            "the newest valid checkpoint is {}: give --resume-fallback to continue from it",
            v.display()
        ),
        None => "and there is no older valid checkpoint to fall back to".into(),
    };
    Error::Corrupt {
        path,
        what: format!(
            "{what}: checkpoint {} is corrupt{others}; {next}",
            dir.display()
        ),
    }
}

/// Renames corrupt checkpoint `dir` to `root/corrupt-<name>` (kept for inspection, no longer
/// a checkpoint).
fn set_aside(root: &Path, dir: &Path) -> Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let aside = root.join(format!("corrupt-{}", name.unwrap_or_default()));
    if aside.exists() {
        fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
    }
    fs::rename(dir, &aside).map_err(|e| Error::io(dir, e))
}

/// Writes `path` through `fill`, then fsyncs it. An I/O error of `fill` is reported on `path`
/// (the writers name their stream, e.g. `<AdamW state>`, not the file).
fn write_synced(path: &Path, fill: impl FnOnce(&mut dyn Write) -> Result<()>) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(f);
    #[cfg(test)]
    let filled = fill(&mut fault::Faulty::new(&mut w, path));
    #[cfg(not(test))]
    let filled = fill(&mut w);
    filled.map_err(|e| match e {
        Error::Io { source, .. } => Error::io(path, source),
        other => other,
    })?;
    let f = w
        .into_inner()
        .map_err(|e| Error::io(path, e.into_error()))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// fsyncs a directory (its entries), where the platform allows it.
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let d = File::open(dir).map_err(|e| Error::io(dir, e))?;
        d.sync_all().map_err(|e| Error::io(dir, e))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "checkpoint_fault.rs"]
pub(crate) mod fault;
