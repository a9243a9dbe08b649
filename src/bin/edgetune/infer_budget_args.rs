//! `--budget SIZE | --board NAME` of the inference commands (`generate`, `perplexity`,
//! `eval`): the
//! run's memory is planned before the weights are loaded (train/budget/infer.rs); with
//! `--weights auto` the layers are streamed when mapping them does not fit the budget and
//! streaming does, and a run that fits neither way is refused with the numbers.

use edgetune::Result;
use edgetune::gguf::GgufFile;
use edgetune::memory::{Board, parse_bytes};
use edgetune::model::stream::StreamOptions;
use edgetune::train::StreamHead;
use edgetune::train::budget::ModelWeights;
use edgetune::train::budget::infer::{InferenceShape, plan_inference};

use crate::backend_args::WeightsArg;

#[derive(clap::Args, Clone, Debug)]
pub struct InferBudgetArgs {
    /// A board profile (orin-nano-4gb, orin-nano-8gb, …, host): its process budget.
    #[arg(long, value_name = "NAME", conflicts_with = "budget")]
    pub board: Option<String>,
    /// The memory budget of the whole process (5.5GiB, 512MiB, bytes): with `--weights auto`
    /// the layers are streamed when mapping them does not fit; a run over it is refused.
    #[arg(long, value_name = "SIZE")]
    pub budget: Option<String>,
    /// With streamed layers, the output head too: `on` in chunks of rows through the staging
    /// buffers (read once per forward; logits bit-identical), `off` resident, `auto` streamed
    /// only when a resident head does not fit the budget.
    #[arg(long, value_name = "auto|on|off", default_value = "auto")]
    pub stream_head: edgetune::train::StreamHead,
}

impl InferBudgetArgs {
    /// The budget in bytes, if one was given.
    fn resolve(&self) -> Result<Option<u64>> {
        if let Some(name) = &self.board {
            return Ok(Some(Board::builtin(name)?.process_budget_bytes));
        }
        self.budget
            .as_deref()
            .map(|s| parse_bytes(s).map_err(|e| edgetune::Error::Invalid(format!("--budget: {e}"))))
            .transpose()
    }

    /// An error when a budget was given: it plans the CPU backend's memory (a device holds the
    /// weights in its own memory; see `train --backend cuda` for a device plan).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub fn cpu_only(&self) -> Result<()> {
        if self.board.is_some() || self.budget.is_some() {
            return Err(edgetune::Error::Invalid(
                "--budget/--board plan the CPU backend's memory; with --backend cuda leave them \
                 out (or run with --backend cpu)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// How the CPU run streams its weights (`None`: mapped): `--weights stream`, or under a
    /// budget the plan's choice for `--weights auto`, the head as `--stream-head` and the plan
    /// say. Over the budget is an error; the plan goes to the log.
    pub fn streams(
        &self,
        file: &GgufFile,
        weights: WeightsArg,
        shape: InferenceShape,
    ) -> Result<Option<StreamOptions>> {
        let head = |on: bool| StreamOptions {
            stream_head: on,
            head_chunk_rows: None,
        };
        let Some(budget) = self.resolve()? else {
            if self.stream_head == StreamHead::On && weights != WeightsArg::Stream {
                return Err(edgetune::Error::Invalid(
                    "--stream-head on streams the head with the layers: add --weights stream"
                        .into(),
                ));
            }
            return Ok(
                (weights == WeightsArg::Stream).then(|| head(self.stream_head == StreamHead::On))
            );
        };
        let model = ModelWeights::from_gguf(file)?;
        let plan = plan_inference(
            &model,
            shape,
            weights.train_mode(),
            self.stream_head,
            Some(budget),
        )?;
        plan.check()?;
        eprintln!("memory plan: {}", plan.summary());
        Ok((plan.weights_mode == "stream").then(|| head(plan.head_streamed)))
    }
}
