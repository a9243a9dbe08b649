//! Tokenizers built from GGUF metadata: byte-level BPE (`tokenizer.ggml.model = gpt2`: Llama 3,
//! Qwen, SmolLM…) and SentencePiece BPE (`llama`), both merging with the `tokenizers` crate, plus
//! prompt templates ([`template`]) and the `tokenizer.json` → GGUF key conversion ([`hf_json`]).
//!
//! Byte-level BPE text is first split by the file's pre-tokenizer (`tokenizer.ggml.pre`), the way
//! llama.cpp splits it: every name llama.cpp accepts is in [`pre_table`], run by [`pretokenize`].
//! Generation stops at the end-of-generation tokens llama.cpp picks ([`eog`]).
//!
//! Special tokens follow llama.cpp: control tokens (token type 3: BOS, EOS, `<|eot_id|>`…) are
//! recognised in text only with `parse_special`; otherwise their text is tokenized like any
//! other text. User-defined tokens (type 4) are always recognised. The wrapper splits the text
//! on these tokens itself ([`special`]) and hands each run of text to `tokenizers`, whose own
//! added-token matching is switched off for control tokens (`set_encode_special_tokens`).
//!
//! SentencePiece prepends "▁" to each run of text — at the start and after every added token,
//! as llama.cpp and Hugging Face's legacy Llama tokenizer do — unless the file sets
//! `tokenizer.ggml.add_space_prefix = false`. The wrapper adds that space, so
//! [`Tokenizer::encode_parts`] can continue a run of text across parts without a new "▁".
//! Decoding drops the one space the encoder added to each run, so
//! `decode(encode(s, false, p)) == s` for both families.

pub mod bpe;
pub mod chat_template;
pub mod eog;
pub mod hf_json;
pub mod pre_custom;
pub mod pre_regex;
pub mod pre_table;
pub mod pretokenize;
pub mod prompt_spec;
pub mod special;
pub mod spm;
pub mod stream;
pub mod template;
pub mod unicode_cat;
pub mod vocab;

use std::path::PathBuf;

use tokenizers::AddedToken;

use crate::Error;
use crate::gguf::GgufFile;
use pretokenize::PreTokenizer;
use special::{Segment, SpecialMatcher};
pub use stream::StreamDecoder;
pub use vocab::{ModelKind, TokenType};

/// A tokenizer for one model, built from its GGUF metadata.
pub struct Tokenizer {
    path: PathBuf,
    kind: ModelKind,
    inner: tokenizers::Tokenizer,
    tokens: Vec<String>,
    types: Vec<TokenType>,
    /// The decoded bytes of every token, concatenated; token `i` is
    /// `piece_bytes[piece_offsets[i]..piece_offsets[i + 1]]`.
    piece_bytes: Vec<u8>,
    piece_offsets: Vec<usize>,
    matcher: SpecialMatcher,
    /// The pre-tokenizer and merge rules of a byte-level BPE vocabulary (`None` for
    /// SentencePiece).
    bpe: Option<bpe::BpeEncoder>,
    bos: Option<u32>,
    /// The end-of-generation ids, EOS first.
    eog: Vec<u32>,
    add_bos: bool,
    /// SentencePiece with `add_space_prefix`: a space goes before each run of text.
    space_prefix: bool,
}

// Data loaders share one tokenizer across threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Tokenizer>();
};

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("kind", &self.kind)
            .field("vocab_size", &self.tokens.len())
            .field("pre", &self.pre_tokenizer().map(|p| p.name()))
            .field("bos", &self.bos)
            .field("eog", &self.eog)
            .finish()
    }
}

impl Tokenizer {
    /// Builds the tokenizer that `f`'s `tokenizer.ggml.*` keys describe.
    pub fn from_gguf(f: &GgufFile) -> crate::Result<Tokenizer> {
        let path = f.path().to_path_buf();
        let mut v = vocab::GgufVocab::read(f)?;
        let (mut inner, bpe) = match v.kind {
            ModelKind::Gpt2 => {
                let (inner, enc) = bpe::build(&v, &path)?;
                (inner, Some(enc))
            }
            ModelKind::Spm => (spm::build(&v, &path)?, None),
        };
        // Before the special tokens are registered: it may change token types.
        let eog = eog::end_of_generation(&mut v);

        // Control tokens are special added tokens, user-defined ones plain added tokens (always
        // matched). Both are already in the model's vocabulary, so they keep the file's ids.
        let added = |want: TokenType, special: bool| -> Vec<AddedToken> {
            (0..v.tokens.len())
                .filter(|&i| v.types[i] == want && !v.tokens[i].is_empty())
                .map(|i| AddedToken::from(v.tokens[i].clone(), special).normalized(false))
                .collect()
        };
        let add_err = |e: tokenizers::Error| Error::Metadata {
            path: path.clone(),
            key: vocab::KEY_TOKEN_TYPE.into(),
            what: format!("registering the control and user-defined tokens: {e}"),
        };
        inner
            .add_special_tokens(added(TokenType::Control, true))
            .map_err(add_err)?;
        inner
            .add_tokens(added(TokenType::UserDefined, false))
            .map_err(add_err)?;
        inner.set_encode_special_tokens(true);

        let matcher = SpecialMatcher::new(
            (0..v.tokens.len())
                .filter(|&i| matches!(v.types[i], TokenType::Control | TokenType::UserDefined))
                .map(|i| {
                    (
                        v.tokens[i].clone(),
                        i as u32,
                        v.types[i] == TokenType::Control,
                    )
                }),
        );

        let pre = bpe.as_ref().map(|b| &b.pre);
        let escaped_spaces = pre.is_some_and(|p| p.row().escape_whitespaces);
        let (piece_bytes, piece_offsets) = decode_pieces(&v, escaped_spaces);

        // SentencePiece adds BOS unless the file says otherwise; byte-level BPE only where the
        // pre-tokenizer's row says so (Llama 3, Tekken, Chameleon), and Gemma 4 always.
        let add_bos = match pre {
            None => v.add_bos.unwrap_or(true),
            Some(p) => v.add_bos.unwrap_or(p.row().add_bos) || p.pre_type().force_bos,
        };

        Ok(Tokenizer {
            path,
            kind: v.kind,
            inner,
            space_prefix: v.kind == ModelKind::Spm && v.add_space_prefix,
            add_bos: add_bos && v.bos.is_some(),
            bos: v.bos,
            eog,
            matcher,
            bpe,
            piece_bytes,
            piece_offsets,
            tokens: v.tokens,
            types: v.types,
        })
    }

    /// Token ids for `text`; BOS first when `add_bos`. Control-token text (e.g.
    /// `<|eot_id|>`) becomes the control token only when `parse_special`; otherwise it is
    /// tokenized as plain text.
    pub fn encode(
        &self,
        text: &str,
        add_bos: bool,
        parse_special: bool,
    ) -> crate::Result<Vec<u32>> {
        let (ids, _) = self.encode_parts([(text, false)], add_bos, parse_special)?;
        Ok(ids)
    }

    /// Encodes consecutive parts of one text and marks the tokens of each part with its flag
    /// (e.g. "carries loss" for a training example, see [`template::Rendered::parts`]); BOS
    /// gets `false`. A token never spans two parts: at a part boundary the BPE runs are cut,
    /// which may give other tokens than encoding the joined text would (SentencePiece's "▁"
    /// prefix, however, is only added at the start and after added tokens).
    pub fn encode_parts<'a>(
        &self,
        parts: impl IntoIterator<Item = (&'a str, bool)>,
        add_bos: bool,
        parse_special: bool,
    ) -> crate::Result<(Vec<u32>, Vec<bool>)> {
        let mut ids = Vec::new();
        let mut flags = Vec::new();
        if add_bos {
            let bos = self.bos.ok_or_else(|| Error::Metadata {
                path: self.path.clone(),
                key: vocab::KEY_BOS.into(),
                what: "missing, but encoding was asked to add BOS".into(),
            })?;
            ids.push(bos);
            flags.push(false);
        }
        // A run of text starts at the beginning and after each added token.
        let mut run_start = true;
        for (text, flag) in parts {
            for seg in self.matcher.split(text, parse_special) {
                match seg {
                    Segment::Token(id) => {
                        ids.push(id);
                        run_start = true;
                    }
                    Segment::Text(s) => {
                        self.encode_run(s, run_start, &mut ids)?;
                        run_start = false;
                    }
                }
            }
            flags.resize(ids.len(), flag);
        }
        Ok((ids, flags))
    }

    /// Encodes text that holds no added token to match.
    fn encode_run(&self, s: &str, run_start: bool, ids: &mut Vec<u32>) -> crate::Result<()> {
        let err = |e: String| {
            Error::Invalid(format!(
                "{}: tokenizing {} bytes of text: {e}",
                self.path.display(),
                s.len()
            ))
        };
        if let Some(enc) = &self.bpe {
            return bpe::encode(&self.inner, enc, s, ids).map_err(err);
        }
        let prefixed;
        let s = if self.space_prefix && run_start {
            prefixed = format!(" {s}");
            &prefixed
        } else {
            s
        };
        let enc = self
            .inner
            .encode_fast(s, false)
            .map_err(|e| err(e.to_string()))?;
        ids.extend_from_slice(enc.get_ids());
        Ok(())
    }

    /// The text of `ids`: control tokens as their text, invalid UTF-8 as U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> crate::Result<String> {
        let mut d = self.stream_decoder(true);
        let mut out = String::new();
        for &id in ids {
            out += &self.decode_next(&mut d, id)?;
        }
        out += &d.finish();
        Ok(out)
    }

    /// A decoder for streaming output: `at_start` when the ids begin the text (SentencePiece
    /// then drops the leading space the encoder added), false when they continue a prompt.
    pub fn stream_decoder(&self, at_start: bool) -> StreamDecoder {
        StreamDecoder::new(self.space_prefix, at_start)
    }

    /// Feeds one id to `d` and returns the text that became complete.
    pub fn decode_next(&self, d: &mut StreamDecoder, id: u32) -> crate::Result<String> {
        let bytes = self.token_to_piece(id).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: token id {id} is out of range for a vocabulary of {} tokens",
                self.path.display(),
                self.tokens.len()
            ))
        })?;
        Ok(match self.types[id as usize] {
            TokenType::Control | TokenType::UserDefined => d.push_control(bytes),
            _ => d.push_text(bytes),
        })
    }

    /// The bytes token `id` stands for ("Ġhello" → " hello", "<0x0A>" → "\n", a control token
    /// → its text); `None` when `id` is out of range.
    pub fn token_to_piece(&self, id: u32) -> Option<&[u8]> {
        let i = id as usize;
        let (&start, &end) = (self.piece_offsets.get(i)?, self.piece_offsets.get(i + 1)?);
        Some(&self.piece_bytes[start..end])
    }

    /// The vocabulary entry of `id` as stored in the file ("Ġhello", "▁hello", "<0x0A>").
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// The id of the vocabulary entry `text`, as stored in the file.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.inner.token_to_id(text)
    }

    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Whether `id` is a control token (BOS, EOS, `<|eot_id|>`, reserved specials…).
    pub fn is_special(&self, id: u32) -> bool {
        self.token_type(id) == Some(TokenType::Control)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-generation tokens, as llama.cpp picks them ([`eog`]): EOS, EOT and EOM from
    /// their keys, the FIM pad/repo/separator tokens, and tokens whose text ends a turn
    /// (`<|eot_id|>`, `<|im_end|>`, `<|endoftext|>`, `<end_of_turn>`…). EOS comes first.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether generation stops at `id` (see [`Tokenizer::eog_ids`]).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The same as [`Tokenizer::eog_ids`]: EOS first, then the other ends of generation.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eog
    }

    /// The same as [`Tokenizer::is_eog`].
    pub fn is_eos(&self, id: u32) -> bool {
        self.is_eog(id)
    }

    /// The byte-level BPE pre-tokenizer (`None` for SentencePiece).
    pub fn pre_tokenizer(&self) -> Option<&PreTokenizer> {
        self.bpe.as_ref().map(|b| &b.pre)
    }

    /// Whether encoding adds BOS by default: `tokenizer.ggml.add_bos_token` if present, else
    /// true for SentencePiece and the pre-tokenizer's default for byte-level BPE (forced for
    /// Gemma 4); false when there is no BOS.
    pub fn add_bos_default(&self) -> bool {
        self.add_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn kind(&self) -> ModelKind {
        self.kind
    }

    /// The underlying `tokenizers` pipeline (without BOS handling; for SentencePiece without the
    /// "▁" prefix, and for byte-level BPE without the pre-tokenizer split, which this wrapper
    /// adds).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The bytes of every token, flattened (see [`Tokenizer::token_to_piece`]). `escaped_spaces`:
/// a byte-level BPE vocabulary of raw UTF-8 with "▁" for spaces (Gemma 4 and the like).
fn decode_pieces(v: &vocab::GgufVocab, escaped_spaces: bool) -> (Vec<u8>, Vec<usize>) {
    let byte_map = bpe::char_to_byte_map();
    let mut bytes = Vec::with_capacity(v.tokens.iter().map(String::len).sum());
    let mut offsets = Vec::with_capacity(v.tokens.len() + 1);
    offsets.push(0);
    for (t, &ty) in v.tokens.iter().zip(&v.types) {
        match (v.kind, ty) {
            // Added tokens are stored as raw text in both families.
            (_, TokenType::Control | TokenType::UserDefined) => {
                bytes.extend_from_slice(t.as_bytes())
            }
            // Byte tokens `<0xNN>` in both families.
            (_, TokenType::Byte) => match spm::parse_byte_token(t) {
                Some(b) => bytes.push(b),
                None => bytes.extend_from_slice(t.as_bytes()),
            },
            (ModelKind::Gpt2, _) if !escaped_spaces => {
                bpe::byte_level_decode(t, &byte_map, &mut bytes)
            }
            _ => bytes.extend_from_slice(t.replace(spm::SPACE_MARK, " ").as_bytes()),
        }
        offsets.push(bytes.len());
    }
    (bytes, offsets)
}
