//! Which backend a command runs on (`--backend cpu|cuda|auto`) and how the choice resolves on
//! this machine: `cpu` always; `cuda` opens the device or fails with an error saying why;
//! `auto` takes the device when there is one and otherwise the CPU, with the reason.
//!
//! Resolution never panics: without the `cuda` feature, or without the driver library, `cuda`
//! is an error and `auto` is the CPU (the reason goes to `log::info!` and is returned for the
//! CLI's one-line notice).

use crate::{Error, Result};

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The CPU reference backend (the default: it runs everywhere and takes adapters).
    #[default]
    Cpu,
    /// The CUDA backend; an error when it cannot run here.
    Cuda,
    /// CUDA when a device can be opened, else the CPU.
    Auto,
}

impl BackendChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Cpu => "cpu",
            BackendChoice::Cuda => "cuda",
            BackendChoice::Auto => "auto",
        }
    }
}

impl std::str::FromStr for BackendChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(BackendChoice::Cpu),
            "cuda" => Ok(BackendChoice::Cuda),
            "auto" => Ok(BackendChoice::Auto),
            other => Err(Error::Invalid(format!(
                "unknown backend `{other}` (expected cpu, cuda or auto)"
            ))),
        }
    }
}

/// The message when this binary has no CUDA backend compiled in.
pub const NOT_BUILT: &str = "this edgetune was built without the `cuda` feature (cargo build --features cuda); use --backend cpu";

/// The outcome of [`resolve`].
pub enum Resolved {
    /// Run on the CPU; `notice` says why when `auto` fell back (for the CLI to print).
    Cpu { notice: Option<String> },
    /// Run on this CUDA backend.
    #[cfg(feature = "cuda")]
    Cuda(super::cuda::CudaBackend),
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resolved::Cpu { notice } => write!(f, "Cpu {{ notice: {notice:?} }}"),
            #[cfg(feature = "cuda")]
            Resolved::Cuda(b) => write!(f, "Cuda({})", b.info().summary()),
        }
    }
}

/// Resolves `choice` on this machine; `open_cuda` opens the device (the CUDA backend's
/// constructor; a parameter so the fallback logic is testable without a device).
pub fn resolve_with<B>(
    choice: BackendChoice,
    open_cuda: impl FnOnce() -> Result<B>,
) -> Result<std::result::Result<B, Option<String>>> {
    match choice {
        BackendChoice::Cpu => Ok(Err(None)),
        BackendChoice::Cuda => open_cuda().map(Ok),
        BackendChoice::Auto => match open_cuda() {
            Ok(b) => Ok(Ok(b)),
            Err(e) => {
                let why = format!("--backend auto: using the CPU ({e})");
                log::info!("{why}");
                Ok(Err(Some(why)))
            }
        },
    }
}

/// Resolves `choice` on this machine (device 0; CUDA weights mode `auto`).
pub fn resolve(choice: BackendChoice) -> Result<Resolved> {
    #[cfg(feature = "cuda")]
    let open = || super::cuda::CudaBackend::new(0);
    #[cfg(not(feature = "cuda"))]
    let open = || -> Result<()> { Err(Error::Invalid(NOT_BUILT.into())) };
    Ok(match resolve_with(choice, open)? {
        #[cfg(feature = "cuda")]
        Ok(b) => Resolved::Cuda(b),
        #[cfg(not(feature = "cuda"))]
        Ok(()) => Resolved::Cpu { notice: None },
        Err(notice) => Resolved::Cpu { notice },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_names() {
        for c in [BackendChoice::Cpu, BackendChoice::Cuda, BackendChoice::Auto] {
            assert_eq!(c.as_str().parse::<BackendChoice>().unwrap(), c);
        }
        assert!(
            "gpu"
                .parse::<BackendChoice>()
                .unwrap_err()
                .to_string()
                .contains("gpu")
        );
    }

    #[test]
    fn auto_falls_back_with_the_reason_and_cuda_fails_with_it() {
        let fail = || -> Result<u8> { Err(Error::Invalid("no device here".into())) };
        let auto = resolve_with(BackendChoice::Auto, fail).unwrap();
        assert!(auto.unwrap_err().unwrap().contains("no device here"));
        let cuda = resolve_with(BackendChoice::Cuda, fail).unwrap_err();
        assert_eq!(cuda.to_string(), "no device here");
        assert_eq!(resolve_with(BackendChoice::Cpu, fail).unwrap(), Err(None));
        let ok = || -> Result<u8> { Ok(7) };
        assert_eq!(resolve_with(BackendChoice::Auto, ok).unwrap(), Ok(7));
        assert_eq!(resolve_with(BackendChoice::Cuda, ok).unwrap(), Ok(7));
    }

    #[test]
    fn resolve_on_this_machine_never_panics() {
        // Without the feature or a device: cpu and auto give the CPU, cuda an error.
        assert!(matches!(
            resolve(BackendChoice::Cpu).unwrap(),
            Resolved::Cpu { notice: None }
        ));
        match resolve(BackendChoice::Auto).unwrap() {
            Resolved::Cpu { notice } => assert!(notice.unwrap().contains("using the CPU")),
            #[cfg(feature = "cuda")]
            Resolved::Cuda(_) => {}
        }
        #[cfg(not(feature = "cuda"))]
        assert_eq!(
            resolve(BackendChoice::Cuda).unwrap_err().to_string(),
            NOT_BUILT
        );
    }
}
