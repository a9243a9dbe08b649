//! TEMPORARY (replaced by the budget helper's version at merge).
use edgetune::Result;
use edgetune::adapters::Target;
use edgetune::train::{OptimizerKind, StatePlace, TrainConfig};

#[derive(clap::Args)]
pub struct ShapeArgs {
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    accum: u32,
    #[arg(long, default_value_t = 16)]
    rank: usize,
    #[arg(long, default_value_t = 32.0)]
    alpha: f32,
    #[arg(long)]
    rslora: bool,
    #[arg(long, default_value_t = 0.0)]
    dropout: f32,
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    #[arg(long, default_value_t = 64)]
    ce_chunk: usize,
    #[arg(long)]
    no_checkpointing: bool,
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    #[arg(long, default_value = "ram")]
    optimizer_state: String,
    #[arg(long, default_value_t = 32)]
    optimizer_state_bits: u32,
}
impl ShapeArgs {
    pub fn apply(&self, c: &mut TrainConfig) -> Result<()> {
        c.seq_len = self.seq_len;
        c.batch = self.batch;
        c.accum = self.accum;
        c.lora.rank = self.rank;
        c.lora.alpha = self.alpha;
        c.lora.rslora = self.rslora;
        c.lora.dropout = self.dropout;
        if let Some(t) = &self.targets {
            c.lora.targets = t
                .iter()
                .map(|s| s.parse::<Target>())
                .collect::<Result<_>>()?;
        }
        c.ce_chunk = self.ce_chunk;
        c.checkpointing = !self.no_checkpointing;
        c.optimizer = if self.optimizer == "sgd" {
            OptimizerKind::Sgd
        } else {
            OptimizerKind::AdamW
        };
        c.optimizer_state = if self.optimizer_state == "disk" {
            StatePlace::Disk
        } else {
            StatePlace::Ram
        };
        c.optimizer_state_bits = self.optimizer_state_bits;
        Ok(())
    }
}
#[derive(clap::Args)]
pub struct BudgetArgs {
    #[arg(long)]
    pub lock_weights: bool,
}
impl BudgetArgs {
    pub fn resolve(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}
