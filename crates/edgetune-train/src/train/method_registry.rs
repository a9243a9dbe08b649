//! The method registry: one [`MethodSpec`] per fine-tuning method, in [`REGISTRY`], the only
//! list of methods. [`Method::ALL`], the names the CLI and serde take, `edgetune train --help`'s
//! method list, `edgetune compare`'s list and learning rates, and every "which methods can …"
//! question (the device step, `--init-adapter`, fused updates, merge-only export, reading the
//! base, rsLoRA's scale, LoRA+'s learning rate of `B`, MT-LoRA's task routing, ResLoRA's
//! shortcuts, what a checkpoint holds) are read from it. The only code elsewhere that names a
//! method checks that method's own options (`MethodOptions::validate`, AdaLoRA's ranks in
//! `budget/limits.rs`) or applies QLoRA's preset.
//!
//! Adding a method: a variant of [`Method`], its entry here (in the variant's position), its
//! adapter in `crates/edgetune-core/src/adapters/`, and its [`super::methods::MethodImpl`] (building and costing
//! the adapter); docs/ARCHITECTURE.md, "How to add things", lists the rest.
//!
//! # Why the comparison's learning rates differ
//!
//! A comparison runs every method for the same number of steps, so a method whose
//! parametrisation makes the update of `W` small at a given learning rate would be measured
//! half-trained. Each method's [`MethodSpec::compare_lr`] is set so that its effective update is
//! of the order of LoRA's at 2e-4 — except where a larger effective step is the method's own
//! idea (rsLoRA's scale, OLoRA / PiSSA's non-zero start, ResLoRA's shortcut): those keep LoRA's
//! rate, as their papers do, so that what they claim is what is measured. Under AdamW a
//! parameter moves about `lr` per step whatever its gradient's scale, so the argument is about
//! how a step of `lr` in the parameters shows up in `ΔW`.

use super::method::Method;
use super::methods::base_readers::{DoraImpl, HiraImpl, Residual};
use super::methods::scheduled::{AdaLoraImpl, DyLoraImpl, MtLoraImpl};
use super::methods::{IrQlora, LayerImportance, LoraFamily, MethodImpl, ResLoraImpl};

/// LoRA's learning rate, the reference the others are set against (also `edgetune train`'s
/// default).
pub const LORA_LR: f32 = 2e-4;

/// What the rest of the crate needs to know about one method.
#[derive(Clone, Copy)]
pub struct MethodSpec {
    pub method: Method,
    /// The CLI / serde name.
    pub name: &'static str,
    /// One line for `--help` and tables.
    pub summary: &'static str,
    /// Trains plain LoRA pairs (`lora_A`, `lora_B`) with no step-wide state: it may start
    /// from `--init-adapter` and run on the device step.
    pub plain_lora: bool,
    /// Its update is not a plain `B·A` (GGUF/PEFT export refuses it; `edgetune merge` folds it
    /// into a new base).
    pub merge_only: bool,
    /// Building its adapters reads the base weights (the mapped GGUF).
    pub reads_base: bool,
    /// Its update of a layer needs only that layer's gradients (no budget, task masks, rank
    /// sampling or cross-layer state), so the update can be fused into the backward.
    pub per_layer_update: bool,
    /// What sets its training apart beyond its adapter ([`Behaviour::STANDARD`] for most).
    pub behaviour: Behaviour,
    /// Its default peak learning rate in a comparison.
    pub compare_lr: f32,
    /// Why that rate.
    pub compare_lr_why: &'static str,
    /// How it builds its adapters and what they cost.
    pub imp: &'static dyn MethodImpl,
}

/// The few ways a method's training differs outside its adapter, each read where it acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// Scales its update by `alpha/√r` instead of `alpha/r` (rsLoRA).
    pub rank_stabilized: bool,
    /// Trains `lora_B` at the learning rate times `--loraplus-ratio` (LoRA+).
    pub scaled_b_lr: bool,
    /// Routes every row to its task's adapter (MT-LoRA): it needs the data's task names,
    /// reports per-task measures, and takes no replay rows (they belong to no task).
    pub task_routed: bool,
    /// Its adapters take shortcuts from earlier layers' inputs (ResLoRA): it adapts every layer
    /// (`--layers` is refused) and the step holds every layer's adapter inputs (planned).
    pub layer_shortcuts: bool,
    /// Its checkpoint is the adapter alone, which a resume reloads (plain LoRA); every other
    /// method also writes its full state (`method.json`, `method.safetensors`).
    pub adapter_is_state: bool,
}

impl Behaviour {
    /// None of the above.
    pub const STANDARD: Behaviour = Behaviour {
        rank_stabilized: false,
        scaled_b_lr: false,
        task_routed: false,
        layer_shortcuts: false,
        adapter_is_state: false,
    };
}

impl std::fmt::Debug for MethodSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MethodSpec")
            .field("name", &self.name)
            .field("plain_lora", &self.plain_lora)
            .field("merge_only", &self.merge_only)
            .field("reads_base", &self.reads_base)
            .field("per_layer_update", &self.per_layer_update)
            .field("behaviour", &self.behaviour)
            .field("compare_lr", &self.compare_lr)
            .finish_non_exhaustive()
    }
}

/// Every method, in [`Method`]'s declaration order (`REGISTRY[m as usize].method == m`,
/// checked at compile time below).
pub const REGISTRY: [MethodSpec; 15] = [
    MethodSpec {
        method: Method::Lora,
        name: "lora",
        summary: "the reference: ΔW = (alpha/r)·B·A",
        plain_lora: true,
        merge_only: false,
        reads_base: false,
        per_layer_update: true,
        behaviour: Behaviour {
            adapter_is_state: true,
            ..Behaviour::STANDARD
        },
        compare_lr: LORA_LR,
        compare_lr_why: "the reference: the usual rate for r 16, alpha 32 (QLoRA's and PEFT's examples); \
              B starts at 0, so the first steps move B by lr against A's Kaiming entries",
        imp: &LoraFamily,
    },
    MethodSpec {
        method: Method::Rslora,
        name: "rslora",
        summary: "LoRA with the scale alpha/√r",
        plain_lora: true,
        merge_only: false,
        reads_base: false,
        per_layer_update: true,
        behaviour: Behaviour {
            rank_stabilized: true,
            ..Behaviour::STANDARD
        },
        compare_lr: LORA_LR,
        compare_lr_why: "its scale alpha/sqrt(r) (4x LoRA's at r 16) is the method: rsLoRA keeps LoRA's \
              rate so that one rate works at every rank",
        imp: &LoraFamily,
    },
    MethodSpec {
        method: Method::Loraplus,
        name: "loraplus",
        summary: "LoRA with B and the 1-D tensors at lr·ratio",
        plain_lora: true,
        merge_only: false,
        reads_base: false,
        per_layer_update: true,
        behaviour: Behaviour {
            scaled_b_lr: true,
            ..Behaviour::STANDARD
        },
        compare_lr: 1e-4,
        compare_lr_why: "B trains at lr x ratio (16); LoRA+'s authors advise A's rate about half of \
              LoRA's so that B's larger steps stay stable",
        imp: &LoraFamily,
    },
    MethodSpec {
        method: Method::Qlora,
        name: "qlora",
        summary: "QLoRA's reference preset: r 64, alpha 16, dropout 0.1, lr 2e-4 constant, 3 % warmup, max-grad-norm 0.3, weight decay 0; flags left at their defaults take the preset",
        plain_lora: true,
        merge_only: false,
        reads_base: false,
        per_layer_update: true,
        behaviour: Behaviour::STANDARD,
        compare_lr: LORA_LR,
        compare_lr_why: "QLoRA's reference preset (2e-4 constant), the rate its preset sets anyway",
        imp: &LoraFamily,
    },
    MethodSpec {
        method: Method::Dora,
        name: "dora",
        summary: "magnitude + direction; merge-only",
        plain_lora: false,
        merge_only: true,
        reads_base: true,
        per_layer_update: true,
        behaviour: Behaviour::STANDARD,
        compare_lr: LORA_LR,
        compare_lr_why: "the direction is a LoRA branch at LoRA's scale; the magnitude starts at the row \
              norms of the base (order 1), so lr-sized steps are small relative changes; DoRA \
              trains at LoRA's rate",
        imp: &DoraImpl,
    },
    MethodSpec {
        method: Method::Adalora,
        name: "adalora",
        summary: "SVD form P·E·Q with a rank budget",
        plain_lora: false,
        merge_only: false,
        reads_base: false,
        per_layer_update: false,
        behaviour: Behaviour::STANDARD,
        compare_lr: 2e-3,
        compare_lr_why: "E starts at 0 and A, B at N(0, 0.02^2): the first steps move only E, scaled by \
              B.A entries of ~4e-4, about 1/60 of LoRA's first update at equal lr (576 inputs); \
              A and B move once E is not 0 and the update then grows as E.A.B. At 10x LoRA's \
              rate it reaches LoRA's held-out loss within ~60 steps on the test model (at 5x it \
              is still well behind there, and on SmolLM2 after 6 steps had barely moved)",
        imp: &AdaLoraImpl,
    },
    MethodSpec {
        method: Method::Mtlora,
        name: "mtlora",
        summary: "a shared LoRA of --rank plus one LoRA per task of the data's `task` field, each row trained through its task's; export one task with `edgetune export --task NAME`",
        plain_lora: false,
        merge_only: false,
        reads_base: false,
        per_layer_update: false,
        behaviour: Behaviour {
            task_routed: true,
            ..Behaviour::STANDARD
        },
        compare_lr: LORA_LR,
        compare_lr_why: "the shared and the task LoRAs are plain LoRAs at LoRA's scale",
        imp: &MtLoraImpl,
    },
    MethodSpec {
        method: Method::Irqlora,
        name: "irqlora",
        summary: "IR-QLoRA's IEC adapter; make its base with `edgetune quantize --icq`",
        plain_lora: false,
        merge_only: false,
        reads_base: false,
        per_layer_update: true,
        behaviour: Behaviour::STANDARD,
        compare_lr: LORA_LR,
        compare_lr_why: "IEC is a LoRA branch plus two shortcut scalars that start at 0; IR-QLoRA uses \
              QLoRA's settings",
        imp: &IrQlora,
    },
    MethodSpec {
        method: Method::Olora,
        name: "olora",
        summary: "QR init with a frozen correction; exported as a rank-2r LoRA",
        plain_lora: false,
        merge_only: false,
        reads_base: true,
        per_layer_update: true,
        behaviour: Behaviour::STANDARD,
        compare_lr: LORA_LR / 5.0,
        compare_lr_why: "A and B start from the base's QR, not from 0 and Kaiming: their entries carry \
              the base weight's scale, so AdamW's lr-sized steps on them move B.A, and the \
              model, several times further than LoRA's at equal lr. On SmolLM2 (32 steps, the \
              demo's replay and anchor) it kept 1 of 10 general answers at LoRA's rate and 7 at \
              a fifth of it, learning more there (20 % of the held-out prompts against 7 %)",
        imp: &Residual { pissa: false },
    },
    MethodSpec {
        method: Method::Pissa,
        name: "pissa",
        summary: "SVD init with a frozen correction; exported as a rank-2r LoRA",
        plain_lora: false,
        merge_only: false,
        reads_base: true,
        per_layer_update: true,
        behaviour: Behaviour::STANDARD,
        compare_lr: LORA_LR / 5.0,
        compare_lr_why: "A and B start from the base's principal singular components (sqrt of the \
              singular values): as OLoRA, equal-lr steps move the model several times further \
              than LoRA's. PiSSA's paper trains at LoRA's rate; on SmolLM2 (32 steps, replay and \
              anchor) that kept 4 of 10 general answers, a fifth of it 9, with the same \
              held-out progress (15 % against 17 %)",
        imp: &Residual { pissa: true },
    },
    MethodSpec {
        method: Method::Reslora,
        name: "reslora",
        summary: "res_is: each layer's branch also reads the previous layer's module input",
        plain_lora: false,
        merge_only: false,
        reads_base: false,
        per_layer_update: false,
        behaviour: Behaviour {
            layer_shortcuts: true,
            ..Behaviour::STANDARD
        },
        compare_lr: LORA_LR,
        compare_lr_why: "a LoRA branch that also reads the previous layer's input (about twice the input \
              norm): that shortcut is the method's speed-up, trained at LoRA's rate",
        imp: &ResLoraImpl,
    },
    MethodSpec {
        method: Method::Dylora,
        name: "dylora",
        summary: "a rank sampled per step, only its newest component trains",
        plain_lora: false,
        merge_only: false,
        reads_base: false,
        per_layer_update: false,
        behaviour: Behaviour::STANDARD,
        compare_lr: 1e-3,
        compare_lr_why: "frozen updates: each step only the drawn rank's newest component has a gradient, \
              so each of the r components gets one step in r (AdamW's momentum spreads a hit \
              over ~10 steps), and evaluation at the full rank weighs component j by \
              (j+1)/r of its training scale; at 5x LoRA's rate it matches LoRA's held-out \
              loss after 60 steps on the test model",
        imp: &DyLoraImpl { qdylora: false },
    },
    MethodSpec {
        method: Method::Qdylora,
        name: "qdylora",
        summary: "a rank sampled per step, every component below it trains",
        plain_lora: false,
        merge_only: false,
        reads_base: false,
        per_layer_update: false,
        behaviour: Behaviour::STANDARD,
        compare_lr: LORA_LR,
        compare_lr_why: "unfrozen: every component below the drawn rank trains, component j in (r-j)/r of \
              the steps (half on average), which AdamW's per-parameter normalisation mostly \
              absorbs; QDyLoRA uses QLoRA's settings",
        imp: &DyLoraImpl { qdylora: true },
    },
    MethodSpec {
        method: Method::Hira,
        name: "hira",
        summary: "ΔW = Ŵ ⊙ (B·A), Hadamard with the base; merge-only",
        plain_lora: false,
        merge_only: true,
        reads_base: true,
        per_layer_update: true,
        behaviour: Behaviour::STANDARD,
        compare_lr: 2e-3,
        compare_lr_why: "dW = W o (B.A) has no scale: where LoRA multiplies B.A by alpha/r = 2, HiRA \
              multiplies it by the base's entries (RMS about 0.19 in SmolLM2-135M's \
              projections, smaller in larger models), so its update is about 10x smaller at \
              equal lr; at 10x its training loss on SmolLM2 follows LoRA's step for step",
        imp: &HiraImpl,
    },
    MethodSpec {
        method: Method::Layerimp,
        name: "layerimp",
        summary: "LoRA with per-layer EMA gradient weights",
        plain_lora: false,
        merge_only: false,
        reads_base: false,
        per_layer_update: false,
        behaviour: Behaviour::STANDARD,
        compare_lr: LORA_LR,
        compare_lr_why: "LoRA with per-layer gradient weights; AdamW is invariant to a uniform gradient \
              scale, so LoRA's rate",
        imp: &LayerImportance,
    },
];

// Each entry sits at its variant's index, so a lookup is an index.
const _: () = {
    let mut i = 0;
    while i < REGISTRY.len() {
        assert!(REGISTRY[i].method as usize == i);
        i += 1;
    }
};

impl Method {
    /// This method's registry entry.
    pub const fn spec(self) -> &'static MethodSpec {
        &REGISTRY[self as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_lowercase_and_parse_back() {
        for spec in &REGISTRY {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert_eq!(spec.name.parse::<Method>().unwrap(), spec.method);
            assert_eq!(REGISTRY.iter().filter(|s| s.name == spec.name).count(), 1);
            assert!(spec.compare_lr > 0.0 && spec.compare_lr.is_finite());
        }
    }

    #[test]
    fn merge_only_methods_read_the_base_and_plain_lora_is_fusable() {
        for spec in &REGISTRY {
            if spec.merge_only {
                assert!(spec.reads_base, "{}", spec.name);
            }
            if spec.plain_lora {
                assert!(spec.per_layer_update && !spec.merge_only, "{}", spec.name);
            }
        }
    }

    /// The behaviour flags agree with what the rest of the crate assumes of them: rsLoRA's
    /// scale and LoRA+'s learning rates are plain-LoRA variants (the device step runs them);
    /// a checkpoint that is the adapter alone can only hold plain pairs; routing and
    /// shortcuts keep state across a step, so such methods cannot update layer by layer.
    #[test]
    fn behaviour_flags_are_consistent_with_the_method_kinds() {
        for spec in &REGISTRY {
            let n = spec.name;
            let b = spec.behaviour;
            if b.rank_stabilized || b.scaled_b_lr || b.adapter_is_state {
                assert!(spec.plain_lora, "{n}");
            }
            if b.task_routed || b.layer_shortcuts {
                assert!(!spec.plain_lora && !spec.per_layer_update, "{n}");
            }
        }
    }
}
