//! `--compute int8|f32`: the arithmetic of the inference forward's quantized projections.
//!
//! Each command picks its default (README, "Inference arithmetic"): int8 where speed is the
//! point (`bench forward`), f32 where the answer or the figure must be the model's best or
//! comparable with exact references and earlier runs (`generate`: on SmolLM2 int8 loses the
//! "Paris" answer, as llama.cpp does; `perplexity`, whose logits dumps the comparison scripts
//! check against PEFT, llama.cpp and f64; `eval`, whose pass rates `train --eval-every` also
//! measures in f32).

use edgetune::quant::Compute;

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ComputeArg {
    /// Activations quantized per block to 8 bits, integer dot products (llama.cpp's arithmetic;
    /// f32 where the CPU lacks the instructions).
    #[default]
    Int8,
    /// Weights converted to f32, activations in f32 (exact up to f32 rounding).
    F32,
}

impl From<ComputeArg> for Compute {
    fn from(c: ComputeArg) -> Compute {
        match c {
            ComputeArg::Int8 => Compute::Int8,
            ComputeArg::F32 => Compute::F32,
        }
    }
}

// Two structs rather than one generic over the default: clap keeps a derived default in a
// static shared by every instance of a generic `Args`.

/// `--compute`, defaulting to int8.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ComputeArgs {
    /// Arithmetic of the quantized projections on the CPU backend: int8 (activations quantized
    /// per block, integer dot products, as llama.cpp) or f32 (weights converted to f32).
    #[arg(long, value_enum, default_value_t = ComputeArg::Int8)]
    pub compute: ComputeArg,
}

impl ComputeArgs {
    pub fn get(&self) -> Compute {
        self.compute.into()
    }
}

/// `--compute`, defaulting to f32.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ComputeArgsF32 {
    /// Arithmetic of the quantized projections on the CPU backend: f32 (weights converted to
    /// f32) or int8 (activations quantized per block, integer dot products, as llama.cpp).
    #[arg(long, value_enum, default_value_t = ComputeArg::F32)]
    pub compute: ComputeArg,
}

impl ComputeArgsF32 {
    pub fn get(&self) -> Compute {
        self.compute.into()
    }
}
