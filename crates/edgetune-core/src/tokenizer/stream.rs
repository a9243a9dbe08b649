//! Incremental decoding for streaming generation: token pieces are bytes, and one character can
//! span several tokens (an emoji is often 2–4 byte-level or `<0xNN>` tokens), so text is emitted
//! only once its UTF-8 sequence is complete.

/// Turns a stream of token pieces into text, never splitting a UTF-8 sequence.
///
/// Get one from [`super::Tokenizer::stream_decoder`] and feed it ids with
/// [`super::Tokenizer::decode_next`] (or raw bytes with [`StreamDecoder::push_bytes`]); call
/// [`StreamDecoder::finish`] at the end. The concatenated output equals
/// [`super::Tokenizer::decode`] of the same ids.
#[derive(Clone, Debug, Default)]
pub struct StreamDecoder {
    /// Bytes of an incomplete UTF-8 sequence (at most 3) waiting for the next piece.
    pending: Vec<u8>,
    /// SentencePiece: drop one leading space from the next text piece (the "▁" the encoder
    /// prepended at the start of the text or after a control token).
    strip_space: bool,
    /// Whether the tokenizer prepends "▁" to each run of text (SentencePiece only).
    space_prefix: bool,
}

impl StreamDecoder {
    /// A decoder; with `space_prefix`, the first text piece after the start (when
    /// `at_start`) or after a control token loses one leading space.
    pub fn new(space_prefix: bool, at_start: bool) -> StreamDecoder {
        StreamDecoder {
            pending: Vec::new(),
            strip_space: space_prefix && at_start,
            space_prefix,
        }
    }

    /// Feeds the piece of a control token: it is emitted as is and re-arms the space rule.
    pub fn push_control(&mut self, bytes: &[u8]) -> String {
        let out = self.push_bytes(bytes);
        self.strip_space = self.space_prefix;
        out
    }

    /// Feeds the piece of a text token (the space rule applies).
    pub fn push_text(&mut self, bytes: &[u8]) -> String {
        // Only the first non-empty piece of a run can start with the added space.
        let stripped = match (self.strip_space, bytes.first()) {
            (true, Some(b' ')) => &bytes[1..],
            _ => bytes,
        };
        if !bytes.is_empty() {
            self.strip_space = false;
        }
        self.push_bytes(stripped)
    }

    /// Appends raw bytes and returns the text that is now complete. Invalid sequences become
    /// U+FFFD (as `String::from_utf8_lossy` would); an incomplete tail is kept for later.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is UTF-8 by the definition of `valid_up_to`: never the default.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        // Incomplete sequence at the end: wait for more bytes.
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Flushes what is left: an unfinished sequence becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Whether bytes of an unfinished character are waiting.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_split_across_pieces() {
        // "a👍b": 👍 is F0 9F 91 8D; split it over three pieces.
        let mut d = StreamDecoder::new(false, true);
        assert_eq!(d.push_text(b"a\xF0"), "a");
        assert!(d.has_pending());
        assert_eq!(d.push_text(b"\x9F"), "");
        assert_eq!(d.push_text(b"\x91\x8Db"), "\u{1F44D}b");
        assert!(!d.has_pending());
        assert_eq!(d.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_chars() {
        let mut d = StreamDecoder::new(false, true);
        // A lone continuation byte is invalid at once; a truncated sequence only at the end.
        assert_eq!(d.push_bytes(b"x\x80y\xE2\x82"), "x\u{FFFD}y");
        assert_eq!(d.finish(), "\u{FFFD}");
    }

    #[test]
    fn space_prefix_rule() {
        let mut d = StreamDecoder::new(true, true);
        let mut s = d.push_text(b"");
        s += &d.push_text(b" ");
        s += &d.push_text(b" Hello");
        s += &d.push_text(b" world");
        s += &d.push_control(b"</s>");
        s += &d.push_text(b" again");
        assert_eq!(s, " Hello world</s>again");
        // Not at the start (continuing after a prompt): the first space is kept.
        let mut d = StreamDecoder::new(true, false);
        assert_eq!(d.push_text(b" Hi"), " Hi");
    }
}
