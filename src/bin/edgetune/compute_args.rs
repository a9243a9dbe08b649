//! `--compute int8|f32`: the arithmetic of the inference forward's quantized projections.

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

#[derive(clap::Args, Clone, Copy, Debug)]
pub struct ComputeArgs {
    /// Arithmetic of the quantized projections: int8 (activations quantized per block,
    /// integer dot products, as llama.cpp) or f32 (weights converted to f32).
    #[arg(long, value_enum, default_value_t = ComputeArg::Int8)]
    pub compute: ComputeArg,
}

impl ComputeArgs {
    pub fn get(&self) -> Compute {
        self.compute.into()
    }
}
