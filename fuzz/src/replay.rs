//! Stable-toolchain stand-in for the fuzzer: runs the target body over every file given
//! (files or directories, e.g. a cargo-fuzz corpus), reporting the first input that panics.

use std::path::{Path, PathBuf};

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            collect(&entry?.path(), out)?;
        }
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let mut files = Vec::new();
    for arg in std::env::args_os().skip(1) {
        collect(Path::new(&arg), &mut files)?;
    }
    files.sort();
    for file in &files {
        let data = std::fs::read(file)?;
        if std::panic::catch_unwind(|| edgetune_fuzz::check_gguf(&data)).is_err() {
            eprintln!("PANIC on {}", file.display());
            std::process::exit(1);
        }
    }
    println!("{} inputs replayed without a panic", files.len());
    Ok(())
}
