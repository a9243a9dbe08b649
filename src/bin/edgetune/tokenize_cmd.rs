//! `edgetune tokenize --model M --text TEXT [--no-bos] [--special] [--json]`.

use std::path::PathBuf;

use edgetune::gguf::GgufFile;
use edgetune::tokenizer::Tokenizer;
use edgetune::{Error, Result};

#[derive(clap::Args)]
pub struct Args {
    /// The model GGUF whose tokenizer to use.
    #[arg(long)]
    model: PathBuf,
    /// The text to tokenize.
    #[arg(long)]
    text: String,
    /// Don't add BOS (by default it is added when the model asks for it).
    #[arg(long)]
    no_bos: bool,
    /// Treat special-token text such as `<|eot_id|>` as the special token (default: plain text).
    #[arg(long)]
    special: bool,
    /// Print the ids as one JSON array.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let file = GgufFile::open(&args.model)?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    let add_bos = !args.no_bos && tokenizer.add_bos_default();
    let ids = tokenizer.encode(&args.text, add_bos, args.special)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&ids).map_err(|e| Error::Invalid(e.to_string()))?
        );
    } else {
        for id in &ids {
            let piece = tokenizer.token_text(*id).unwrap_or("?");
            println!("{id:>8}  {piece:?}");
        }
        eprintln!("{} tokens", ids.len());
    }
    Ok(())
}
