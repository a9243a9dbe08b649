//! The training configuration: everything `edgetune train` (and the C ABI's `et_train`) takes,
//! serialisable so that a checkpoint records the run it belongs to and `--resume` can check the
//! other arguments are the same.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::method::{Method, MethodOptions};
use edgetune_core::adapters::LoraConfig;
use edgetune_core::data::Format;
use edgetune_core::{Error, Result};

pub use super::config_kinds::{
    CheckpointDtype, Decay, FusedUpdate, OptimizerKind, StatePlace, StreamHead, WeightsMode,
    fused_update_support, stream_head_support,
};

/// Where the replay conversations of `train --replay` come from (`train/replay.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Replay {
    /// `--replay self`: the base model's own greedy answers to the first `prompts` built-in
    /// general requests, at most `max_tokens` tokens each (cached in the run directory).
    #[serde(rename = "self")]
    Own { prompts: usize, max_tokens: usize },
    /// `--replay FILE`: the user's own general data, in any dataset format.
    File(PathBuf),
}

/// `--replay self`'s defaults: every built-in prompt, answers of at most 64 tokens.
pub const REPLAY_SELF_DEFAULT: Replay = Replay::Own {
    prompts: edgetune_core::data::synth::REPLAY_PROMPTS.len(),
    max_tokens: 64,
};

/// `--kl-anchor`'s λ when `--replay` is given without it (the CLI's choice; the library's
/// default stays 0). Measured on SmolLM2 with the demo's data (README): at 64 steps, replay
/// alone kept 8 of 10 general answers, replay with λ = 0.5 all 10 at the same held-out pass
/// rate; λ = 2 kept 10 but learned less. The anchor costs one forward without adapters per
/// micro-batch that holds a replay row.
pub const KL_ANCHOR_WITH_REPLAY: f32 = 0.5;

/// One training run. Defaults are the CLI's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// The base GGUF.
    pub model: PathBuf,
    /// The dataset file (docs/FORMATS.md#datasets).
    pub data: PathBuf,
    /// `None`: detected from the fields.
    pub format: Option<Format>,
    /// The run directory (metrics.jsonl, summary.json, checkpoints/).
    pub out: PathBuf,
    pub lora: LoraConfig,
    /// The fine-tuning method (`lora` when absent, as before methods existed).
    pub method: Method,
    /// The method's own settings (see [`MethodOptions`]).
    pub method_opts: MethodOptions,
    pub lr: f32,
    /// Optimizer steps (`None` with `epochs`: as many as the epochs make).
    pub steps: Option<u64>,
    pub epochs: Option<u64>,
    /// Sequences per micro-batch.
    pub batch: usize,
    /// Micro-batches per optimizer step.
    pub accum: u32,
    pub seq_len: usize,
    /// Pack several examples into one row.
    pub pack: bool,
    pub optimizer: OptimizerKind,
    pub weight_decay: f32,
    /// SGD momentum (0 = plain SGD).
    pub momentum: f32,
    pub warmup_steps: u64,
    pub decay: Decay,
    /// Clip the global gradient norm to this (0 = off).
    pub max_grad_norm: f32,
    pub seed: u64,
    /// Checkpoint every this many steps (0 = only at the end).
    pub save_every: u64,
    /// Continue from the latest checkpoint in `out`.
    pub resume: bool,
    /// With `resume`: when the newest checkpoint is corrupt (its manifest does not match),
    /// continue from the newest valid older one instead of refusing.
    pub resume_fallback: bool,
    /// A fresh run into a directory that holds a previous run (or other files): remove the
    /// previous run's checkpoints and metrics first instead of refusing (`train/run_dir.rs`).
    pub overwrite: bool,
    /// Start from this adapter instead of the fresh init.
    pub init_adapter: Option<PathBuf>,
    /// Tokens per cross-entropy chunk.
    pub ce_chunk: usize,
    /// Keep only layer inputs and recompute each layer in the backward.
    pub checkpointing: bool,
    pub optimizer_state: StatePlace,
    /// 32 or 8 (blockwise 8-bit moments).
    pub optimizer_state_bits: u32,
    /// The memory budget in bytes (`None`: no check).
    pub budget_bytes: Option<u64>,
    /// `mlock` the mapped weights.
    pub lock_weights: bool,
    /// Mapped or streamed weights (`auto`: the plan decides from the budget).
    pub weights: WeightsMode,
    /// When the optimizer updates each layer's adapters (`auto`: fused when streamed and
    /// allowed, see [`fused_update_support`]).
    pub fused_update: FusedUpdate,
    /// Where the output head is with streamed layers (`auto`: streamed only when a resident
    /// head does not fit, see [`stream_head_support`]).
    pub stream_head: StreamHead,
    /// At most this many rows of a streamed head per chunk (`None`: as many as fit one staging
    /// buffer). Smaller chunks read the same bytes in more reads; the tests use it to cut a
    /// small model's head into several chunks.
    pub head_chunk_rows: Option<usize>,
    /// How the layer inputs kept for the backward are stored (bf16 needs checkpointing).
    pub checkpoint_dtype: CheckpointDtype,
    /// Where the layer inputs kept for the backward live: the arena, or a file in `out`
    /// written after each layer's forward and read at its recompute (needs checkpointing).
    pub checkpoints_on: StatePlace,
    /// Where the adapters' f32 weights live: in RAM, or paged from a file in `out` and resident
    /// only while their layer runs (adapters/param_buf.rs; bit-identical either way).
    pub adapter_weights: StatePlace,
    /// Sequential read speed of the model's storage in bytes/s, for the plan's estimate of a
    /// streamed step's I/O time (from `--board`; `None`: not estimated).
    pub storage_read_bytes_per_s: Option<f64>,
    /// Worker threads (`None`: rayon's default, one per core).
    pub threads: Option<usize>,
    /// General conversations mixed into the training rows (`None`: none).
    pub replay: Option<Replay>,
    /// The share of training rows taken from the replay data (`data::mix`).
    pub replay_ratio: f32,
    /// `λ` of the KL anchor on replay rows' answer tokens: the loss gains
    /// `λ·KL(p_base ‖ p)` there (`train/step_kl.rs`; 0: off).
    pub kl_anchor: f32,
    /// Evaluate the held-out and retention suites every N steps and at the end (0: never;
    /// `train/evaluate.rs`).
    pub eval_every: u64,
    /// The held-out eval suite (JSONL cases); `None`: only retention is measured.
    pub heldout: Option<PathBuf>,
    /// The retention suite; `None`: the built-in general-knowledge suite.
    pub retention: Option<PathBuf>,
    /// Tokens generated per evaluated case at most.
    pub eval_max_tokens: usize,
    /// Keep the adapter with the best held-out pass rate whose retention is within
    /// `retention_tolerance` of the base model's, in `OUT/best`.
    pub keep_best: bool,
    /// How far below the base model's retention pass rate a kept adapter may be.
    pub retention_tolerance: f64,
    /// The system message of the deployed assistant: written by the chat template before the
    /// prompts of `--eval-every` and of `--replay self` (`None`: the template's default).
    pub system: Option<String>,
    /// Arithmetic of the training forward's products through the frozen weights (`x·Wᵀ`; the
    /// backward's `dy·W` stays f32) on the CPU step: `F32` (the default) or `Int8`
    /// (activations rounded per block to 8 bits, llama.cpp's arithmetic; `train --compute`).
    pub compute: edgetune_core::quant::Compute,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            model: PathBuf::new(),
            data: PathBuf::new(),
            format: None,
            out: PathBuf::from("run"),
            lora: LoraConfig {
                rank: 16,
                alpha: 32.0,
                ..LoraConfig::default()
            },
            method: Method::Lora,
            method_opts: MethodOptions::default(),
            lr: 2e-4,
            steps: None,
            epochs: None,
            batch: 1,
            accum: 1,
            seq_len: 256,
            pack: false,
            optimizer: OptimizerKind::AdamW,
            weight_decay: 0.0,
            momentum: 0.0,
            warmup_steps: 0,
            decay: Decay::Constant,
            max_grad_norm: 1.0,
            seed: 42,
            save_every: 0,
            resume: false,
            resume_fallback: false,
            overwrite: false,
            init_adapter: None,
            ce_chunk: 64,
            checkpointing: true,
            optimizer_state: StatePlace::Ram,
            optimizer_state_bits: 32,
            budget_bytes: None,
            lock_weights: false,
            weights: WeightsMode::Auto,
            fused_update: FusedUpdate::Auto,
            stream_head: StreamHead::Auto,
            head_chunk_rows: None,
            checkpoint_dtype: CheckpointDtype::F32,
            checkpoints_on: StatePlace::Ram,
            adapter_weights: StatePlace::Ram,
            storage_read_bytes_per_s: None,
            threads: None,
            replay: None,
            replay_ratio: 0.25,
            kl_anchor: 0.0,
            eval_every: 0,
            heldout: None,
            retention: None,
            eval_max_tokens: 48,
            keep_best: false,
            retention_tolerance: 0.1,
            system: None,
            compute: edgetune_core::quant::Compute::F32,
        }
    }
}

impl TrainConfig {
    /// Rejects sizes of zero, a non-finite or negative learning rate, and the like, naming the
    /// setting and its value.
    pub fn validate(&self) -> Result<()> {
        self.lora.validate()?;
        self.method_opts.validate(self.method, self.lora.rank)?;
        let bad = |what: &str, v: String| Err(Error::Invalid(format!("train: {what} {v}")));
        if self.batch == 0 {
            return bad("--batch must be at least 1, got", "0".into());
        }
        if self.accum == 0 {
            return bad("--accum must be at least 1, got", "0".into());
        }
        if self.lock_weights && self.weights == WeightsMode::Stream {
            return Err(Error::Invalid(
                "train: --lock-weights keeps the whole map resident; --weights stream reads \
                 layers as they run: choose one"
                    .into(),
            ));
        }
        if self.checkpoint_dtype == CheckpointDtype::Bf16 && !self.checkpointing {
            return Err(Error::Invalid(
                "train: --checkpoint-dtype bf16 stores the layer inputs gradient checkpointing \
                 keeps; without checkpointing (--no-checkpointing) there are none"
                    .into(),
            ));
        }
        if self.checkpoints_on == StatePlace::Disk && !self.checkpointing {
            return Err(Error::Invalid(
                "train: --checkpoints-on disk spills the layer inputs gradient checkpointing \
                 keeps; without checkpointing (--no-checkpointing) there are none"
                    .into(),
            ));
        }
        if self.fused_update == FusedUpdate::On {
            fused_update_support(self)
                .map_err(|why| Error::Invalid(format!("train: --fused-update on: {why}")))?;
        }
        if self.head_chunk_rows == Some(0) {
            return bad("head_chunk_rows must be at least 1, got", "0".into());
        }
        if self.stream_head == StreamHead::On {
            stream_head_support(self)
                .map_err(|why| Error::Invalid(format!("train: --stream-head on: {why}")))?;
        }
        if self.seq_len < 2 {
            return bad(
                "--seq-len must be at least 2, got",
                self.seq_len.to_string(),
            );
        }
        if self.ce_chunk == 0 {
            return bad("--ce-chunk must be at least 1, got", "0".into());
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("--lr must be finite and ≥ 0, got", self.lr.to_string());
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "--weight-decay must be ≥ 0, got",
                self.weight_decay.to_string(),
            );
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm >= 0.0) {
            return bad(
                "--max-grad-norm must be ≥ 0, got",
                self.max_grad_norm.to_string(),
            );
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(
                "--momentum must be in [0, 1), got",
                self.momentum.to_string(),
            );
        }
        if self.optimizer_state_bits != 32 && self.optimizer_state_bits != 8 {
            return bad(
                "--optimizer-state-bits must be 32 or 8, got",
                self.optimizer_state_bits.to_string(),
            );
        }
        self.check_optimizer_flags()?;
        if self.resume_fallback && !self.resume {
            return Err(Error::Invalid(
                "train: --resume-fallback chooses the checkpoint a --resume continues from; give \
                 --resume DIR"
                    .into(),
            ));
        }
        if self.overwrite && self.resume {
            return Err(Error::Invalid(
                "train: --overwrite deletes the run --resume would continue; give one of them"
                    .into(),
            ));
        }
        if self.steps == Some(0) {
            return bad("--steps must be at least 1, got", "0".into());
        }
        if self.epochs == Some(0) {
            return bad("--epochs must be at least 1, got", "0".into());
        }
        if self.replay.is_some() {
            if !(self.replay_ratio > 0.0 && self.replay_ratio < 1.0) {
                return bad(
                    "--replay-ratio must be above 0 and below 1, got",
                    self.replay_ratio.to_string(),
                );
            }
            if self.method.task_routed() {
                return Err(Error::Invalid(
                    "train: --replay mixes rows of no task into the batches; MT-LoRA routes every \
                     row by its task, so the two do not go together"
                        .into(),
                ));
            }
            if let Some(Replay::Own {
                prompts,
                max_tokens,
            }) = &self.replay
                && (*prompts == 0 || *max_tokens < 8)
            {
                return bad(
                    "--replay self needs at least 1 prompt and 8 answer tokens, got",
                    format!("{prompts} prompts and {max_tokens} tokens"),
                );
            }
        }
        if !(self.kl_anchor.is_finite() && self.kl_anchor >= 0.0) {
            return bad(
                "--kl-anchor must be finite and ≥ 0, got",
                self.kl_anchor.to_string(),
            );
        }
        if self.kl_anchor > 0.0 && self.replay.is_none() {
            return Err(Error::Invalid(
                "train: --kl-anchor pulls the replay rows' answers towards the base model's: \
                 give --replay self|FILE too"
                    .into(),
            ));
        }
        if self.keep_best && (self.eval_every == 0 || self.heldout.is_none()) {
            return Err(Error::Invalid(
                "train: --keep-best picks by the held-out pass rate: give --eval-every N and \
                 --heldout FILE"
                    .into(),
            ));
        }
        if self.eval_every > 0 && self.eval_max_tokens == 0 {
            return bad("--eval-max-tokens must be at least 1, got", "0".into());
        }
        if !(self.retention_tolerance.is_finite() && self.retention_tolerance >= 0.0) {
            return bad(
                "--retention-tolerance must be ≥ 0, got",
                self.retention_tolerance.to_string(),
            );
        }
        if self.steps.is_none() && self.epochs.is_none() {
            return Err(Error::Invalid(
                "train: give --steps N or --epochs E (or both: whichever ends first)".into(),
            ));
        }
        Ok(())
    }

    /// Refuses optimizer flags the chosen optimizer does not use (they would be accepted and
    /// ignored): SGD keeps its momentum buffers as f32 vectors in RAM (`optim/sgd.rs`), so
    /// `--optimizer-state disk` and `--optimizer-state-bits 8` are AdamW's only; AdamW has no
    /// `--momentum` (its β1 is fixed).
    pub fn check_optimizer_flags(&self) -> Result<()> {
        let refuse = |flags: &str, why: &str| {
            Err(Error::Invalid(format!(
                "train: {flags} does nothing with --optimizer {}: {why}",
                match self.optimizer {
                    OptimizerKind::AdamW => "adamw",
                    OptimizerKind::Sgd => "sgd",
                }
            )))
        };
        match self.optimizer {
            OptimizerKind::Sgd => {
                let mut flags = Vec::new();
                if self.optimizer_state == StatePlace::Disk {
                    flags.push("--optimizer-state disk".to_string());
                }
                if self.optimizer_state_bits != 32 {
                    flags.push(format!(
                        "--optimizer-state-bits {}",
                        self.optimizer_state_bits
                    ));
                }
                if !flags.is_empty() {
                    return refuse(
                        &flags.join(" and "),
                        "SGD keeps its momentum as 32-bit values in RAM (only AdamW's moments \
                         can go to disk or to 8 bits); drop the flag or use --optimizer adamw",
                    );
                }
            }
            OptimizerKind::AdamW if self.momentum != 0.0 => {
                return refuse(
                    &format!("--momentum {}", self.momentum),
                    "momentum is SGD's (AdamW's first moment is built in); drop the flag or \
                     use --optimizer sgd",
                );
            }
            OptimizerKind::AdamW => {}
        }
        Ok(())
    }

    /// Tokens per micro-batch (`batch × seq_len`).
    pub fn tokens_per_micro_batch(&self) -> usize {
        self.batch * self.seq_len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_defaults_fill_missing_fields() {
        let mut c = TrainConfig {
            steps: Some(10),
            ..TrainConfig::default()
        };
        c.lora.rank = 4;
        let text = serde_json::to_string(&c).unwrap();
        let back: TrainConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
        let partial: TrainConfig = serde_json::from_str(r#"{"steps": 3, "lr": 0.001}"#).unwrap();
        assert_eq!(partial.steps, Some(3));
        assert_eq!(partial.lr, 0.001);
        assert_eq!(partial.seq_len, TrainConfig::default().seq_len);
        // Configs written before methods existed are LoRA runs.
        assert_eq!(partial.method, Method::Lora);
        let dora: TrainConfig =
            serde_json::from_str(r#"{"method": "dora", "method_opts": {"loraplus_ratio": 4}}"#)
                .unwrap();
        assert_eq!(dora.method, Method::Dora);
        assert_eq!(dora.method_opts.loraplus_ratio, 4.0);
        assert_eq!(
            dora.method_opts.layerimp_tau,
            MethodOptions::default().layerimp_tau
        );
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let ok = TrainConfig {
            steps: Some(1),
            ..TrainConfig::default()
        };
        ok.validate().unwrap();
        let e = TrainConfig {
            batch: 0,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--batch"), "{e}");
        let e = TrainConfig {
            steps: None,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--steps"), "{e}");
        let e = TrainConfig {
            optimizer_state_bits: 4,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("bits"), "{e}");
        let e = TrainConfig {
            lr: f32::NAN,
            ..ok.clone()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--lr"), "{e}");
    }

    #[test]
    fn optimizer_flags_the_optimizer_ignores_are_refused() {
        let sgd = TrainConfig {
            steps: Some(1),
            optimizer: OptimizerKind::Sgd,
            momentum: 0.9,
            ..TrainConfig::default()
        };
        sgd.validate().unwrap();
        let e = TrainConfig {
            optimizer_state: StatePlace::Disk,
            optimizer_state_bits: 8,
            ..sgd.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--optimizer-state disk and --optimizer-state-bits 8")
                && e.contains("--optimizer sgd"),
            "{e}"
        );
        let e = TrainConfig {
            optimizer_state_bits: 8,
            ..sgd.clone()
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--optimizer-state-bits 8"), "{e}");
        let e = TrainConfig {
            optimizer: OptimizerKind::AdamW,
            ..sgd
        }
        .validate()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--momentum 0.9") && e.contains("adamw"), "{e}");
    }

    #[test]
    fn replay_and_evaluation_settings_are_checked() {
        let ok = TrainConfig {
            steps: Some(1),
            replay: Some(REPLAY_SELF_DEFAULT),
            ..TrainConfig::default()
        };
        ok.validate().unwrap();
        let with = |f: &dyn Fn(&mut TrainConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate().map_err(|e| e.to_string())
        };
        for ratio in [0.0, 1.0, f32::NAN] {
            let e = with(&|c| c.replay_ratio = ratio).unwrap_err();
            assert!(e.contains("--replay-ratio"), "{e}");
        }
        let e = with(&|c| c.method = Method::Mtlora).unwrap_err();
        assert!(e.contains("MT-LoRA"), "{e}");
        let e = with(&|c| {
            c.replay = Some(Replay::Own {
                prompts: 10,
                max_tokens: 4,
            })
        })
        .unwrap_err();
        assert!(e.contains("8 answer tokens"), "{e}");
        let e = with(&|c| c.keep_best = true).unwrap_err();
        assert!(e.contains("--eval-every") && e.contains("--heldout"), "{e}");
        with(&|c| c.kl_anchor = 0.5).unwrap();
        for bad in [-1.0, f32::INFINITY, f32::NAN] {
            let e = with(&|c| c.kl_anchor = bad).unwrap_err();
            assert!(e.contains("--kl-anchor"), "{e}");
        }
        let e = with(&|c| {
            c.kl_anchor = 0.5;
            c.replay = None;
        })
        .unwrap_err();
        assert!(e.contains("--kl-anchor") && e.contains("--replay"), "{e}");
        with(&|c| {
            c.keep_best = true;
            c.eval_every = 5;
            c.heldout = Some("h.jsonl".into());
        })
        .unwrap();
        let e = with(&|c| c.retention_tolerance = -0.1).unwrap_err();
        assert!(e.contains("--retention-tolerance"), "{e}");
        // Configs written before replay existed read as runs without it.
        let old: TrainConfig = serde_json::from_str(r#"{"steps": 2}"#).unwrap();
        assert_eq!((old.replay, old.eval_every), (None, 0));
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&ok).unwrap()).unwrap();
        assert_eq!(back, ok);
    }
}
