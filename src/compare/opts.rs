//! `edgetune compare`'s per-method settings: each method's default learning rate
//! ([`DEFAULT_LRS`], with the reason for each) and the `--method-opt METHOD:FLAG=VALUE` flags
//! passed through to one method's `edgetune train` run ([`MethodOpt`], [`TrainFlags`]).
//!
//! # Why the learning rates differ
//!
//! A comparison runs every method for the same number of steps, so a method whose
//! parametrisation makes the update of `W` small at a given learning rate would be measured
//! half-trained. The table sets each method's rate so that its effective update is of the order
//! of LoRA's at 2e-4 — except where a larger effective step is the method's own idea (rsLoRA's
//! scale, OLoRA / PiSSA's non-zero start, ResLoRA's shortcut): those keep LoRA's rate, as their
//! papers do, so that what they claim is what is measured. Under AdamW a parameter moves about
//! `lr` per step whatever its gradient's scale, so the argument is about how a step of `lr` in
//! the parameters shows up in `ΔW`.

use std::str::FromStr;

use crate::{Error, Result};

use super::result::ALL_METHODS;

/// One method's default learning rate and why.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LrDefault {
    pub method: &'static str,
    pub lr: f32,
    pub why: &'static str,
}

/// LoRA's rate, the reference the others are set against (also `edgetune train`'s default).
pub const LORA_LR: f32 = 2e-4;

/// Each method's default learning rate in a comparison, in [`ALL_METHODS`]'s order.
pub const DEFAULT_LRS: [LrDefault; 15] = [
    LrDefault {
        method: "lora",
        lr: LORA_LR,
        why: "the reference: the usual rate for r 16, alpha 32 (QLoRA's and PEFT's examples); \
              B starts at 0, so the first steps move B by lr against A's Kaiming entries",
    },
    LrDefault {
        method: "rslora",
        lr: LORA_LR,
        why: "its scale alpha/sqrt(r) (4x LoRA's at r 16) is the method: rsLoRA keeps LoRA's \
              rate so that one rate works at every rank",
    },
    LrDefault {
        method: "loraplus",
        lr: 1e-4,
        why: "B trains at lr x ratio (16); LoRA+'s authors advise A's rate about half of \
              LoRA's so that B's larger steps stay stable",
    },
    LrDefault {
        method: "qlora",
        lr: LORA_LR,
        why: "QLoRA's reference preset (2e-4 constant), the rate its preset sets anyway",
    },
    LrDefault {
        method: "dora",
        lr: LORA_LR,
        why: "the direction is a LoRA branch at LoRA's scale; the magnitude starts at the row \
              norms of the base (order 1), so lr-sized steps are small relative changes; DoRA \
              trains at LoRA's rate",
    },
    LrDefault {
        method: "adalora",
        lr: 2e-3,
        why: "E starts at 0 and A, B at N(0, 0.02^2): the first steps move only E, scaled by \
              B.A entries of ~4e-4, about 1/60 of LoRA's first update at equal lr (576 inputs); \
              A and B move once E is not 0 and the update then grows as E.A.B. At 10x LoRA's \
              rate it reaches LoRA's held-out loss within ~60 steps on the test model (at 5x it \
              is still well behind there, and on SmolLM2 after 6 steps had barely moved)",
    },
    LrDefault {
        method: "mtlora",
        lr: LORA_LR,
        why: "the shared and the task LoRAs are plain LoRAs at LoRA's scale",
    },
    LrDefault {
        method: "irqlora",
        lr: LORA_LR,
        why: "IEC is a LoRA branch plus two shortcut scalars that start at 0; IR-QLoRA uses \
              QLoRA's settings",
    },
    LrDefault {
        method: "olora",
        lr: LORA_LR / 5.0,
        why: "A and B start from the base's QR, not from 0 and Kaiming: their entries carry \
              the base weight's scale, so AdamW's lr-sized steps on them move B.A, and the \
              model, several times further than LoRA's at equal lr. On SmolLM2 (32 steps, the \
              demo's replay and anchor) it kept 1 of 10 general answers at LoRA's rate and 7 at \
              a fifth of it, learning more there (20 % of the held-out prompts against 7 %)",
    },
    LrDefault {
        method: "pissa",
        lr: LORA_LR / 5.0,
        why: "A and B start from the base's principal singular components (sqrt of the \
              singular values): as OLoRA, equal-lr steps move the model several times further \
              than LoRA's. PiSSA's paper trains at LoRA's rate; on SmolLM2 (32 steps, replay and \
              anchor) that kept 4 of 10 general answers, a fifth of it 9, with the same \
              held-out progress (15 % against 17 %)",
    },
    LrDefault {
        method: "reslora",
        lr: LORA_LR,
        why: "a LoRA branch that also reads the previous layer's input (about twice the input \
              norm): that shortcut is the method's speed-up, trained at LoRA's rate",
    },
    LrDefault {
        method: "dylora",
        lr: 1e-3,
        why: "frozen updates: each step only the drawn rank's newest component has a gradient, \
              so each of the r components gets one step in r (AdamW's momentum spreads a hit \
              over ~10 steps), and evaluation at the full rank weighs component j by \
              (j+1)/r of its training scale; at 5x LoRA's rate it matches LoRA's held-out \
              loss after 60 steps on the test model",
    },
    LrDefault {
        method: "qdylora",
        lr: LORA_LR,
        why: "unfrozen: every component below the drawn rank trains, component j in (r-j)/r of \
              the steps (half on average), which AdamW's per-parameter normalisation mostly \
              absorbs; QDyLoRA uses QLoRA's settings",
    },
    LrDefault {
        method: "hira",
        lr: 2e-3,
        why: "dW = W o (B.A) has no scale: where LoRA multiplies B.A by alpha/r = 2, HiRA \
              multiplies it by the base's entries (RMS about 0.19 in SmolLM2-135M's \
              projections, smaller in larger models), so its update is about 10x smaller at \
              equal lr; at 10x its training loss on SmolLM2 follows LoRA's step for step",
    },
    LrDefault {
        method: "layerimp",
        lr: LORA_LR,
        why: "LoRA with per-layer gradient weights; AdamW is invariant to a uniform gradient \
              scale, so LoRA's rate",
    },
];

/// The default learning rate of `method` in a comparison ([`DEFAULT_LRS`]).
pub fn default_lr(method: &str) -> Result<f32> {
    DEFAULT_LRS
        .iter()
        .find(|d| d.method == method)
        .map(|d| d.lr)
        .ok_or_else(|| unknown_method("learning rate", method))
}

fn unknown_method(what: &str, name: &str) -> Error {
    Error::Invalid(format!(
        "{what}: unknown method `{name}` (known: {})",
        ALL_METHODS.join(", ")
    ))
}

/// The `METHOD` of a `--method-opt` that applies to every method (`all:pack`); a method's own
/// `--method-opt` of the same flag wins over it.
pub const ALL: &str = "all";

/// Flags of `edgetune train` that a comparison sets itself and a `--method-opt` cannot change:
/// the run's files and method are the comparison's, and the measures read them.
pub const RESERVED_FLAGS: [&str; 10] = [
    "model",
    "data",
    "out",
    "method",
    "json",
    "resume",
    "format",
    "init-adapter",
    "overwrite",
    "resume-fallback",
];

/// `--method-opt METHOD:FLAG=VALUE` (or `METHOD:FLAG` for a switch): one `edgetune train` flag
/// for one method's run, or for every method's with `METHOD` = [`ALL`]. `FLAG` is the long flag
/// with or without its leading `--`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodOpt {
    /// A method name, or [`ALL`].
    pub method: String,
    /// Without the leading `--`.
    pub flag: String,
    pub value: Option<String>,
}

impl FromStr for MethodOpt {
    type Err = Error;

    fn from_str(s: &str) -> Result<MethodOpt> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "--method-opt {s:?}: {why} (expected METHOD:FLAG=VALUE or METHOD:FLAG, e.g. \
                 adalora:adalora-target-r=8)"
            ))
        };
        let (method, rest) = s.split_once(':').ok_or_else(|| bad("no `:`"))?;
        let method = method.trim().to_ascii_lowercase();
        if method != ALL && !ALL_METHODS.contains(&method.as_str()) {
            return Err(unknown_method(&format!("--method-opt {s:?}"), &method));
        }
        let (flag, value) = match rest.split_once('=') {
            Some((f, v)) => (f, Some(v.trim().to_owned())),
            None => (rest, None),
        };
        let flag = flag.trim().trim_start_matches("--").to_owned();
        let well_formed = flag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if flag.is_empty() || !well_formed || flag.starts_with('-') {
            return Err(bad(
                "the flag must be a long flag name (lowercase, digits, `-`)",
            ));
        }
        if RESERVED_FLAGS.contains(&flag.as_str()) {
            return Err(bad(&format!("--{flag} is set by compare itself")));
        }
        Ok(MethodOpt {
            method,
            flag,
            value,
        })
    }
}

/// The flags of one method's `edgetune train` run, in order, each flag once: the comparison's
/// common flags, then the method's `--method-opt`s, which replace a common flag of the same
/// name (a repeated flag would be an error in `train`) and add the others.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrainFlags {
    flags: Vec<(String, Option<String>)>,
}

impl TrainFlags {
    pub fn new() -> TrainFlags {
        TrainFlags::default()
    }

    /// Sets `--flag value` (or the switch `--flag`), replacing an earlier value.
    pub fn set(&mut self, flag: &str, value: Option<String>) {
        match self.flags.iter_mut().find(|(f, _)| f == flag) {
            Some(slot) => slot.1 = value,
            None => self.flags.push((flag.to_owned(), value)),
        }
    }

    /// Applies the `opts` of `method`: first those for [`ALL`], then its own (the others are
    /// skipped).
    pub fn apply(&mut self, method: &str, opts: &[MethodOpt]) {
        for o in applying(method, opts) {
            self.set(&o.flag, o.value.clone());
        }
    }

    /// The value of `--flag`, if set with one.
    pub fn get(&self, flag: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(f, _)| f == flag)
            .and_then(|(_, v)| v.as_deref())
    }

    /// The command-line arguments: `--flag value` pairs and `--switch`es.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::with_capacity(self.flags.len() * 2);
        for (flag, value) in &self.flags {
            args.push(format!("--{flag}"));
            if let Some(v) = value {
                args.push(v.clone());
            }
        }
        args
    }
}

/// The `--method-opt`s that reach `method`'s run, in the order they apply: [`ALL`]'s, then its
/// own.
fn applying<'a>(method: &'a str, opts: &'a [MethodOpt]) -> impl Iterator<Item = &'a MethodOpt> {
    let of = move |m: &'a str| opts.iter().filter(move |o| o.method == m);
    of(ALL).chain(of(method))
}

/// The `--method-opt`s that reach `method`'s run as `--flag[=value]` strings (recorded in
/// `compare.json`).
pub fn opts_of(method: &str, opts: &[MethodOpt]) -> Vec<String> {
    applying(method, opts)
        .map(|o| match &o.value {
            Some(v) => format!("--{}={v}", o.flag),
            None => format!("--{}", o.flag),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_a_positive_rate_in_the_methods_order() {
        let names: Vec<&str> = DEFAULT_LRS.iter().map(|d| d.method).collect();
        assert_eq!(names, ALL_METHODS);
        for d in DEFAULT_LRS {
            assert!(d.lr.is_finite() && d.lr > 0.0 && d.lr < 0.1, "{d:?}");
            assert!(!d.why.is_empty(), "{}", d.method);
            assert_eq!(default_lr(d.method).unwrap(), d.lr);
        }
        assert_eq!(default_lr("lora").unwrap(), LORA_LR);
        // The two whose parametrisation shrinks the update get more than LoRA.
        assert!(default_lr("adalora").unwrap() > LORA_LR);
        assert!(default_lr("hira").unwrap() > LORA_LR);
        // The two whose factors start at the base weight's scale get less.
        assert!(default_lr("pissa").unwrap() < LORA_LR);
        assert!(default_lr("olora").unwrap() < LORA_LR);
        let e = default_lr("lorax").unwrap_err().to_string();
        assert!(e.contains("lorax") && e.contains("hira"), "{e}");
    }

    #[test]
    fn method_opts_parse_with_or_without_dashes_and_values() {
        let o: MethodOpt = "adalora:adalora-target-r=8".parse().unwrap();
        assert_eq!(
            o,
            MethodOpt {
                method: "adalora".into(),
                flag: "adalora-target-r".into(),
                value: Some("8".into()),
            }
        );
        let o: MethodOpt = "MTLoRA:--mtlora-skip-absent".parse().unwrap();
        assert_eq!((o.method.as_str(), o.value), ("mtlora", None));
        assert_eq!(o.flag, "mtlora-skip-absent");
        // Only the first `=` splits.
        let o: MethodOpt = "lora:decay=a=b".parse().unwrap();
        assert_eq!(o.value.as_deref(), Some("a=b"));
        let o: MethodOpt = "ALL:pack".parse().unwrap();
        assert_eq!((o.method.as_str(), o.flag.as_str()), (ALL, "pack"));
    }

    #[test]
    fn bad_method_opts_are_errors_naming_the_problem() {
        for (arg, needle) in [
            ("qqlora:lr=1", "qqlora"),
            ("lora", "no `:`"),
            ("lora:=3", "long flag"),
            ("lora:Rank=3", "long flag"),
            ("lora:---rank=3", "long flag"),
            ("lora:out=x", "--out is set by compare"),
            ("dora:method=lora", "--method is set by compare"),
        ] {
            let e = arg.parse::<MethodOpt>().unwrap_err().to_string();
            assert!(e.contains(needle), "{arg}: {e}");
        }
    }

    #[test]
    fn train_flags_replace_common_ones_and_keep_order() {
        // A method's own option wins over `all:`'s whatever their order.
        let opts: Vec<MethodOpt> = [
            "hira:lr=5e-3",
            "all:lr=1e-3",
            "hira:base-copy=dense",
            "dora:rank=4",
            "all:pack",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut f = TrainFlags::new();
        f.set("steps", Some("10".into()));
        f.set("lr", Some("2e-3".into()));
        f.set("seed", Some("1".into()));
        f.apply("hira", &opts);
        assert_eq!(
            f.to_args(),
            [
                "--steps",
                "10",
                "--lr",
                "5e-3",
                "--seed",
                "1",
                "--pack",
                "--base-copy",
                "dense"
            ]
        );
        assert_eq!(f.get("lr"), Some("5e-3"));
        assert_eq!(f.get("pack"), None);
        assert_eq!(
            opts_of("hira", &opts),
            ["--lr=1e-3", "--pack", "--lr=5e-3", "--base-copy=dense"]
        );
        let mut f = TrainFlags::new();
        f.set("lr", Some("2e-4".into()));
        f.apply("lora", &opts);
        assert_eq!(f.to_args(), ["--lr", "1e-3", "--pack"]);
        assert_eq!(opts_of("lora", &opts), ["--lr=1e-3", "--pack"]);
    }
}
