//! Memory: board profiles and budgets (the static plan and the arena come with the memory issue).

pub mod board;

pub use board::{Board, parse_bytes};
