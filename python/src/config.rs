//! The training configuration from Python: a JSON object with `edgetune train`'s settings by
//! their flag names (`seq-len` or `seq_len`, `rank`, `alpha`, `targets`, `layers`, `budget`,
//! `board`, `no-checkpointing`, `replay`, the method's flags, …) or by `TrainConfig`'s own
//! field names (`lora`, `method_opts`, `budget_bytes`, …), mapped to a [`TrainConfig`] the way
//! the CLI maps its flags (QLoRA's preset included). Unknown keys are an error naming them.

use std::str::FromStr;

use edgetune::adapters::{LayerRange, Target};
use edgetune::memory::board::{Board, parse_bytes};
use edgetune::train::{MethodOptions, TrainConfig};
use pyo3::PyResult;
use serde_json::{Map, Value, json};

use crate::{err, invalid};

/// Flags that live in `lora` (`LoraConfig`).
const LORA_KEYS: [&str; 6] = ["rank", "alpha", "rslora", "dropout", "targets", "layers"];

/// Settings the CLI notes as given for QLoRA's preset (a given one is kept).
const PRESET_KEYS: [(&str, &str); 11] = [
    ("rank", "lora.rank"),
    ("alpha", "lora.alpha"),
    ("dropout", "lora.dropout"),
    ("lr", "lr"),
    ("decay", "decay"),
    ("warmup_steps", "warmup_steps"),
    ("max_grad_norm", "max_grad_norm"),
    ("weight_decay", "weight_decay"),
    ("optimizer", "optimizer"),
    ("optimizer_state", "optimizer_state"),
    ("optimizer_state_bits", "optimizer_state_bits"),
];

/// Parses the CLI-style JSON object `text` into a [`TrainConfig`].
pub fn from_json(text: &str) -> PyResult<TrainConfig> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| invalid(format!("training configuration JSON: {e}")))?;
    let Value::Object(given) = value else {
        return Err(invalid("training configuration: expected a dict"));
    };
    let given: Map<String, Value> = given
        .into_iter()
        .map(|(k, v)| (k.replace('-', "_"), v))
        .collect();
    let (map, explicit) = to_train_config_json(given)?;
    let text = Value::Object(map).to_string();
    let mut cfg = edgetune::ffi::plan::train_config_from_json(&text).map_err(err)?;
    edgetune::train::method::apply_preset(&mut cfg, &explicit);
    Ok(cfg)
}

/// The CLI-style keys of `given` rewritten as `TrainConfig`'s JSON, and the preset keys given.
fn to_train_config_json(
    mut given: Map<String, Value>,
) -> PyResult<(Map<String, Value>, Vec<&'static str>)> {
    let explicit: Vec<&'static str> = PRESET_KEYS
        .iter()
        .filter(|(k, _)| given.contains_key(*k))
        .map(|&(_, e)| e)
        .collect();
    let mut out = Map::new();
    let mut lora = match given.remove("lora") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("config \"lora\": expected a dict")),
        None => Map::new(),
    };
    let mut method_opts = match given.remove("method_opts") {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("config \"method_opts\": expected a dict")),
        None => Map::new(),
    };
    let opt_keys = serde_json::to_value(MethodOptions::default())
        .map_err(|e| invalid(format!("method options: {e}")))?;
    let (prompts, tokens) = (
        given.remove("replay_prompts"),
        given.remove("replay_tokens"),
    );
    let mut threads_from_board = None;
    for (key, v) in given {
        let k = key.as_str();
        match k {
            "targets" => {
                lora.insert(k.into(), targets(&v)?);
            }
            "layers" => {
                let s = match &v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => return Err(invalid("config \"layers\": expected \"FIRST-LAST\"")),
                };
                let r = LayerRange::parse(&s).map_err(err)?;
                lora.insert(k.into(), json!(r));
            }
            _ if LORA_KEYS.contains(&k) => {
                lora.insert(k.into(), v);
            }
            "adalora_orth_reg" => {
                method_opts.insert("adalora_orth_reg_weight".into(), v);
            }
            _ if opt_keys.get(k).is_some() => {
                method_opts.insert(k.into(), v);
            }
            "no_checkpointing" => {
                out.insert("checkpointing".into(), json!(!truthy(&v)));
            }
            "budget" => {
                let bytes = match &v {
                    Value::String(s) => parse_bytes(s).map_err(err)?,
                    Value::Number(n) => n
                        .as_u64()
                        .ok_or_else(|| invalid("config \"budget\": expected bytes or a size"))?,
                    _ => {
                        return Err(invalid(
                            "config \"budget\": expected a size like \"5.5GiB\"",
                        ));
                    }
                };
                out.insert("budget_bytes".into(), json!(bytes));
            }
            "board" => {
                let name = v
                    .as_str()
                    .ok_or_else(|| invalid("config \"board\": expected a board name"))?;
                let b = Board::builtin(name).map_err(err)?;
                out.insert("budget_bytes".into(), json!(b.process_budget_bytes));
                threads_from_board = Some(b.cpu_cores);
            }
            "replay" => {
                let r = match v.as_str() {
                    Some("self") => json!({"self": {
                        "prompts": prompts.clone().unwrap_or(json!(edgetune::data::synth::REPLAY_PROMPTS.len())),
                        "max_tokens": tokens.clone().unwrap_or(json!(64)),
                    }}),
                    Some(file) => json!({ "file": file }),
                    None if v.is_null() => Value::Null,
                    None => v,
                };
                out.insert(k.into(), r);
            }
            // `--resume DIR`: the run directory to continue.
            "resume" if v.is_string() => {
                out.insert("out".into(), v);
                out.insert("resume".into(), json!(true));
            }
            _ => {
                out.insert(key, v);
            }
        }
    }
    if let Some(n) = threads_from_board
        && !out.contains_key("threads")
    {
        out.insert("threads".into(), json!(n));
    }
    if !lora.is_empty() {
        let mut full = serde_json::to_value(TrainConfig::default().lora)
            .map_err(|e| invalid(format!("lora: {e}")))?;
        if let Value::Object(m) = &mut full {
            m.extend(lora);
        }
        out.insert("lora".into(), full);
    }
    if !method_opts.is_empty() {
        out.insert("method_opts".into(), Value::Object(method_opts));
    }
    Ok((out, explicit))
}

/// `"attn_q,ffn_up"`, `["q_proj", "v_proj"]` or `"all"` as `LoraConfig`'s target list (in
/// model order, as the CLI sorts them).
fn targets(v: &Value) -> PyResult<Value> {
    let names: Vec<String> = match v {
        Value::String(s) => s.split(',').map(|t| t.trim().to_string()).collect(),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("config \"targets\": expected names"))?,
        _ => return Err(invalid("config \"targets\": expected a list or \"a,b\"")),
    };
    let mut picked = Vec::new();
    for n in names.iter().filter(|n| !n.is_empty()) {
        if n == "all" {
            picked.extend(Target::ALL);
        } else {
            picked.push(Target::from_str(n).map_err(err)?);
        }
    }
    if picked.is_empty() {
        return Err(invalid("config \"targets\": no projection given"));
    }
    let sorted: Vec<Target> = Target::ALL
        .into_iter()
        .filter(|t| picked.contains(t))
        .collect();
    Ok(json!(sorted))
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::Null => false,
        Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    }
}
