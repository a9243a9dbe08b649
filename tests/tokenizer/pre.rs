//! edgetune's byte-level BPE tokenizers against llama.cpp's `llama-tokenize`, one per
//! pre-tokenizer type: the fixture `tests/fixtures/tokenize/llama-cpp.json` (written by
//! `scripts/gen-tokenizer-fixtures.py`) holds a corpus and, for vocabulary-only copies of
//! SmolLM2-135M-Instruct's tokenizer with `tokenizer.ggml.pre` set to each name, the ids and
//! end-of-generation ids llama.cpp gives. The same files are rebuilt here from SmolLM2 and
//! every case is compared id for id.
//!
//! SmolLM2 is not in the repository: `$EDGETUNE_SMOLLM2`, else what
//! `scripts/fetch-model.sh smollm2-135m-instruct` prints. Without it the test fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edgetune::gguf::{GgufFile, GgufWriter, Value};
use edgetune::tokenizer::pretokenize::PreTokenizer;
use edgetune::tokenizer::{Tokenizer, pre_table};
use rayon::prelude::*;
use serde::Deserialize;

const FIXTURE: &str = include_str!("../fixtures/tokenize/llama-cpp.json");
const NAMES: &str = include_str!("../fixtures/tokenize/llama-cpp-pre-names.txt");

#[derive(Deserialize)]
struct Fixture {
    llama_cpp: String,
    copied_keys: Vec<String>,
    texts: Vec<String>,
    models: Vec<Variant>,
}

#[derive(Deserialize)]
struct Variant {
    /// `tokenizer.ggml.pre`; `None` with `original` false: the key left out.
    pre: Option<String>,
    add_bos_token: Option<bool>,
    /// SmolLM2's own file, unchanged.
    #[serde(default)]
    original: bool,
    eog: Vec<u32>,
    /// (text index, parse_special, ids; `None` where llama.cpp aborts).
    cases: Vec<(usize, bool, Option<Vec<u32>>)>,
}

impl Variant {
    fn label(&self) -> String {
        match (&self.pre, self.original, self.add_bos_token) {
            (_, true, _) => "SmolLM2 as is (smollm)".into(),
            (None, _, _) => "(no tokenizer.ggml.pre)".into(),
            (Some(p), _, None) => p.clone(),
            (Some(p), _, Some(b)) => format!("{p}, add_bos_token={b}"),
        }
    }
}

fn smollm2_path() -> PathBuf {
    if let Some(p) = std::env::var_os("EDGETUNE_SMOLLM2").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-model.sh");
    let out = Command::new(&script)
        .arg("smollm2-135m-instruct")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nSmolLM2-135M-Instruct is needed: set EDGETUNE_SMOLLM2 to its GGUF",
                script.display()
            )
        });
    assert!(
        out.status.success(),
        "{} smollm2-135m-instruct failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

fn fixture() -> Fixture {
    serde_json::from_str(FIXTURE).expect("tests/fixtures/tokenize/llama-cpp.json")
}

/// The vocabulary-only file the fixture script wrote for `v`, rebuilt from `base`.
fn variant_file(base: &GgufFile, keys: &[String], v: &Variant) -> GgufFile {
    let mut w = GgufWriter::new(32);
    w.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    for k in keys {
        let value = base
            .metadata()
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing"));
        w.add_kv(k.as_str(), value.clone()).unwrap();
    }
    if let Some(p) = &v.pre {
        w.add_kv("tokenizer.ggml.pre", Value::String(p.clone()))
            .unwrap();
    }
    if let Some(b) = v.add_bos_token {
        w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(b))
            .unwrap();
    }
    let mut bytes = Vec::new();
    w.write(&mut bytes, |_, _, _| Ok(())).unwrap();
    GgufFile::from_bytes(format!("smollm2-{}.gguf", v.label()), bytes).unwrap()
}

/// `ids` with the text of each token, for a readable diff.
fn show(t: &Tokenizer, ids: &[u32]) -> String {
    ids.iter()
        .map(|&id| {
            let piece = t.token_to_piece(id).unwrap_or(b"?");
            format!("{id}:{:?}", String::from_utf8_lossy(piece))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The outcome for one variant: (cases compared, cases llama.cpp aborts on, mismatches, the
/// first mismatch described).
struct Outcome {
    label: String,
    compared: usize,
    aborted: usize,
    mismatches: usize,
    first: Option<String>,
}

fn check(base: &GgufFile, f: &Fixture, v: &Variant) -> Outcome {
    let file;
    let t = if v.original {
        Tokenizer::from_gguf(base)
    } else {
        file = variant_file(base, &f.copied_keys, v);
        Tokenizer::from_gguf(&file)
    }
    .unwrap_or_else(|e| panic!("{}: {e}", v.label()));
    let mut out = Outcome {
        label: v.label(),
        compared: 0,
        aborted: 0,
        mismatches: 0,
        first: None,
    };
    let eog: BTreeSet<u32> = t.eog_ids().iter().copied().collect();
    if eog != v.eog.iter().copied().collect() {
        out.mismatches += 1;
        out.first = Some(format!(
            "end-of-generation ids: llama.cpp {:?}, edgetune {:?}",
            v.eog, eog
        ));
    }
    for (ti, parse_special, want) in &v.cases {
        let Some(want) = want else {
            out.aborted += 1;
            continue;
        };
        out.compared += 1;
        let text = &f.texts[*ti];
        let got = t
            .encode(text, t.add_bos_default(), *parse_special)
            .unwrap_or_else(|e| panic!("{}: {e}", v.label()));
        if &got != want {
            out.mismatches += 1;
            if out.first.is_none() {
                let at = got.iter().zip(want).take_while(|(a, b)| a == b).count();
                out.first = Some(format!(
                    "text {ti} {text:?} (parse_special {parse_special}), first difference at \
                     token {at}:\n  llama.cpp: {}\n  edgetune:  {}",
                    show(&t, &want[at.min(want.len())..]),
                    show(&t, &got[at.min(got.len())..]),
                ));
            }
        }
    }
    out
}

#[test]
fn ids_match_llama_cpp_for_every_pre_tokenizer_type() {
    let f = fixture();
    let path = smollm2_path();
    let base = GgufFile::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let outcomes: Vec<Outcome> = f.models.par_iter().map(|v| check(&base, &f, v)).collect();

    println!("against {} ({} texts):", f.llama_cpp, f.texts.len());
    println!(
        "{:<40} {:>8} {:>8} {:>10}",
        "pre-tokenizer", "cases", "aborts", "mismatch"
    );
    for o in &outcomes {
        println!(
            "{:<40} {:>8} {:>8} {:>10}",
            o.label, o.compared, o.aborted, o.mismatches
        );
    }
    let failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.first.as_ref().map(|d| format!("{}: {d}", o.label)))
        .collect();
    let total: usize = outcomes.iter().map(|o| o.mismatches).sum();
    assert!(
        failures.is_empty(),
        "{total} mismatches with llama.cpp; the first of each variant:\n{}",
        failures.join("\n")
    );
}

#[test]
fn smollm2_ends_generation_at_im_end() {
    let path = smollm2_path();
    let t = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let id = |s: &str| t.token_id(s).unwrap();
    assert_eq!(
        t.pre_tokenizer().and_then(PreTokenizer::name),
        Some("smollm")
    );
    assert_eq!(t.eog_ids()[0], id("<|im_end|>"), "EOS first");
    assert!(t.is_eog(id("<|im_end|>")) && t.is_eog(id("<|endoftext|>")));
    assert!(!t.is_eog(id("<|im_start|>")));
    assert!(!t.add_bos_default());
    let chat = "<|im_start|>user\nHi!<|im_end|>\n";
    let ids = t.encode(chat, false, true).unwrap();
    assert_eq!(t.decode(&ids).unwrap(), chat);
}

#[test]
fn every_llama_cpp_name_is_in_the_table() {
    let llama: BTreeSet<&str> = NAMES
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(llama.len() > 80, "{} names", llama.len());
    let ours: BTreeSet<&str> = pre_table::names().collect();
    let missing: Vec<_> = llama.difference(&ours).collect();
    let extra: Vec<_> = ours.difference(&llama).collect();
    assert!(
        missing.is_empty(),
        "names llama.cpp accepts but the table lacks: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "names in the table llama.cpp does not accept: {extra:?}"
    );
    for name in &llama {
        PreTokenizer::new(Some(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
