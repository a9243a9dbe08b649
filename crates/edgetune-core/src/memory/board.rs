//! Board profiles (`targets/*.toml`, embedded in the binary): memory, the budget one process may
//! use, GPU compute capability, CPU cores and features, bandwidth — and byte-size parsing for
//! `--budget 5.5GiB`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

const GIB: f64 = (1u64 << 30) as f64;

/// The profiles shipped with edgetune, by name (the file stem in `targets/`).
const BUILTIN: [(&str, &str); 7] = [
    (
        "orin-nano-4gb",
        include_str!("../../../../targets/orin-nano-4gb.toml"),
    ),
    (
        "orin-nano-8gb",
        include_str!("../../../../targets/orin-nano-8gb.toml"),
    ),
    (
        "orin-nano-super-8gb",
        include_str!("../../../../targets/orin-nano-super-8gb.toml"),
    ),
    (
        "orin-nx-16gb",
        include_str!("../../../../targets/orin-nx-16gb.toml"),
    ),
    (
        "agx-orin-64gb",
        include_str!("../../../../targets/agx-orin-64gb.toml"),
    ),
    (
        "xavier-nx-8gb",
        include_str!("../../../../targets/xavier-nx-8gb.toml"),
    ),
    ("host", include_str!("../../../../targets/host.toml")),
];

/// A profile file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    name: String,
    description: String,
    total_memory_gib: Option<f64>,
    process_budget_gib: Option<f64>,
    compute_capability: Option<String>,
    gpu: Option<String>,
    cpu: Option<String>,
    cpu_cores: Option<usize>,
    #[serde(default)]
    cpu_features: Vec<String>,
    memory_bandwidth_gbps: Option<f64>,
    storage_read_mb_s: Option<f64>,
    storage: Option<String>,
    dense_fp16_tflops: Option<f64>,
    jetpack: Option<String>,
    glibc: Option<String>,
    #[serde(default)]
    detect: bool,
    process_budget_fraction_of_available: Option<f64>,
}

/// A resolved board: every number known (the `host` profile is filled in from this machine).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Board {
    pub name: String,
    pub description: String,
    pub total_memory_bytes: u64,
    /// What one edgetune process may use in total (weights, arena, optimizer state, overheads).
    pub process_budget_bytes: u64,
    /// CUDA compute capability (major, minor); `None` for CPU-only machines.
    pub compute_capability: Option<(u32, u32)>,
    pub gpu: Option<String>,
    pub cpu: Option<String>,
    pub cpu_cores: usize,
    pub cpu_features: Vec<String>,
    pub memory_bandwidth_gbps: Option<f64>,
    /// Sequential read speed of the storage the model is read from (MB/s, decimal), for the
    /// I/O estimate of streamed weights; `storage` says what it is and where the figure is from.
    pub storage_read_mb_s: Option<f64>,
    pub storage: Option<String>,
    pub dense_fp16_tflops: Option<f64>,
    pub jetpack: Option<String>,
    pub glibc: Option<String>,
}

impl Board {
    /// Names of the built-in profiles.
    pub fn builtin_names() -> impl Iterator<Item = &'static str> {
        BUILTIN.iter().map(|(n, _)| *n)
    }

    /// A built-in profile by name.
    pub fn builtin(name: &str) -> Result<Board> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown board `{name}` (known: {})",
                Board::builtin_names().collect::<Vec<_>>().join(", ")
            ))
        })?;
        Board::from_toml(text, &format!("targets/{name}.toml"))
    }

    /// A profile from a TOML file of the same form as `targets/*.toml`.
    pub fn from_file(path: &Path) -> Result<Board> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Board::from_toml(&text, &path.display().to_string())
    }

    /// Parses a profile; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Board> {
        let p: ProfileFile =
            toml::from_str(text).map_err(|e| Error::Invalid(format!("{origin}: {e}")))?;
        let bad = |what: String| Error::Invalid(format!("{origin}: {what}"));
        let compute_capability = match &p.compute_capability {
            None => None,
            Some(cc) => {
                let (a, b) = cc
                    .split_once('.')
                    .ok_or_else(|| bad(format!("compute_capability `{cc}` is not MAJOR.MINOR")))?;
                let parse = |s: &str| {
                    s.parse::<u32>()
                        .map_err(|_| bad(format!("compute_capability `{cc}` is not MAJOR.MINOR")))
                };
                Some((parse(a)?, parse(b)?))
            }
        };
        let (total, budget, cores) = if p.detect {
            let (total, available) =
                read_meminfo().map_err(|e| bad(format!("cannot detect memory: {e}")))?;
            let fraction = p.process_budget_fraction_of_available.unwrap_or(0.9);
            if !(fraction > 0.0 && fraction <= 1.0) {
                return Err(bad(format!(
                    "process_budget_fraction_of_available {fraction} is not in (0, 1]"
                )));
            }
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (total, (available as f64 * fraction) as u64, cores)
        } else {
            let gib = |v: Option<f64>, key: &str| match v {
                Some(x) if x > 0.0 && x.is_finite() => Ok((x * GIB) as u64),
                Some(x) => Err(bad(format!("{key} = {x} must be a positive number"))),
                None => Err(bad(format!("{key} is missing"))),
            };
            let total = gib(p.total_memory_gib, "total_memory_gib")?;
            let budget = gib(p.process_budget_gib, "process_budget_gib")?;
            if budget > total {
                return Err(bad(format!(
                    "process_budget_gib {:.2} exceeds total_memory_gib {:.2}",
                    budget as f64 / GIB,
                    total as f64 / GIB
                )));
            }
            let cores = p
                .cpu_cores
                .ok_or_else(|| bad("cpu_cores is missing".into()))?;
            (total, budget, cores)
        };
        Ok(Board {
            name: p.name,
            description: p.description,
            total_memory_bytes: total,
            process_budget_bytes: budget,
            compute_capability,
            gpu: p.gpu,
            cpu: p.cpu,
            cpu_cores: cores,
            cpu_features: p.cpu_features,
            memory_bandwidth_gbps: p.memory_bandwidth_gbps,
            storage_read_mb_s: p.storage_read_mb_s,
            storage: p.storage,
            dense_fp16_tflops: p.dense_fp16_tflops,
            jetpack: p.jetpack,
            glibc: p.glibc,
        })
    }
}

/// (MemTotal, MemAvailable) in bytes from /proc/meminfo.
fn read_meminfo() -> std::result::Result<(u64, u64), String> {
    let text =
        std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .ok_or_else(|| format!("/proc/meminfo has no readable {name}"))
    };
    Ok((field("MemTotal:")?, field("MemAvailable:")?))
}

/// Parses sizes such as `5.5GiB`, `6GB`, `512MiB`, `4096` (bytes). Binary (KiB, MiB, GiB, TiB)
/// and decimal (KB, MB, GB, TB) units; case-insensitive; `G`/`M`/`K` alone mean GiB/MiB/KiB.
pub fn parse_bytes(s: &str) -> Result<u64> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| Error::Invalid(format!("`{s}` is not a size (e.g. 5.5GiB, 512MiB, 6GB)")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => GIB,
        "t" | "tib" => GIB * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => {
            return Err(Error::Invalid(format!(
                "`{s}`: unknown size unit `{other}`"
            )));
        }
    };
    let bytes = value * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(Error::Invalid(format!("`{s}` is out of range")));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_profile_parses_and_is_consistent() {
        for name in Board::builtin_names() {
            let b = Board::builtin(name).unwrap();
            assert_eq!(b.name, name);
            assert!(
                b.process_budget_bytes > 0 && b.process_budget_bytes <= b.total_memory_bytes,
                "{name}"
            );
            assert!(b.cpu_cores >= 1, "{name}");
        }
        let nano = Board::builtin("orin-nano-8gb").unwrap();
        assert_eq!(nano.compute_capability, Some((8, 7)));
        assert_eq!(nano.process_budget_bytes, 6 << 30);
        assert_eq!(
            Board::builtin("xavier-nx-8gb").unwrap().compute_capability,
            Some((7, 2))
        );
        assert_eq!(Board::builtin("host").unwrap().compute_capability, None);
        // Every Jetson profile says how fast its storage reads (streamed weights' estimate)
        // and what that figure is.
        for name in Board::builtin_names().filter(|n| *n != "host") {
            let b = Board::builtin(name).unwrap();
            assert!(b.storage_read_mb_s.is_some_and(|r| r > 0.0), "{name}");
            assert!(
                b.storage.as_deref().is_some_and(|s| s.contains("assumed")),
                "{name}"
            );
        }
        let small = Board::builtin("orin-nano-4gb").unwrap();
        assert_eq!(small.total_memory_bytes, 4 << 30);
        assert!(small.process_budget_bytes < 3 << 30);
    }

    #[test]
    fn bad_profiles_are_errors_naming_the_origin() {
        assert!(
            Board::builtin("orin-mega")
                .unwrap_err()
                .to_string()
                .contains("known: orin-nano-4gb, orin-nano-8gb")
        );
        let err = Board::from_toml(
            "name='x'\ndescription='y'\ntotal_memory_gib=4\nprocess_budget_gib=5\ncpu_cores=2",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.toml") && err.contains("exceeds"), "{err}");
        let err = Board::from_toml("name='x'\ndescription='y'\ncolour='red'", "u.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("u.toml") && err.contains("colour"), "{err}");
    }

    #[test]
    fn sizes_parse_in_binary_and_decimal_units() {
        assert_eq!(parse_bytes("5.5GiB").unwrap(), 5_905_580_032);
        assert_eq!(parse_bytes("6GB").unwrap(), 6_000_000_000);
        assert_eq!(parse_bytes("512 MiB").unwrap(), 512 << 20);
        assert_eq!(parse_bytes("4096").unwrap(), 4096);
        assert_eq!(parse_bytes("2g").unwrap(), 2 << 30);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }
}
