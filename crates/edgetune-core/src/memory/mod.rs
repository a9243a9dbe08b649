//! Memory: the one arena a training step runs in, the static plan that packs its buffers, board
//! profiles and RSS. It uses nothing else of the crate: the budgets that fill a plan with a
//! model's buffers live with training (`train::budget`, `train::plan_llama`).

pub mod arena;
pub mod board;
pub mod plan;
pub mod rss;

pub use arena::Arena;
pub use board::{Board, parse_bytes};
pub use plan::{BufferId, BufferRequest, Category, Plan, PlanBuilder};
