//! `edgetune.Model`: an open GGUF model (the C ABI's [`EtModel`]: mapped weights, tokenizer,
//! chat template) — tokenize, detokenize, generate, perplexity, and an adapter to generate
//! with. Every call that runs the model releases the GIL.

use std::path::Path;
use std::sync::Arc;

use edgetune::export;
use edgetune::ffi::model::EtModel;
use edgetune::infer::sampling::SamplingParams;
use edgetune::infer::{GenerateOptions, generate, perplexity::perplexity};
use edgetune::tokenizer::chat_template::PromptFormat;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::{err, invalid};

/// An open model (see `edgetune.Model` in `__init__.py`).
#[pyclass(module = "edgetune._edgetune", frozen)]
pub struct Model {
    inner: EtModel,
    /// The model's chat template (or the fallback), or why it cannot be built.
    chat: Result<PromptFormat, String>,
    path: String,
}

impl Model {
    fn format(&self, template: &str, system: Option<String>) -> PyResult<PromptFormat> {
        let chat = || {
            self.chat
                .clone()
                .map_err(|e| invalid(format!("the model's chat template: {e}")))
        };
        let f = match template {
            "none" => PromptFormat::Plain,
            "alpaca" => PromptFormat::Alpaca,
            "llama3-chat" => PromptFormat::Llama3Chat,
            "auto" => chat()?,
            other => {
                return Err(invalid(format!(
                    "template {other:?}: expected auto, alpaca, llama3-chat or none"
                )));
            }
        };
        match (f, system) {
            (PromptFormat::Chat(t), Some(s)) => Ok(PromptFormat::ChatWithSystem(t, s)),
            (_, Some(_)) => Err(invalid(
                "system: only with the model's chat template (auto)",
            )),
            (f, None) => Ok(f),
        }
    }
}

#[pymethods]
impl Model {
    #[new]
    fn new(py: Python<'_>, path: String) -> PyResult<Model> {
        let inner = py.detach(|| EtModel::open(&path)).map_err(err)?;
        let chat =
            PromptFormat::of_model(inner.file(), inner.tokenizer()).map_err(|e| e.to_string());
        Ok(Model { inner, chat, path })
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// The model's shapes.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let c = self.inner.with_llama(|l| l.config().clone());
        let d = PyDict::new(py);
        d.set_item("n_layer", c.n_layer)?;
        d.set_item("dim", c.dim)?;
        d.set_item("n_head", c.n_head)?;
        d.set_item("n_head_kv", c.n_head_kv)?;
        d.set_item("head_dim", c.head_dim)?;
        d.set_item("ffn", c.ffn)?;
        d.set_item("n_vocab", c.n_vocab)?;
        d.set_item("context_length", c.context_length)?;
        Ok(d)
    }

    #[pyo3(signature = (text, add_bos=None, special=false))]
    fn tokenize(&self, text: &str, add_bos: Option<bool>, special: bool) -> PyResult<Vec<u32>> {
        let tok = self.inner.tokenizer();
        tok.encode(text, add_bos.unwrap_or(tok.add_bos_default()), special)
            .map_err(err)
    }

    fn detokenize(&self, ids: Vec<u32>) -> PyResult<String> {
        self.inner.tokenizer().decode(&ids).map_err(err)
    }

    #[pyo3(signature = (prompt, max_tokens=128, template="auto", system=None, temperature=0.0,
                        top_k=40, top_p=0.95, seed=0))]
    #[allow(clippy::too_many_arguments)]
    fn generate(
        &self,
        py: Python<'_>,
        prompt: &str,
        max_tokens: usize,
        template: &str,
        system: Option<String>,
        temperature: f32,
        top_k: usize,
        top_p: f32,
        seed: u64,
    ) -> PyResult<String> {
        let format = self.format(template, system)?;
        let tok = self.inner.tokenizer();
        let ids = format.encode(tok, prompt).map_err(err)?;
        let opts = GenerateOptions {
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_k,
                top_p,
                seed,
            },
            stop_at_eos: true,
        };
        py.detach(|| {
            self.inner
                .with_llama(|l| generate(l, tok, &ids, &opts, |_| true))
        })
        .map(|g| g.text)
        .map_err(err)
    }

    /// Perplexity of `tokens` exactly as given (no BOS added).
    fn perplexity<'py>(&self, py: Python<'py>, tokens: Vec<u32>) -> PyResult<Bound<'py, PyDict>> {
        let p = py
            .detach(|| {
                self.inner
                    .with_llama(|l| perplexity(l, &tokens, |_, _| Ok(())))
            })
            .map_err(err)?;
        let d = PyDict::new(py);
        d.set_item("tokens", p.tokens)?;
        d.set_item("predicted", p.predicted)?;
        d.set_item("mean_nll", p.mean_nll)?;
        d.set_item("perplexity", p.perplexity)?;
        Ok(d)
    }

    /// Applies the adapter at `path` (PEFT directory, GGUF LoRA, native directory or
    /// checkpoint) to later calls; `None` removes it.
    #[pyo3(signature = (path))]
    fn set_adapter(&self, py: Python<'_>, path: Option<String>) -> PyResult<()> {
        py.detach(|| {
            let set = match path {
                Some(p) => {
                    let config = self.inner.with_llama(|l| l.config().clone());
                    Some(Arc::new(export::load_any(Path::new(&p), &config)?))
                }
                None => None,
            };
            self.inner.with_llama_mut(|l| l.set_adapters(set))
        })
        .map_err(err)
    }

    /// Reads the layers (and with `stream_head` the output head, in chunks) from the file as
    /// they run instead of keeping the mapped weights resident; the same text and logits.
    #[pyo3(signature = (stream_head = false))]
    fn stream_weights(&self, py: Python<'_>, stream_head: bool) -> PyResult<()> {
        py.detach(|| self.inner.stream_weights(stream_head))
            .map_err(err)
    }

    /// The weight stream's reads so far (`None`: mapped weights): `layer_reads`,
    /// `head_chunk_reads`, `bytes_read`.
    fn stream_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(st) = self.inner.stream_stats() else {
            return Ok(None);
        };
        let d = PyDict::new(py);
        d.set_item("layer_reads", st.layer_reads)?;
        d.set_item("head_chunk_reads", st.head_chunk_reads)?;
        d.set_item("bytes_read", st.bytes_read)?;
        Ok(Some(d))
    }
}
