//! The layering of the two library crates, checked: the `use crate::…` edges between each
//! crate's top-level modules, read from the source, must follow one order ([`LAYERS`]): each
//! module uses only the modules before it and the crate-level files, so there is no cycle, and
//! a module missing from the order fails the test until it is given a place. Between the crates
//! Cargo enforces the direction (`edgetune-core` cannot name `edgetune-train`); this checks the
//! order inside each. The `edgetune` package on top (the C ABI and the CLI) uses them all.
//!
//! Edges are read from non-test code: comment lines are skipped, and a file's text stops at its
//! `#[cfg(test)] mod …` block.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module of `edgetune-core` then of `edgetune-train`, lowest first: each may
/// use only the entries before it and the crate-level files. The file format, the arena and
/// plan packing, the quant kernels, the tokenizer, the data layer, the optimizers, the backend
/// ops, the adapters, the model, inference, evaluation, the test models and GGUF inspection
/// form `edgetune-core`; above them the adapter formats (export), training and the method
/// comparison form `edgetune-train`.
const LAYERS: &[&str] = &[
    "gguf",
    "memory",
    "quant",
    "tokenizer",
    "data",
    "optim",
    "backend",
    "adapters",
    "model",
    "infer",
    "eval",
    "testmodel",
    "inspect",
    "export",
    "train",
    "compare",
];

/// Crate-level files every module may use (they use nothing of the crate but `error`).
const CRATE_LEVEL: &[&str] = &["error", "atomic_file", "npy"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Files declared as test-only modules by `file`: `#[cfg(test)]` (or `#[cfg(all(test, …))]`),
/// an optional `#[path = "…"]`, then `mod name;`.
fn test_module_files(file: &Path, text: &str) -> Vec<PathBuf> {
    let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    let dir = file.parent().unwrap_or(Path::new(""));
    // `mod x;` in a.rs is a/x.rs; in mod.rs or lib.rs it is x.rs beside it. `#[path]` is
    // relative to the declaring file's directory.
    let child_dir = if stem == "mod" || stem == "lib" {
        dir.to_path_buf()
    } else {
        dir.join(stem)
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !(*line == "#[cfg(test)]" || line.starts_with("#[cfg(all(test,")) {
            continue;
        }
        let mut j = i + 1;
        let mut path_attr = None;
        if let Some(p) = lines.get(j).and_then(|l| l.strip_prefix("#[path = \"")) {
            path_attr = p.strip_suffix("\"]").map(str::to_string);
            j += 1;
        }
        let Some(decl) = lines.get(j) else { continue };
        let decl = decl
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub ");
        let Some(name) = decl.strip_prefix("mod ").and_then(|r| r.strip_suffix(';')) else {
            continue;
        };
        match path_attr {
            Some(p) => out.push(dir.join(p)),
            None => {
                out.push(child_dir.join(format!("{name}.rs")));
                out.push(child_dir.join(name).join("mod.rs"));
            }
        }
    }
    out
}

/// The non-test code of a source file: comment lines dropped, cut at `#[cfg(test)] mod`.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if (t == "#[cfg(test)]" || t.starts_with("#[cfg(all(test,"))
            && lines.get(i + 1).is_some_and(|next| {
                let n = next.trim_start();
                n.starts_with("mod ")
                    || n.starts_with("pub mod ")
                    || n.starts_with("pub(crate) mod ")
            })
        {
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The first path segments after a `crate::`: one name, or each item of a `{…}` group.
fn first_segments(rest: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let names = match rest.strip_prefix('{') {
        // Nested groups are rare; their inner items belong to the outer item's module.
        Some(group) => {
            let mut depth = 0usize;
            let mut items = vec![String::new()];
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(String::new()),
                    _ if depth == 0 => items.last_mut().into_iter().for_each(|s| s.push(c)),
                    _ => {}
                }
            }
            items.iter().map(|s| ident(s)).collect()
        }
        None => vec![ident(rest)],
    };
    names.into_iter().filter(|n| !n.is_empty()).collect()
}

/// `module → modules it uses`, over the top-level modules of `src/`.
fn module_edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let test_only: BTreeSet<PathBuf> = files
        .iter()
        .flat_map(|f| test_module_files(f, &std::fs::read_to_string(f).unwrap_or_default()))
        .collect();
    files.retain(|f| !test_only.contains(f));
    let module_of = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(src).ok()?;
        let first = rel.components().next()?.as_os_str().to_str()?;
        Some(first.trim_end_matches(".rs").to_string())
    };
    let is_module =
        |name: &str| src.join(format!("{name}.rs")).is_file() || src.join(name).is_dir();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = module_of(f) else { continue };
        if from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let code = code_of(&text);
        let entry = edges.entry(from.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            for name in first_segments(&code[at + "crate::".len()..]) {
                if name != from && is_module(&name) {
                    entry.insert(name);
                }
            }
        }
    }
    edges
}

/// The modules that lie on some cycle.
fn cyclic_modules(edges: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let reaches = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(n) = stack.pop() {
            for m in edges.get(&n).into_iter().flatten() {
                if seen.insert(m.clone()) {
                    stack.push(m.clone());
                }
            }
        }
        seen
    };
    edges
        .keys()
        .filter(|m| reaches(m).contains(*m))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both crates' edges in one map (their module names are distinct).
    fn edges() -> BTreeMap<String, BTreeSet<String>> {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        let core = here.join("../edgetune-core/src");
        let train = here.join("src");
        let core_edges = module_edges(&core);
        let train_edges = module_edges(&train);
        assert!(
            core_edges.len() > 10 && train_edges.len() == 3,
            "read too few modules from {} ({}) and {} ({})",
            core.display(),
            core_edges.len(),
            train.display(),
            train_edges.len()
        );
        core_edges.into_iter().chain(train_edges).collect()
    }

    #[test]
    fn no_module_lies_on_a_cycle() {
        let edges = edges();
        let cyclic = cyclic_modules(&edges);
        assert!(
            cyclic.is_empty(),
            "module cycles through {cyclic:?}; edges: {edges:#?}"
        );
    }

    #[test]
    fn every_module_has_a_layer() {
        let edges = edges();
        for m in edges.keys() {
            assert!(
                LAYERS.contains(&m.as_str()) || CRATE_LEVEL.contains(&m.as_str()),
                "module {m} is in neither LAYERS nor CRATE_LEVEL: give it its place"
            );
        }
    }

    #[test]
    fn modules_use_only_what_is_below_them() {
        let edges = edges();
        for (i, m) in LAYERS.iter().enumerate() {
            let allowed: BTreeSet<&str> = LAYERS[..i].iter().chain(CRATE_LEVEL).copied().collect();
            for used in edges.get(*m).into_iter().flatten() {
                assert!(
                    allowed.contains(used.as_str()),
                    "{m} uses {used}, which is not below it ({allowed:?})"
                );
            }
        }
        for m in CRATE_LEVEL {
            for used in edges.get(*m).into_iter().flatten() {
                assert_eq!(used, "error", "crate-level file {m} uses {used}");
            }
        }
    }

    #[test]
    fn reads_edges_and_cycles_from_code_only() {
        let code = code_of(
            "use crate::a::X;\n// crate::b in a comment\nfn f() {}\n#[cfg(test)]\nmod tests {\n    use crate::c;\n}\n",
        );
        assert!(code.contains("crate::a") && !code.contains("crate::b"));
        assert!(!code.contains("crate::c"));
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        g.entry("a".into()).or_default().insert("b".into());
        g.entry("b".into()).or_default().insert("a".into());
        g.entry("c".into()).or_default().insert("a".into());
        let cyc: Vec<String> = cyclic_modules(&g).into_iter().collect();
        assert_eq!(cyc, ["a", "b"]);
        assert_eq!(first_segments("gguf::GgufFile;"), ["gguf"]);
        let decl = "#[cfg(test)]\n#[path = \"ck_tests.rs\"]\nmod tests;\n#[cfg(test)]\npub(crate) mod util;\n";
        assert_eq!(
            test_module_files(Path::new("src/train/ck.rs"), decl),
            [
                PathBuf::from("src/train/ck_tests.rs"),
                PathBuf::from("src/train/ck/util.rs"),
                PathBuf::from("src/train/ck/util/mod.rs"),
            ]
        );
        assert_eq!(
            first_segments("{Error, gguf::{A, B}, quant::C};"),
            ["Error", "gguf", "quant"]
        );
    }
}
