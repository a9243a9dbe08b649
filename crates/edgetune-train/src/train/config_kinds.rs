//! The small choices of a training run's configuration: the optimizer, the learning-rate
//! decay, where AdamW's moments live, and how the frozen weights are read.

use serde::{Deserialize, Serialize};

use edgetune_core::{Error, Result};

/// Which optimizer updates the adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    AdamW,
    Sgd,
}

/// The learning-rate decay after the warmup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    #[default]
    Constant,
    Linear,
    Cosine,
}

/// Where a part of the training state lives: AdamW's moments (`--optimizer-state ram|disk`),
/// the layer inputs kept for the backward (`--checkpoints-on ram|disk`) or the adapters' f32
/// weights (`--adapter-weights ram|disk`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatePlace {
    #[default]
    Ram,
    Disk,
}

/// How the frozen weights are read (`--weights auto|map|stream`, model/stream.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WeightsMode {
    /// Mapped, unless the budget is below what mapping needs and streaming fits it.
    #[default]
    Auto,
    /// Mapped: every page a step reads stays resident.
    Map,
    /// Each layer read into a staging buffer when it runs; the head read once.
    Stream,
}

impl std::str::FromStr for WeightsMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(WeightsMode::Auto),
            "map" => Ok(WeightsMode::Map),
            "stream" => Ok(WeightsMode::Stream),
            other => Err(Error::Invalid(format!(
                "--weights `{other}`: expected auto, map or stream"
            ))),
        }
    }
}

impl std::fmt::Display for WeightsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WeightsMode::Auto => "auto",
            WeightsMode::Map => "map",
            WeightsMode::Stream => "stream",
        })
    }
}

/// When the optimizer updates a layer's adapters (`--fused-update auto|on|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FusedUpdate {
    /// On when the layers are streamed and the run allows it (see [`fused_update_support`]);
    /// with clipping only when the unfused step does not fit the budget, as clipping then costs
    /// a second forward and backward.
    #[default]
    Auto,
    /// Each layer's adapters are updated right after that layer's backward; its gradients are
    /// dropped there, so no full set of gradients ever exists.
    On,
    /// Every gradient first, then one update of all adapters.
    Off,
}

impl std::str::FromStr for FusedUpdate {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(FusedUpdate::Auto),
            "on" => Ok(FusedUpdate::On),
            "off" => Ok(FusedUpdate::Off),
            other => Err(Error::Invalid(format!(
                "--fused-update `{other}`: expected auto, on or off"
            ))),
        }
    }
}

impl std::fmt::Display for FusedUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FusedUpdate::Auto => "auto",
            FusedUpdate::On => "on",
            FusedUpdate::Off => "off",
        })
    }
}

/// Whether the fused per-layer update can run `cfg`, and if not, why (a sentence naming the
/// setting). It needs a step whose gradients of one layer are final when that layer's backward
/// ends: one micro-batch per step (accumulated gradients are final only after the last), and a
/// method whose update needs nothing beyond the layer's own gradients (no cross-layer
/// pruning budget, task masks, rank sampling or cross-layer shortcuts). Global-norm clipping
/// is supported by a first pass that only measures the norm.
pub fn fused_update_support(cfg: &super::TrainConfig) -> std::result::Result<(), String> {
    if cfg.accum > 1 {
        return Err(format!(
            "--accum {}: a layer's gradients are final only after the last micro-batch, so they \
             cannot be applied and dropped at its backward",
            cfg.accum
        ));
    }
    if cfg.method.spec().per_layer_update {
        Ok(())
    } else {
        Err(format!(
            "--method {}: its update uses more than each layer's own gradients (a budget, task \
             masks, rank sampling or cross-layer state)",
            cfg.method.name()
        ))
    }
}

/// Where the output head is when the layers are streamed (`--stream-head auto|on|off`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StreamHead {
    /// Streamed when the layers are and the plan with a resident head does not fit the budget
    /// (a streamed head is read twice a micro-batch and its loss is accumulated over chunks).
    #[default]
    Auto,
    /// Streamed in chunks of rows through the layers' staging buffers (needs streamed layers).
    On,
    /// Read once into memory (resident).
    Off,
}

impl std::str::FromStr for StreamHead {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(StreamHead::Auto),
            "on" => Ok(StreamHead::On),
            "off" => Ok(StreamHead::Off),
            other => Err(Error::Invalid(format!(
                "--stream-head `{other}`: expected auto, on or off"
            ))),
        }
    }
}

impl std::fmt::Display for StreamHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamHead::Auto => "auto",
            StreamHead::On => "on",
            StreamHead::Off => "off",
        })
    }
}

/// Whether a streamed head can run `cfg`, and if not, why: the KL anchor's loss needs the base
/// and the adapted logits of a token together, which the chunked loss does not provide.
pub fn stream_head_support(cfg: &super::TrainConfig) -> std::result::Result<(), String> {
    if cfg.kl_anchor > 0.0 {
        return Err(format!(
            "--kl-anchor {}: the anchored loss reads the base and the adapted logits of a token              together, which the head's chunks do not give",
            cfg.kl_anchor
        ));
    }
    if cfg.weights == WeightsMode::Map || cfg.lock_weights {
        return Err("the head is streamed only with the layers (--weights stream or auto,                     without --lock-weights)"
            .into());
    }
    Ok(())
}

/// How the layer inputs kept for the backward are stored (`--checkpoint-dtype f32|bf16`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointDtype {
    /// f32: the recompute starts from the forward's exact input.
    #[default]
    F32,
    /// bf16 (half the bytes): the residual stream is rounded to bf16 where a layer begins, in
    /// the forward as in the recompute, so both see the same input (docs/ARCHITECTURE.md).
    Bf16,
}

impl std::str::FromStr for CheckpointDtype {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(CheckpointDtype::F32),
            "bf16" => Ok(CheckpointDtype::Bf16),
            other => Err(Error::Invalid(format!(
                "--checkpoint-dtype `{other}`: expected f32 or bf16"
            ))),
        }
    }
}

impl std::fmt::Display for CheckpointDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CheckpointDtype::F32 => "f32",
            CheckpointDtype::Bf16 => "bf16",
        })
    }
}
