//! The small choices of a training run's configuration: the optimizer, the learning-rate
//! decay, where AdamW's moments live, and how the frozen weights are read.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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

/// Where AdamW's moments live (`--optimizer-state ram|disk`).
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
