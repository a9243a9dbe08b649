//! Memory: board profiles and budgets (the static plan and the arena come with the memory issue).

pub mod arena;
pub mod board;
pub mod plan;
mod plan_llama;

pub use arena::Arena;
pub use board::{Board, parse_bytes};
pub use plan::{BufferId, BufferRequest, Category, Plan, PlanBuilder};
