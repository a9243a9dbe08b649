//! `edgetune._edgetune`: the native half of the Python package — [`model::Model`] (tokenize,
//! generate, perplexity), [`trainer::Trainer`] (steps, checkpoints, exports, the adapter as
//! NumPy arrays by PEFT tensor name), the memory plan and a fresh adapter. The Python half
//! (`edgetune/__init__.py`) maps the CLI's flag names to the configuration and holds the
//! docstrings users read; every library error becomes `edgetune.EdgetuneError` (or its
//! subclass `OverBudget`, `BadInput`, `Unsupported`, `NonFinite`) with the library's message.

mod adapter;
mod config;
mod data;
mod model;
mod tools;
mod trainer;

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _edgetune,
    EdgetuneError,
    PyException,
    "An error from the edgetune library (invalid argument, unreadable file, model format, …); \
     the message is the library's."
);
create_exception!(
    _edgetune,
    Cancelled,
    EdgetuneError,
    "The progress callback asked to stop."
);

create_exception!(
    _edgetune,
    OverBudget,
    EdgetuneError,
    "The memory plan does not fit the budget; the message has the breakdown and the \
     configurations that would fit. Nothing was allocated."
);
create_exception!(
    _edgetune,
    BadInput,
    EdgetuneError,
    "A malformed record in an input file (a dataset line, an eval case); the message names the \
     file and the line."
);
create_exception!(
    _edgetune,
    Unsupported,
    EdgetuneError,
    "Valid, but not something this build or engine does; the message says what would work."
);
create_exception!(
    _edgetune,
    NonFinite,
    EdgetuneError,
    "A computation gave NaN or Inf (a loss, a gradient, logits); nothing of that step was applied."
);

/// A library error as a Python exception, with the library's message: the cases a caller acts
/// on have their own subclass of `EdgetuneError`.
pub(crate) fn err(e: edgetune::Error) -> PyErr {
    let msg = e.to_string();
    match e {
        edgetune::Error::OverBudget { .. } => OverBudget::new_err(msg),
        edgetune::Error::BadInput { .. } => BadInput::new_err(msg),
        edgetune::Error::Unsupported(_) => Unsupported::new_err(msg),
        edgetune::Error::NonFinite(_) => NonFinite::new_err(msg),
        _ => EdgetuneError::new_err(msg),
    }
}

/// An invalid argument found on this side of the boundary.
pub(crate) fn invalid(msg: impl Into<String>) -> PyErr {
    EdgetuneError::new_err(msg.into())
}

/// The memory plan of a training run as a JSON text (`edgetune plan --json`'s numbers): the
/// configuration is the JSON of `TrainConfig` (see `config.rs`); `model_path` overrides its
/// `model`. Reads only the model's header.
#[pyfunction]
#[pyo3(signature = (config_json, model_path=None))]
fn plan_json(py: Python<'_>, config_json: &str, model_path: Option<String>) -> PyResult<String> {
    let cfg = config::from_json(config_json)?;
    py.detach(|| {
        let path = model_path.as_deref().map(std::path::Path::new);
        edgetune::ffi::plan::plan_report(path, &cfg).map(|v| v.to_string())
    })
    .map_err(err)
}

/// The JSON of the full `TrainConfig` the CLI-style configuration `config_json` maps to
/// (every default filled in), for inspection.
#[pyfunction]
fn resolve_config(config_json: &str) -> PyResult<String> {
    let cfg = config::from_json(config_json)?;
    serde_json::to_string(&cfg).map_err(|e| invalid(format!("configuration: {e}")))
}

#[pymodule]
fn _edgetune(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("EdgetuneError", py.get_type::<EdgetuneError>())?;
    m.add("Cancelled", py.get_type::<Cancelled>())?;
    m.add("OverBudget", py.get_type::<OverBudget>())?;
    m.add("BadInput", py.get_type::<BadInput>())?;
    m.add("Unsupported", py.get_type::<Unsupported>())?;
    m.add("NonFinite", py.get_type::<NonFinite>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(plan_json, m)?)?;
    m.add_function(wrap_pyfunction!(resolve_config, m)?)?;
    m.add_function(wrap_pyfunction!(adapter::init_adapter, m)?)?;
    m.add_function(wrap_pyfunction!(adapter::export_adapter, m)?)?;
    m.add_function(wrap_pyfunction!(tools::testmodel, m)?)?;
    m.add_function(wrap_pyfunction!(tools::assistant_set_json, m)?)?;
    m.add_class::<model::Model>()?;
    m.add_class::<trainer::Trainer>()?;
    Ok(())
}
