//! Checkpoints: `DIR/checkpoints/step-NNNNNNNN/` holding the adapter (our native format,
//! `adapter.safetensors` + `adapter.json`), the optimizer state (`optimizer.bin`) and the run
//! state (`state.json`: step, data cursor, the RNG seeds, the run's configuration, counters).
//!
//! Atomicity: a checkpoint is written into `DIR/checkpoints/.tmp-step-NNNNNNNN/` (every file
//! fsynced), then the directory is renamed into place and the parent fsynced, so a checkpoint
//! directory either exists whole or not at all; a leftover `.tmp-*` from a killed run is
//! removed on the next save. Only the newest [`KEEP`] checkpoints are kept.
//!
//! Randomness: training draws no random numbers outside the seeded init; dropout masks are a
//! hash of (seed, step, micro-batch) and the data order follows from the cursor, so `seed` and
//! the step count are the whole RNG state.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::adapter_set::AdapterSet;
use super::config::TrainConfig;
use super::method::Method;
use super::method_hooks::MethodHooks;
use super::method_io;
use super::optimizer::Optimizer;
use crate::data::Cursor;
use crate::model::LlamaConfig;
use crate::{Error, Result};

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
    method != Method::Lora
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
    let method = state.config.method;
    let root = checkpoints_dir(out);
    fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let meta = serde_json::json!({ "step": state.step, "seed": state.seed });
    let low_rank = set
        .iter()
        .all(|(_, _, a)| matches!(a.export(), crate::adapters::Export::LowRank { .. }));
    if low_rank {
        crate::export::native::save_adapter(set, &tmp, &meta)?;
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
        method_io::save(&tmp, set, hooks, method, &state.config.method_opts)?;
    }
    write_synced(&tmp.join("optimizer.bin"), |w| optimizer.save(w))?;
    let json = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::Invalid(format!("checkpoint state: {e}")))?;
    write_synced(&tmp.join("state.json"), |w| {
        w.write_all(&json).map_err(|e| Error::io("state.json", e))
    })?;
    sync_dir(&tmp)?;
    let dst = root.join(&name);
    if dst.exists() {
        fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
    }
    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    sync_dir(&root)?;
    prune(&root)?;
    Ok(dst)
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
            config: cfg.clone(),
        }
    }
}

/// The settings of `saved` and `now` that differ, ignoring those a resume may change
/// (`resume`, `steps`, `epochs`, `save_every`, `init_adapter`, `out`, `threads`, and the
/// evaluation settings).
pub fn config_differences(saved: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    let norm = |c: &TrainConfig| {
        let mut c = c.clone();
        c.resume = false;
        c.steps = None;
        c.epochs = None;
        c.save_every = 0;
        c.init_adapter = None;
        c.out = PathBuf::new();
        c.threads = None;
        // How the run is watched may change on a resume; what it trains on may not.
        c.eval_every = 0;
        c.heldout = None;
        c.retention = None;
        c.eval_max_tokens = 0;
        c.keep_best = false;
        c.retention_tolerance = 0.0;
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

/// Deletes all but the newest [`KEEP`] checkpoints.
fn prune(root: &Path) -> Result<()> {
    let all = list(root)?;
    for (_, dir) in all.iter().take(all.len().saturating_sub(KEEP)) {
        fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}

/// Writes `path` through `fill`, then fsyncs it.
fn write_synced(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let f = File::create(path).map_err(|e| Error::io(path, e))?;
    let mut w = BufWriter::new(f);
    fill(&mut w)?;
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
