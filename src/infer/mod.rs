//! Inference: KV-cache generation with streaming output, sampling, and perplexity.

pub mod generate;
pub mod perplexity;
pub mod sampling;

pub use generate::{GenerateOptions, Generation, StopReason, generate};
pub use perplexity::{Perplexity, perplexity};
pub use sampling::{Sampler, SamplingParams};
