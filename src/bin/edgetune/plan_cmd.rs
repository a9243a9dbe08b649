//! `edgetune plan --model M [--board B | --budget X] [training flags] [--json]`: the memory
//! breakdown of a training run from the GGUF header alone (no tensor data is read), against a
//! budget, with the nearest configurations that fit when it does not. `plan` only reports: it
//! exits 0 whether or not the plan fits (`fits: false` in the JSON); `train` is what refuses.

use std::path::PathBuf;

use edgetune::gguf::GgufFile;
use edgetune::testmodel::{WeightTypes, preset};
use edgetune::train::TrainConfig;
use edgetune::train::budget::{ModelWeights, plan_training_for};
use edgetune::{Error, Result};

use crate::method_args::MethodArgs;
use crate::shape_args::{BudgetArgs, ShapeArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The base model (GGUF); only its header is read.
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Plan a test-model preset instead of a file (tiny, small, llama-3.2-1b, llama-3.1-8b,
    /// llama-3.1-70b), with --type.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// With --preset: the weight types, as for `edgetune testmodel` (q4_0, q4_k_m, q8_0, …).
    #[arg(
        long = "type",
        value_name = "TYPE",
        default_value = "q4_0",
        requires = "preset"
    )]
    weight_type: String,
    #[command(flatten)]
    shape: ShapeArgs,
    #[command(flatten)]
    budget: BudgetArgs,
    /// How training reads the frozen weights: `map` (every page a step reads stays resident),
    /// `stream` (each layer read into one of two staging buffers as it runs; the head once), or
    /// `auto` (mapped unless the budget is below what mapping needs and streaming fits it).
    #[arg(long, value_name = "auto|map|stream", default_value = "auto")]
    weights: edgetune::train::WeightsMode,
    #[command(flatten)]
    method: MethodArgs,
    /// Worker threads (default: the board's cores, else this machine's).
    #[arg(long)]
    threads: Option<usize>,
    /// The training run's gradient clipping (0 = off): with the fused per-layer update it adds
    /// a norm-only pass, which `--fused-update auto` weighs.
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// The dataset, to count its memory (its size only is read; for mtlora its records are
    /// read for their task names, whose count sizes the adapters — without --data, 1 task).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print one JSON object: total_bytes, budget_bytes, fits, board, breakdown.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let mut cfg = TrainConfig {
        threads: args.threads,
        max_grad_norm: args.max_grad_norm,
        ..TrainConfig::default()
    };
    args.shape.apply(&mut cfg)?;
    let board = args.budget.apply(&mut cfg)?;
    cfg.weights = args.weights;
    args.method.apply(&mut cfg)?;
    if let Some(data) = &args.data {
        cfg.data = data.clone();
        if cfg.method.task_routed() {
            cfg = edgetune::train::method_tasks::prepare(&cfg)?.0;
        }
    }
    let model = match (&args.model, &args.preset) {
        (Some(path), _) => {
            cfg.model = path.clone();
            ModelWeights::from_gguf(&GgufFile::open(path)?)?
        }
        (None, Some(name)) => {
            ModelWeights::from_preset(&preset(name)?, WeightTypes::parse(&args.weight_type)?)?
        }
        (None, None) => return Err(Error::Invalid("give --model FILE or --preset NAME".into())),
    };
    let planned = plan_training_for(&model, &cfg)?;
    let b = &planned.breakdown;
    if args.json {
        let doc = serde_json::json!({
            "model": b.model,
            "board": board.as_ref().map(|b| b.name.clone()),
            "total_bytes": b.total_bytes,
            "budget_bytes": b.budget_bytes,
            "fits": b.fits,
            "breakdown": b,
        });
        let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::Invalid(e.to_string()))?;
        println!("{text}");
    } else {
        if let Some(board) = &board {
            println!("board   {} ({})", board.name, board.description);
        }
        print!("{}", b.report());
    }
    Ok(())
}
