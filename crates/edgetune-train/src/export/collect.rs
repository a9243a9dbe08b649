//! The import side shared by the three formats: gather each adapted linear's `A` and `B` as the
//! file names them, validate them against the base model, and build the [`AdapterSet`].
//!
//! Shapes are row-major in PEFT's convention whatever the file: `A` `[r, in]`, `B` `[out, r]`
//! (a GGUF `lora_a` of ne `[in, r]` is the same bytes). Every check names the file, the tensor
//! as the file spells it, and the numbers:
//! - both halves present, each 2-D, no duplicates;
//! - the layer exists in the base;
//! - `A`'s rank equals `B`'s (a rank mismatch between the halves);
//! - `A`'s `in` and `B`'s `out` equal the base linear's (an adapter for another model);
//! - every value finite.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgetune_core::adapters::AdapterSet;
use edgetune_core::adapters::set::{slot_seed, target_index};
use edgetune_core::adapters::{Lora, LoraConfig, Target};
use edgetune_core::model::LlamaConfig;
use edgetune_core::model::target_shape;
use edgetune_core::{Error, Result};

/// Which factor of `ΔW = s·B·A` a tensor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    A,
    B,
}

/// One tensor as read: the file's name for it, row-major shape, values.
#[derive(Clone, Debug)]
pub struct ReadTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

/// One adapted linear after validation: `a` `[rank, in]`, `b` `[out, rank]`.
#[derive(Clone, Debug)]
pub struct Module {
    pub layer: usize,
    pub target: Target,
    pub rank: usize,
    pub in_f: usize,
    pub out_f: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
    /// The file's name of `A` (for messages).
    pub a_name: String,
}

#[derive(Default)]
struct Pair {
    a: Option<ReadTensor>,
    b: Option<ReadTensor>,
}

/// Gathers tensors by (layer, target), then validates them against a base.
pub struct Collector {
    path: PathBuf,
    pairs: BTreeMap<(usize, usize), (Target, Pair)>,
}

impl Collector {
    /// A collector for the adapter file `path` (used in messages).
    pub fn new(path: &Path) -> Collector {
        Collector {
            path: path.to_path_buf(),
            pairs: BTreeMap::new(),
        }
    }

    fn err(&self, name: &str, what: String) -> Error {
        Error::Tensor {
            path: self.path.clone(),
            name: name.to_string(),
            what,
        }
    }

    /// Adds `t` as `half` of the adapter on `target` of `layer`; a second tensor for the same
    /// place is an error naming both.
    pub fn add(&mut self, layer: usize, target: Target, half: Half, t: ReadTensor) -> Result<()> {
        let (_, pair) = self
            .pairs
            .entry((layer, target_index(target)))
            .or_insert_with(|| (target, Pair::default()));
        let slot = match half {
            Half::A => &mut pair.a,
            Half::B => &mut pair.b,
        };
        if let Some(prev) = slot {
            let prev = prev.name.clone();
            return Err(self.err(
                &t.name,
                format!(
                    "a second lora_{half:?} for blk.{layer}.{} (the first is `{prev}`)",
                    target.gguf_stem()
                ),
            ));
        }
        *slot = Some(t);
        Ok(())
    }

    /// Number of (layer, target) places seen so far.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Checks every pair against `model` (see the module docs), in slot order.
    pub fn validate(self, model: &LlamaConfig) -> Result<Vec<Module>> {
        if self.pairs.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: no LoRA tensors in the file",
                self.path.display()
            )));
        }
        let mut out = Vec::with_capacity(self.pairs.len());
        let Collector { path, pairs } = self;
        for ((layer, _), (target, pair)) in pairs {
            out.push(check_pair(&path, model, layer, target, pair)?);
        }
        Ok(out)
    }
}

/// Validates one pair (see the module docs) and moves its values into a [`Module`].
fn check_pair(
    path: &Path,
    model: &LlamaConfig,
    layer: usize,
    target: Target,
    pair: Pair,
) -> Result<Module> {
    let err = |name: &str, what: String| Error::Tensor {
        path: path.to_path_buf(),
        name: name.to_string(),
        what,
    };
    let stem = target.gguf_stem();
    let (a, b) = match (pair.a, pair.b) {
        (Some(a), Some(b)) => (a, b),
        (Some(t), None) => {
            return Err(err(
                &t.name,
                format!("lora_A of blk.{layer}.{stem} has no lora_B"),
            ));
        }
        (None, Some(t)) => {
            return Err(err(
                &t.name,
                format!("lora_B of blk.{layer}.{stem} has no lora_A"),
            ));
        }
        (None, None) => {
            return Err(Error::Invalid(format!("blk.{layer}.{stem}: empty pair")));
        }
    };
    if layer >= model.n_layer {
        return Err(err(
            &a.name,
            format!(
                "layer {layer}, but the base model has {} layers (an adapter for another model?)",
                model.n_layer
            ),
        ));
    }
    for t in [&a, &b] {
        if t.shape.len() != 2 || t.shape.contains(&0) {
            return Err(err(
                &t.name,
                format!("shape {:?}: expected 2 non-zero dims", t.shape),
            ));
        }
    }
    let (r, in_a) = (a.shape[0], a.shape[1]);
    let (out_b, r_b) = (b.shape[0], b.shape[1]);
    if r != r_b {
        return Err(err(
            &b.name,
            format!(
                "rank mismatch: lora_A `{}` [{r}, {in_a}] has rank {r}, lora_B [{out_b}, {r_b}] has rank {r_b}",
                a.name
            ),
        ));
    }
    let (fan_in, fan_out) = target_shape(model, target);
    if in_a != fan_in || out_b != fan_out {
        let (bad, shape) = if in_a != fan_in {
            (&a, format!("lora_A [{r}, {in_a}]: {in_a} inputs"))
        } else {
            (&b, format!("lora_B [{out_b}, {r}]: {out_b} outputs"))
        };
        return Err(err(
            &bad.name,
            format!(
                "{shape}, but the base's blk.{layer}.{stem} maps {fan_in} → {fan_out} (an adapter for another model?)"
            ),
        ));
    }
    for t in [&a, &b] {
        let n: usize = t.shape.iter().product();
        if t.values.len() != n {
            return Err(err(
                &t.name,
                format!("{} values for shape {:?} ({n})", t.values.len(), t.shape),
            ));
        }
        if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
            return Err(err(
                &t.name,
                format!("value {} at element {i} is not finite", t.values[i]),
            ));
        }
    }
    Ok(Module {
        layer,
        target,
        rank: r,
        in_f: in_a,
        out_f: out_b,
        a: a.values,
        b: b.values,
        a_name: a.name,
    })
}

/// The most common rank among `modules` (the smallest on a tie): the set's nominal rank when a
/// file states none.
pub fn common_rank(modules: &[Module]) -> usize {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for m in modules {
        *counts.entry(m.rank).or_default() += 1;
    }
    counts
        .iter()
        .max_by(|x, y| x.1.cmp(y.1).then(y.0.cmp(x.0)))
        .map_or(1, |(&r, _)| r)
}

/// The targets present, in [`Target::ALL`] order.
pub fn targets_of(modules: &[Module]) -> Vec<Target> {
    Target::ALL
        .into_iter()
        .filter(|t| modules.iter().any(|m| m.target == *t))
        .collect()
}

/// Builds the set: `global` is the set's config, `module_cfg` each module's (its rank and
/// alpha; dropout and rsLoRA normally the global ones). Slot seeds derive from `seed` as in
/// [`AdapterSet::new_lora`], so resumed training sees the same dropout streams.
pub fn build_set(
    model: &LlamaConfig,
    global: LoraConfig,
    modules: Vec<Module>,
    seed: u64,
    mut module_cfg: impl FnMut(&Module) -> Result<LoraConfig>,
) -> Result<AdapterSet> {
    global.validate()?;
    let mut set = AdapterSet::empty(model.n_layer, global);
    for m in modules {
        let cfg = module_cfg(&m)?;
        debug_assert_eq!(cfg.rank, m.rank);
        let mut lora = Lora::new(m.in_f, m.out_f, &cfg, slot_seed(seed, m.layer, m.target))?;
        lora.a_mut().copy_from_slice(&m.a);
        lora.b_mut().copy_from_slice(&m.b);
        set.insert(m.layer, m.target, Box::new(lora))?;
    }
    Ok(set)
}

/// `global` with `rank` replaced (a module of another rank under the same alpha/rsLoRA).
pub fn with_rank(global: &LoraConfig, rank: usize) -> LoraConfig {
    LoraConfig {
        rank,
        ..global.clone()
    }
}
