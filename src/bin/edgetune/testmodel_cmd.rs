//! `edgetune testmodel --preset NAME --type TYPE --out FILE [--seed S]`.

use std::path::PathBuf;

use edgetune::Result;
use edgetune::testmodel::{self, WeightTypes};

#[derive(clap::Args)]
pub struct Args {
    /// Model shape: tiny.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Weight type: q4_k_m (Q4_K + Q6_K mix) or one ggml type (f32, f16, bf16, q8_0, q4_0, q4_1,
    /// q5_0, q5_1, q4_k, q5_k, q6_k, iq4_nl).
    #[arg(long = "type", default_value = "q4_k_m")]
    ty: String,
    /// Output GGUF file.
    #[arg(long)]
    out: PathBuf,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: Args) -> Result<()> {
    let preset = testmodel::preset(&args.preset)?;
    let types = WeightTypes::parse(&args.ty)?;
    testmodel::write_test_model(&preset, types, args.seed, &args.out)?;
    eprintln!(
        "wrote {} (preset {}, weights {}, seed {})",
        args.out.display(),
        preset.name,
        args.ty,
        args.seed
    );
    Ok(())
}
