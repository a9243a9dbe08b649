//! `edgetune compare`'s per-method settings: each method's default learning rate (its
//! registry entry's [`MethodSpec::compare_lr`](crate::train::method_registry::MethodSpec), with
//! the reason for each there) and the `--method-opt METHOD:FLAG=VALUE` flags passed through to
//! one method's `edgetune train` run ([`MethodOpt`], [`TrainFlags`]).

use std::str::FromStr;

use edgetune_core::{Error, Result};

use crate::train::Method;

/// The default learning rate of `method` in a comparison (its registry entry's).
pub fn default_lr(method: &str) -> Result<f32> {
    Method::ALL
        .iter()
        .find(|m| m.name() == method)
        .map(|m| m.spec().compare_lr)
        .ok_or_else(|| unknown_method("learning rate", method))
}

fn unknown_method(what: &str, name: &str) -> Error {
    Error::Invalid(format!(
        "{what}: unknown method `{name}` (known: {})",
        Method::NAMES.join(", ")
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
        if method != ALL && !Method::NAMES.contains(&method.as_str()) {
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
    fn every_method_has_a_positive_rate_and_a_reason() {
        use crate::train::method_registry::LORA_LR;
        for m in Method::ALL {
            let spec = m.spec();
            let lr = spec.compare_lr;
            assert!(lr.is_finite() && lr > 0.0 && lr < 0.1, "{spec:?}");
            assert!(!spec.compare_lr_why.is_empty(), "{m}");
            assert_eq!(default_lr(m.name()).unwrap(), lr);
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
