//! Small helpers that make a run self-contained without the CLI: a seeded random-weights test
//! model (`edgetune testmodel`) and the synthetic IoT assistant set (`edgetune data synth --set
//! assistant`), for tests, examples and the Flower run.

use std::path::Path;

use edgetune::data::synth::{AssistantSizes, assistant_set};
use edgetune::testmodel::{WeightTypes, preset, write_test_model};
use pyo3::prelude::*;

use crate::err;

/// Writes the test model `preset` (`tiny`, `small`, `llama-3.2-1b`, …) with weights of `type`
/// (`q4_0`, `q8_0`, `q4_k_m`, …) at `path`; the same seed writes the same file.
#[pyfunction]
#[pyo3(signature = (path, preset_name="tiny", weight_type="q4_0", seed=0))]
pub fn testmodel(
    py: Python<'_>,
    path: &str,
    preset_name: &str,
    weight_type: &str,
    seed: u64,
) -> PyResult<()> {
    let p = preset(preset_name).map_err(err)?;
    let types = WeightTypes::parse(weight_type).map_err(err)?;
    py.detach(|| write_test_model(&p, types, seed, Path::new(path)))
        .map_err(err)
}

/// The synthetic IoT assistant set of `seed` as JSON text: `{"train": [chat records],
/// "heldout": [eval cases]}` (the records `edgetune data synth --set assistant` writes).
#[pyfunction]
#[pyo3(signature = (seed=0))]
pub fn assistant_set_json(seed: u64) -> String {
    let set = assistant_set(seed, AssistantSizes::default());
    let train: Vec<serde_json::Value> = set.train.iter().map(|p| p.to_json()).collect();
    let heldout: Vec<serde_json::Value> = set.heldout.iter().map(|c| c.to_json()).collect();
    serde_json::json!({ "train": train, "heldout": heldout }).to_string()
}
