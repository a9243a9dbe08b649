//! Building the adapters of a training method on a model ([`build_adapters`], through
//! the method's registry entry) and the LoRA settings a method trains with. The set itself,
//! its slots and tensor names are `edgetune_core::adapters::set`; a projection's shape and matrix are
//! the model's (`edgetune_core::model::config`, `edgetune_core::model::weights`).

use super::config::{StatePlace, TrainConfig};
use super::method::Method;
use super::methods::Slot;
use edgetune_core::adapters::LoraConfig;
pub use edgetune_core::adapters::set::{
    AdapterSet, LinearShapes, slot_seed, target_index, tensor_name,
};
use edgetune_core::model::{LlamaConfig, LlamaWeights};
pub use edgetune_core::model::{target_matrix, target_shape};
use edgetune_core::{Error, Result};

/// Fresh adapters of `method` on `cfg.lora.targets` of every layer, with `cfg.method_opts`
/// (the `method` argument wins over `cfg.method`). `total_steps` is the run's length
/// (AdaLoRA's budget schedule needs it). `base` gives the mapped weights to the methods
/// that read `Ŵ` (DoRA and HiRA keep a copy, OLoRA and PiSSA decompose it); the others
/// accept `None`. Seeds per slot as [`AdapterSet::new_lora`], so `lora` here builds the
/// same set as `new_lora`. MT-LoRA's tasks are `cfg.method_opts.mtlora_tasks` (the
/// trainer fills them from the data; empty: one task, `default`).
pub fn build_adapters(
    method: Method,
    model: &LlamaConfig,
    cfg: &TrainConfig,
    total_steps: u64,
    seed: u64,
    base: Option<&LlamaWeights<'_>>,
) -> Result<AdapterSet> {
    let lora = method_lora_config(method, &cfg.lora);
    lora.validate()?;
    if let Some(r) = lora.layers {
        r.check(model.n_layer)?;
        if method.spec().behaviour.layer_shortcuts {
            // Its shortcuts sum the adapter inputs of every earlier layer.
            return Err(Error::Invalid(format!(
                "method reslora adapts every layer (its shortcuts span the layers); --layers                      {r} is for the other methods"
            )));
        }
    }
    cfg.method_opts.validate(method, lora.rank)?;
    if method.reads_base() && base.is_none() {
        return Err(Error::Invalid(format!(
            "method {method}: building its adapters needs the base weights"
        )));
    }
    if let Some(w) = base
        && w.layers.len() != model.n_layer
    {
        return Err(Error::Invalid(format!(
            "method {method}: the weights have {} layers, the config {}",
            w.layers.len(),
            model.n_layer
        )));
    }
    let imp = method.spec().imp;
    let mut set = AdapterSet::empty(model.n_layer, lora.clone());
    if cfg.adapter_weights == StatePlace::Disk {
        // Each adapter goes to the file as it is built.
        set.page_params(&cfg.out)?;
    }
    for layer in (0..model.n_layer).filter(|&l| lora.adapts(l)) {
        for &target in &lora.targets {
            let (fan_in, fan_out) = target_shape(model, target);
            let adapter = imp.build(&Slot {
                lora: &lora,
                opts: &cfg.method_opts,
                fan_in,
                fan_out,
                seed: slot_seed(seed, layer, target),
                run_seed: seed,
                total_steps,
                base: base.map(|b| target_matrix(&b.layers[layer], target)),
            })?;
            set.insert(layer, target, adapter)?;
        }
    }
    Ok(set)
}

/// The LoRA settings `method` trains with: rsLoRA sets `rslora`; the others take `lora` as
/// it is (QLoRA's preset is applied to the config beforehand, [`super::method::apply_preset`]).
pub fn method_lora_config(method: Method, lora: &LoraConfig) -> LoraConfig {
    let mut l = lora.clone();
    if method.spec().behaviour.rank_stabilized {
        l.rslora = true;
    }
    l
}
