//! `--backend cpu|cuda|auto` and `--weights auto|map|upload`, shared by generate, perplexity,
//! train and bench train. Resolution never panics: `cuda` without the feature or without a
//! driver is an error saying why; `auto` falls back to the CPU and prints a one-line notice.

use clap::ValueEnum;
use edgetune::backend::BackendChoice;
use edgetune::backend::choice::{NOT_BUILT, resolve_with};
use edgetune::{Error, Result};

/// The message for `--backend cuda` on a command whose work runs on the CPU only.
pub const TRAIN_CPU_ONLY: &str =
    "the training step runs on the CPU backend only in this version; use --backend cpu (or auto)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The CPU backend (runs everywhere).
    Cpu,
    /// The CUDA backend (build with --features cuda; needs an NVIDIA driver).
    Cuda,
    /// CUDA when a device can be used, else the CPU (with a notice saying why).
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WeightsArg {
    /// Map in place on integrated GPUs with host registration, else upload.
    Auto,
    /// Read the mapped GGUF in place (cuMemHostRegister, read-only); falls back to upload.
    Map,
    /// Copy the weights to device memory once.
    Upload,
}

#[derive(clap::Args, Clone, Copy, Debug)]
pub struct BackendArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendArg,
    /// How the CUDA backend reads the weights (ignored on the CPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub weights: WeightsArg,
}

/// The backend a command runs on.
pub enum Chosen {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda(edgetune::backend::cuda::CudaBackend),
}

impl BackendArgs {
    fn choice(&self) -> BackendChoice {
        match self.backend {
            BackendArg::Cpu => BackendChoice::Cpu,
            BackendArg::Cuda => BackendChoice::Cuda,
            BackendArg::Auto => BackendChoice::Auto,
        }
    }

    /// Opens the backend asked for (see the module docs); prints the notice of a fallback.
    pub fn resolve(&self) -> Result<Chosen> {
        #[cfg(feature = "cuda")]
        let open = || {
            use edgetune::backend::cuda::{CudaBackend, WeightsMode};
            let mode = match self.weights {
                WeightsArg::Auto => WeightsMode::Auto,
                WeightsArg::Map => WeightsMode::Map,
                WeightsArg::Upload => WeightsMode::Upload,
            };
            CudaBackend::with_weights(0, mode)
        };
        #[cfg(not(feature = "cuda"))]
        let open = || -> Result<()> { Err(Error::Invalid(NOT_BUILT.into())) };
        match resolve_with(self.choice(), open)? {
            #[cfg(feature = "cuda")]
            Ok(b) => {
                eprintln!("edgetune: backend cuda: {}", b.info().summary());
                Ok(Chosen::Cuda(b))
            }
            #[cfg(not(feature = "cuda"))]
            Ok(()) => Ok(Chosen::Cpu),
            Err(notice) => {
                if let Some(n) = notice {
                    eprintln!("edgetune: notice: {n}");
                }
                Ok(Chosen::Cpu)
            }
        }
    }

    /// For commands that run on the CPU only (training): `cuda` is an error, `auto` the CPU
    /// with a notice.
    pub fn require_cpu(&self) -> Result<()> {
        match self.backend {
            BackendArg::Cpu => Ok(()),
            BackendArg::Cuda => Err(Error::Invalid(TRAIN_CPU_ONLY.into())),
            BackendArg::Auto => {
                log::info!("--backend auto: {TRAIN_CPU_ONLY}");
                eprintln!(
                    "edgetune: notice: --backend auto: using the CPU (the training step runs on \
                     the CPU backend only in this version)"
                );
                Ok(())
            }
        }
    }
}

/// Silences the unused constant in builds with the feature.
#[cfg(feature = "cuda")]
const _: &str = NOT_BUILT;
