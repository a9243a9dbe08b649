//! Memory: the one arena a training step runs in, the static plan that packs its buffers, board
//! profiles, budgets (what a run will hold, refused before anything is allocated) and RSS.

pub mod arena;
pub mod board;
pub mod budget;
mod budget_choose;
pub mod budget_infer;
mod budget_report;
mod budget_stream;
pub mod limits;
pub mod overheads;
pub mod plan;
mod plan_llama;
pub mod rss;
mod suggest;
mod suggest_levers;

pub use arena::Arena;
pub use board::{Board, parse_bytes};
pub use budget::{Breakdown, ModelWeights, TrainingPlan, plan_training, plan_training_for};
pub use plan::{BufferId, BufferRequest, Category, Plan, PlanBuilder};
