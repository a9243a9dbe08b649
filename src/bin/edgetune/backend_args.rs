//! `--backend cpu|cuda|auto` and `--weights auto|map|upload|stream`, shared by generate,
//! perplexity, train and bench train. Resolution never panics: `cuda` without the feature or without a
//! driver is an error saying why; `auto` falls back to the CPU and prints a one-line notice.

use clap::ValueEnum;
use edgetune::Result;
use edgetune::backend::BackendChoice;
use edgetune::backend::choice::{NOT_BUILT, resolve_with};

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
    /// CPU training: mapped, unless the budget is below what mapping needs and streaming fits
    /// it. CUDA: map in place on integrated GPUs with host registration, else upload.
    Auto,
    /// Read the mapped GGUF in place (CUDA: cuMemHostRegister, read-only; falls back to upload).
    Map,
    /// CUDA: copy the weights to device memory once.
    Upload,
    /// CPU training: read each layer from the file into one of two staging buffers as it runs
    /// (the next read overlapping the compute), the output head once; memory no longer grows
    /// with the model.
    Stream,
}

impl WeightsArg {
    /// The training step's weights mode (`upload` concerns the CUDA backend only).
    pub fn train_mode(self) -> edgetune::train::WeightsMode {
        use edgetune::train::WeightsMode;
        match self {
            WeightsArg::Auto | WeightsArg::Upload => WeightsMode::Auto,
            WeightsArg::Map => WeightsMode::Map,
            WeightsArg::Stream => WeightsMode::Stream,
        }
    }
}

#[derive(clap::Args, Clone, Copy, Debug)]
pub struct BackendArgs {
    /// Compute backend.
    #[arg(long, value_enum, default_value = "cpu")]
    pub backend: BackendArg,
    /// How the weights are read (see the values; `stream` is for CPU training).
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
                WeightsArg::Stream => {
                    return Err(edgetune::Error::Invalid(
                        "--weights stream: the CUDA backend uploads or maps every layer; \
                         streaming runs on the CPU backend (--backend cpu)"
                            .into(),
                    ));
                }
            };
            CudaBackend::with_weights(0, mode)
        };
        #[cfg(not(feature = "cuda"))]
        let open = || -> Result<()> { Err(edgetune::Error::Invalid(NOT_BUILT.into())) };
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

    /// The device a training run uses: `cpu` the CPU step; `cuda` the device step (an error
    /// saying why when no device can be opened); `auto` the device when there is one and
    /// `lora_family` (the device step trains the plain-LoRA family without dropout), else the
    /// CPU with a notice.
    pub fn train_device(&self, lora_family: bool) -> Result<edgetune::train::engine::Device> {
        use edgetune::train::engine::Device;
        if self.backend == BackendArg::Auto && !lora_family {
            eprintln!(
                "edgetune: notice: --backend auto: using the CPU (the CUDA training step runs \
                 the LoRA family without dropout only)"
            );
            return Ok(Device::Cpu);
        }
        match self.resolve()? {
            Chosen::Cpu => Ok(Device::Cpu),
            #[cfg(feature = "cuda")]
            Chosen::Cuda(b) => Ok(Device::Cuda(b)),
        }
    }
}

/// Silences the unused constant in builds with the feature.
#[cfg(feature = "cuda")]
const _: &str = NOT_BUILT;
