//! PEFT's `adapter_config.json` (docs/FORMATS.md#peft-directory): writing ours and reading theirs,
//! with PEFT's per-module `rank_pattern` / `alpha_pattern` lookup.
//!
//! PEFT matches a pattern key against a module's key in the base model
//! (`model.layers.3.self_attn.q_proj`) with `re.match(rf"(.*\.)?{key}$", module_key)`; we
//! support the keys PEFT and users write in practice — full module keys and dotted suffixes
//! (`q_proj`, `layers.3.self_attn.q_proj`) — and refuse regular expressions by name.

use std::path::Path;

use serde_json::{Map, Value as Json};

use edgetune_core::adapters::Target;
use edgetune_core::{Error, Result};

pub const CONFIG_FILE: &str = "adapter_config.json";

/// `self_attn` or `mlp`: the parent module of `target` in HF Llama.
pub fn parent_module(target: Target) -> &'static str {
    match target {
        Target::AttnQ | Target::AttnK | Target::AttnV | Target::AttnOutput => "self_attn",
        Target::FfnGate | Target::FfnUp | Target::FfnDown => "mlp",
    }
}

/// `model.layers.{layer}.{self_attn|mlp}.{q_proj…}`: the module's key in the HF base model.
pub fn module_key(layer: usize, target: Target) -> String {
    format!(
        "model.layers.{layer}.{}.{}",
        parent_module(target),
        target.peft_name()
    )
}

/// The fields of `adapter_config.json` edgetune uses.
#[derive(Clone, Debug, PartialEq)]
pub struct PeftConfig {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub use_rslora: bool,
    pub rank_pattern: Map<String, Json>,
    pub alpha_pattern: Map<String, Json>,
    pub target_modules: Vec<String>,
    /// The adapted layers when not every layer is (PEFT's `layers_to_transform`).
    pub layers_to_transform: Option<Vec<usize>>,
    pub base_model_name_or_path: Option<String>,
}

impl PeftConfig {
    /// The JSON PEFT writes (keys sorted, as `save_pretrained` does).
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        let mut put = |k: &str, v: Json| {
            m.insert(k.into(), v);
        };
        put("alpha_pattern", Json::Object(self.alpha_pattern.clone()));
        put("auto_mapping", Json::Null);
        put(
            "base_model_name_or_path",
            self.base_model_name_or_path
                .clone()
                .map_or(Json::Null, Json::from),
        );
        put("bias", "none".into());
        put("fan_in_fan_out", false.into());
        put("inference_mode", true.into());
        put("init_lora_weights", true.into());
        put("layers_pattern", Json::Null);
        put(
            "layers_to_transform",
            self.layers_to_transform
                .clone()
                .map_or(Json::Null, Json::from),
        );
        put("lora_alpha", number(self.lora_alpha));
        put("lora_dropout", number(self.lora_dropout));
        put("modules_to_save", Json::Null);
        put("peft_type", "LORA".into());
        put("r", self.r.into());
        put("rank_pattern", Json::Object(self.rank_pattern.clone()));
        put("revision", Json::Null);
        put("target_modules", self.target_modules.clone().into());
        put("task_type", "CAUSAL_LM".into());
        put("use_dora", false.into());
        put("use_rslora", self.use_rslora.into());
        Json::Object(m)
    }

    /// Reads `dir/adapter_config.json`, refusing what edgetune cannot represent (DoRA, biases,
    /// `fan_in_fan_out`, other PEFT types) with the key and value.
    pub fn read(dir: &Path) -> Result<PeftConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let err = |key: &str, what: String| Error::Metadata {
            path: path.clone(),
            key: key.into(),
            what,
        };
        let Json::Object(m) = serde_json::from_str::<Json>(&text)
            .map_err(|e| err("(file)", format!("not valid JSON: {e}")))?
        else {
            return Err(err("(file)", "not a JSON object".into()));
        };
        let get = |k: &str| m.get(k).filter(|v| !v.is_null());
        match get("peft_type").and_then(Json::as_str) {
            Some("LORA") => {}
            other => {
                return Err(err(
                    "peft_type",
                    format!("{other:?}: only LORA adapters are supported"),
                ));
            }
        }
        let flag = |k: &str| -> Result<bool> {
            match get(k) {
                None => Ok(false),
                Some(Json::Bool(b)) => Ok(*b),
                Some(v) => Err(err(k, format!("{v}: not a boolean"))),
            }
        };
        if flag("use_dora")? {
            return Err(err(
                "use_dora",
                "DoRA adapters are not supported yet".into(),
            ));
        }
        if flag("fan_in_fan_out")? {
            return Err(err(
                "fan_in_fan_out",
                "true: only Llama's nn.Linear layout (false) is supported".into(),
            ));
        }
        if let Some(b) = get("bias").and_then(Json::as_str).filter(|b| *b != "none") {
            return Err(err(
                "bias",
                format!("{b:?}: LoRA biases are not supported (\"none\")"),
            ));
        }
        let r = get("r")
            .and_then(Json::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| err("r", "missing or not a positive integer".into()))?;
        let lora_alpha = match get("lora_alpha") {
            None => 8.0, // PEFT's default
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("lora_alpha", format!("{v}: not a number")))?,
        };
        let lora_dropout = match get("lora_dropout") {
            None => 0.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| err("lora_dropout", format!("{v}: not a number")))?,
        };
        let pattern = |k: &str| -> Result<Map<String, Json>> {
            match get(k) {
                None => Ok(Map::new()),
                Some(Json::Object(p)) => {
                    for key in p.keys() {
                        if key.contains(|c: char| "*+?()[]{}|^$\\".contains(c)) {
                            return Err(err(
                                k,
                                format!(
                                    "key {key:?} is a regular expression; edgetune matches module names and dotted suffixes only"
                                ),
                            ));
                        }
                    }
                    Ok(p.clone())
                }
                Some(v) => Err(err(k, format!("{v}: not an object"))),
            }
        };
        let target_modules = match get("target_modules") {
            Some(Json::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            Some(Json::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        };
        // A list of layers, or one layer as a number.
        let layers_to_transform = match get("layers_to_transform") {
            None => None,
            Some(Json::Number(n)) => n.as_u64().map(|l| vec![l as usize]),
            Some(Json::Array(a)) => Some(
                a.iter()
                    .map(|v| v.as_u64().map(|l| l as usize))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        err(
                            "layers_to_transform",
                            format!("{a:?}: not a list of layers"),
                        )
                    })?,
            ),
            Some(v) => return Err(err("layers_to_transform", format!("{v}: not a layer list"))),
        };
        Ok(PeftConfig {
            layers_to_transform,
            r: r as usize,
            lora_alpha,
            lora_dropout,
            use_rslora: flag("use_rslora")?,
            rank_pattern: pattern("rank_pattern")?,
            alpha_pattern: pattern("alpha_pattern")?,
            target_modules,
            base_model_name_or_path: get("base_model_name_or_path")
                .and_then(Json::as_str)
                .map(String::from),
        })
    }
}

/// An f64 as JSON, integral values as integers (`16`, as PEFT configs usually hold them).
fn number(v: f64) -> Json {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        Json::from(v as i64)
    } else {
        Json::from(v)
    }
}

/// The value of the first key of `pattern` that names `module` (the whole key, or a dotted
/// suffix of it).
pub fn lookup<'p>(pattern: &'p Map<String, Json>, module: &str) -> Option<(&'p str, &'p Json)> {
    pattern
        .iter()
        .find(|(k, _)| {
            module == k.as_str()
                || (module.len() > k.len()
                    && module.ends_with(k.as_str())
                    && module.as_bytes()[module.len() - k.len() - 1] == b'.')
        })
        .map(|(k, v)| (k.as_str(), v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pattern_keys_match_whole_names_and_dotted_suffixes() {
        let Json::Object(p) = json!({"layers.1.self_attn.q_proj": 4, "k_proj": 2}) else {
            unreachable!()
        };
        let key = module_key(1, Target::AttnQ);
        assert_eq!(key, "model.layers.1.self_attn.q_proj");
        assert_eq!(lookup(&p, &key).unwrap().1, &json!(4));
        assert_eq!(
            lookup(&p, &module_key(0, Target::AttnK)).unwrap().1,
            &json!(2)
        );
        assert!(lookup(&p, &module_key(11, Target::AttnQ)).is_none());
        assert!(lookup(&p, "model.layers.0.self_attn.xk_proj").is_none());
    }

    #[test]
    fn config_round_trips_and_refuses_what_we_cannot_load() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = PeftConfig {
            r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.05,
            use_rslora: true,
            rank_pattern: Map::new(),
            alpha_pattern: Map::new(),
            target_modules: vec!["q_proj".into(), "v_proj".into()],
            layers_to_transform: Some(vec![2, 3]),
            base_model_name_or_path: None,
        };
        let j = cfg.to_json();
        assert_eq!(j["lora_alpha"], json!(16));
        assert_eq!(j["peft_type"], "LORA");
        std::fs::write(dir.path().join(CONFIG_FILE), j.to_string()).unwrap();
        assert_eq!(PeftConfig::read(dir.path()).unwrap(), cfg);
        for (k, v, msg) in [
            ("use_dora", json!(true), "DoRA"),
            ("peft_type", json!("IA3"), "only LORA"),
            ("bias", json!("all"), "biases"),
            ("r", json!(0), "positive integer"),
            (
                "rank_pattern",
                json!({"^model.*q_proj": 4}),
                "regular expression",
            ),
        ] {
            let mut bad = j.clone();
            bad[k] = v;
            std::fs::write(dir.path().join(CONFIG_FILE), bad.to_string()).unwrap();
            let e = PeftConfig::read(dir.path()).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(msg), "{e}");
        }
    }
}
