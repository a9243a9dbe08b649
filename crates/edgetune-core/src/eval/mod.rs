//! Measuring adapters: eval suites with checks ([`suite`], [`checks`], [`runner`]), the
//! assistant set's before/after measures ([`assistant`]), the guardrail ([`guard`]), the
//! held-out loss ([`heldout`]) and SVG charts of training runs ([`plot`]). The comparison of
//! training methods built on them is [`crate::compare`].

pub mod assistant;
pub mod checks;
pub mod guard;
pub mod heldout;
pub mod plot;
pub mod runner;
pub mod suite;

pub use crate::tokenizer::chat_template::PromptFormat;
pub use checks::Check;
pub use guard::{Guarded, Hit, Policy, REFUSAL, guard_generation};
pub use heldout::{HeldoutLoss, heldout_loss};
pub use runner::{EvalOptions, EvalReport, Failure, run_suite, run_suite_answers};
pub use suite::{Case, Suite, load_suite, parse_suite};
