//! The training-shape and budget flags shared by `edgetune plan` and `edgetune train`
//! (`#[command(flatten)]`): [`ShapeArgs`] sets what sizes a step, [`BudgetArgs`] the memory
//! budget. Every default equals [`TrainConfig::default`] (a test checks it).

use clap::builder::TypedValueParser as _;
use edgetune::adapters::{LayerRange, Target};
use edgetune::memory::{Board, parse_bytes};
use edgetune::train::{OptimizerKind, StatePlace, TrainConfig};
use edgetune::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StatePlaceArg {
    Ram,
    Disk,
}

/// What sizes one training step.
#[derive(Clone, Debug, clap::Args)]
pub struct ShapeArgs {
    /// Tokens per sequence.
    #[arg(long, default_value_t = TrainConfig::default().seq_len)]
    pub seq_len: usize,
    /// Sequences per micro-batch.
    #[arg(long, default_value_t = TrainConfig::default().batch)]
    pub batch: usize,
    /// Micro-batches per optimizer step (gradient accumulation).
    #[arg(long, default_value_t = TrainConfig::default().accum)]
    pub accum: u32,
    /// LoRA rank.
    #[arg(long, default_value_t = TrainConfig::default().lora.rank)]
    pub rank: usize,
    /// LoRA alpha (scale alpha / rank).
    #[arg(long, default_value_t = TrainConfig::default().lora.alpha)]
    pub alpha: f32,
    /// rsLoRA scaling: alpha / √rank.
    #[arg(long)]
    pub rslora: bool,
    /// Dropout on the adapter input, in [0, 1).
    #[arg(long, default_value_t = TrainConfig::default().lora.dropout)]
    pub dropout: f32,
    /// Adapted projections, comma-separated GGUF stems (attn_q, …, ffn_down) or PEFT names
    /// (q_proj, …, down_proj); `all` for the seven (the default).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub targets: Option<Vec<String>>,
    /// Adapt only these layers, FIRST-LAST (e.g. 15-29: the top half of a 30-layer model) or
    /// one layer; the backward stops at the lowest adapted layer, so each step costs less
    /// [default: every layer].
    #[arg(long, value_name = "FIRST-LAST")]
    pub layers: Option<String>,
    /// Tokens per cross-entropy chunk (the [chunk, vocab] logits buffer).
    #[arg(long, default_value_t = TrainConfig::default().ce_chunk)]
    pub ce_chunk: usize,
    /// Keep every layer's activations instead of recomputing them from layer inputs.
    #[arg(long)]
    pub no_checkpointing: bool,
    /// How the layer inputs kept for the backward are stored: f32, or bf16 (half the bytes;
    /// the residual stream is then rounded to bf16 where each layer begins).
    #[arg(long, value_name = "f32|bf16", default_value = "f32")]
    pub checkpoint_dtype: edgetune::train::CheckpointDtype,
    /// Where the layer inputs kept for the backward live: ram (the arena), or disk (a file in
    /// the run directory, written after each layer's forward and read at its recompute).
    #[arg(long, value_enum, default_value_t = StatePlaceArg::Ram)]
    pub checkpoints_on: StatePlaceArg,
    /// Where the adapters' f32 weights live: ram, or disk (a file in the run directory, each
    /// layer's paged in while it runs and written back after; bit-identical).
    #[arg(long, value_enum, default_value_t = StatePlaceArg::Ram)]
    pub adapter_weights: StatePlaceArg,
    /// The optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerArg::Adamw)]
    pub optimizer: OptimizerArg,
    /// Where AdamW's moments live: RAM, or a file-backed map in the run directory.
    #[arg(long, value_enum, default_value_t = StatePlaceArg::Ram)]
    pub optimizer_state: StatePlaceArg,
    /// Width of AdamW's moments: 32 (f32) or 8 (blockwise 8-bit).
    #[arg(long, default_value_t = TrainConfig::default().optimizer_state_bits,
          value_parser = clap::builder::PossibleValuesParser::new(["32", "8"])
              .map(|s| s.parse::<u32>().unwrap_or(32)))]
    pub optimizer_state_bits: u32,
}

impl ShapeArgs {
    /// Writes the flags into `cfg`; errors name a bad target or a setting out of range.
    pub fn apply(&self, cfg: &mut TrainConfig) -> Result<()> {
        cfg.seq_len = self.seq_len;
        cfg.batch = self.batch;
        cfg.accum = self.accum;
        cfg.lora.rank = self.rank;
        cfg.lora.alpha = self.alpha;
        cfg.lora.rslora = self.rslora;
        cfg.lora.dropout = self.dropout;
        if let Some(list) = &self.targets {
            cfg.lora.targets = parse_targets(list)?;
        }
        if let Some(r) = &self.layers {
            cfg.lora.layers = Some(LayerRange::parse(r)?);
        }
        cfg.ce_chunk = self.ce_chunk;
        cfg.checkpointing = !self.no_checkpointing;
        cfg.checkpoint_dtype = self.checkpoint_dtype;
        cfg.checkpoints_on = match self.checkpoints_on {
            StatePlaceArg::Ram => StatePlace::Ram,
            StatePlaceArg::Disk => StatePlace::Disk,
        };
        cfg.optimizer = match self.optimizer {
            OptimizerArg::Adamw => OptimizerKind::AdamW,
            OptimizerArg::Sgd => OptimizerKind::Sgd,
        };
        cfg.adapter_weights = match self.adapter_weights {
            StatePlaceArg::Ram => StatePlace::Ram,
            StatePlaceArg::Disk => StatePlace::Disk,
        };
        cfg.optimizer_state = match self.optimizer_state {
            StatePlaceArg::Ram => StatePlace::Ram,
            StatePlaceArg::Disk => StatePlace::Disk,
        };
        cfg.optimizer_state_bits = self.optimizer_state_bits;
        cfg.lora.validate()?;
        for (flag, v) in [
            ("--seq-len", self.seq_len),
            ("--batch", self.batch),
            ("--accum", self.accum as usize),
            ("--ce-chunk", self.ce_chunk),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("{flag} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// Targets in [`Target::ALL`] order, without repeats; `all` means the seven.
fn parse_targets(list: &[String]) -> Result<Vec<Target>> {
    let mut picked = Vec::new();
    for name in list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()) {
        if name == "all" {
            picked.extend(Target::ALL);
        } else {
            picked.push(name.parse::<Target>()?);
        }
    }
    if picked.is_empty() {
        return Err(Error::Invalid("--targets: no projection given".into()));
    }
    Ok(Target::ALL
        .into_iter()
        .filter(|t| picked.contains(t))
        .collect())
}

/// The memory budget: a board profile's process budget, or a size.
#[derive(Clone, Debug, clap::Args)]
pub struct BudgetArgs {
    /// A board profile (orin-nano-4gb, orin-nano-8gb, orin-nano-super-8gb, orin-nx-16gb,
    /// agx-orin-64gb, xavier-nx-8gb, host): its process budget, its CPU cores for the thread
    /// count, and its storage read speed for a streamed step's I/O estimate.
    #[arg(long, value_name = "NAME", conflicts_with = "budget")]
    pub board: Option<String>,
    /// The memory budget of the whole process (5.5GiB, 6GB, 512MiB, bytes).
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<String>,
    /// Lock the mapped weights in memory (mlock; needs RLIMIT_MEMLOCK ≥ the model's size).
    #[arg(long)]
    pub lock_weights: bool,
    /// When the optimizer updates a layer's adapters: `on` right after that layer's backward,
    /// so only one layer's gradients exist at a time (one micro-batch a step; with clipping a
    /// norm-only forward and backward runs first, doubling the compute); `off` after the whole
    /// backward; `auto` on when the layers are streamed (with clipping, only when the unfused
    /// step does not fit).
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    pub fused_update: edgetune::train::FusedUpdate,
    /// Where the output head is when the layers are streamed: `on` streamed in chunks of rows
    /// through the layers' staging buffers (read twice a micro-batch; not with --kl-anchor),
    /// `off` read once and resident, `auto` streamed only when a resident head does not fit.
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    pub stream_head: edgetune::train::StreamHead,
}

impl BudgetArgs {
    /// The board profile, if one was named (an unknown name is an error listing the known).
    pub fn board(&self) -> Result<Option<Board>> {
        self.board.as_deref().map(Board::builtin).transpose()
    }

    /// The budget in bytes: the board's process budget, or `--budget`, or `None`.
    pub fn resolve(&self) -> Result<Option<u64>> {
        if let Some(board) = self.board()? {
            return Ok(Some(board.process_budget_bytes));
        }
        self.budget
            .as_deref()
            .map(|s| parse_bytes(s).map_err(|e| Error::Invalid(format!("--budget: {e}"))))
            .transpose()
    }

    /// Sets `cfg.budget_bytes`, `cfg.lock_weights`, `cfg.fused_update` and `cfg.stream_head`,
    /// and the thread count from the board's cores when none was set; returns the board.
    pub fn apply(&self, cfg: &mut TrainConfig) -> Result<Option<Board>> {
        let board = self.board()?;
        cfg.budget_bytes = match &board {
            Some(b) => Some(b.process_budget_bytes),
            None => self.resolve()?,
        };
        cfg.lock_weights = self.lock_weights;
        cfg.fused_update = self.fused_update;
        cfg.stream_head = self.stream_head;
        cfg.storage_read_bytes_per_s = board
            .as_ref()
            .and_then(|b| b.storage_read_mb_s)
            .map(|mb| mb * 1e6);
        if let (Some(b), None) = (&board, cfg.threads) {
            cfg.threads = Some(b.cpu_cores);
        }
        Ok(board)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        budget: BudgetArgs,
    }

    #[test]
    fn defaults_equal_the_train_config_defaults() {
        let cli = Cli::try_parse_from(["t"]).unwrap();
        let mut cfg = TrainConfig::default();
        cli.shape.apply(&mut cfg).unwrap();
        cli.budget.apply(&mut cfg).unwrap();
        assert_eq!(cfg, TrainConfig::default());
    }

    #[test]
    fn flags_reach_the_config() {
        let cli = Cli::try_parse_from([
            "t",
            "--seq-len",
            "512",
            "--rank",
            "4",
            "--targets",
            "v_proj,attn_q",
            "--no-checkpointing",
            "--optimizer-state",
            "disk",
            "--optimizer-state-bits",
            "8",
            "--adapter-weights",
            "disk",
            "--board",
            "orin-nano-8gb",
        ])
        .unwrap();
        let mut cfg = TrainConfig::default();
        cli.shape.apply(&mut cfg).unwrap();
        let board = cli.budget.apply(&mut cfg).unwrap().unwrap();
        assert_eq!(cfg.seq_len, 512);
        assert_eq!(cfg.lora.rank, 4);
        assert_eq!(cfg.lora.targets, vec![Target::AttnQ, Target::AttnV]);
        assert!(!cfg.checkpointing);
        assert_eq!(cfg.optimizer_state, StatePlace::Disk);
        assert_eq!(cfg.optimizer_state_bits, 8);
        assert_eq!(cfg.adapter_weights, StatePlace::Disk);
        assert_eq!(cfg.budget_bytes, Some(6 << 30));
        assert_eq!(cfg.threads, Some(board.cpu_cores));

        assert!(Cli::try_parse_from(["t", "--optimizer-state-bits", "4"]).is_err());
        assert!(Cli::try_parse_from(["t", "--board", "x", "--budget", "1G"]).is_err());
        let cli = Cli::try_parse_from(["t", "--targets", "qq_proj"]).unwrap();
        let e = cli.shape.apply(&mut cfg).unwrap_err().to_string();
        assert!(e.contains("qq_proj"), "{e}");
        let cli = Cli::try_parse_from(["t", "--budget", "5.5GiB"]).unwrap();
        assert_eq!(cli.budget.resolve().unwrap(), Some(5_905_580_032));
        let cli = Cli::try_parse_from(["t", "--board", "orin-mega"]).unwrap();
        assert!(
            cli.budget
                .resolve()
                .unwrap_err()
                .to_string()
                .contains("orin-nano-8gb")
        );
    }
}
