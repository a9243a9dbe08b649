//! Finding added tokens (control and user-defined) in text, leftmost-longest, the way
//! `tokenizers`' added-vocabulary matcher does, so that control tokens can be recognised only
//! when the caller asks (`parse_special`).

/// A piece of text between added tokens, or an added token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    Text(&'a str),
    Token(u32),
}

/// Added-token strings grouped by their first byte, longest first within a group.
#[derive(Clone, Debug)]
pub struct SpecialMatcher {
    /// `by_first[b]`: (token text, id, is control) for texts starting with byte `b`.
    by_first: Vec<Vec<(String, u32, bool)>>,
}

impl SpecialMatcher {
    /// `entries`: (text, id, is control). Empty texts are ignored (they would match anywhere).
    pub fn new(entries: impl IntoIterator<Item = (String, u32, bool)>) -> SpecialMatcher {
        let mut by_first: Vec<Vec<(String, u32, bool)>> = vec![Vec::new(); 256];
        for (text, id, control) in entries {
            if let Some(&b) = text.as_bytes().first() {
                by_first[b as usize].push((text, id, control));
            }
        }
        for group in &mut by_first {
            // Longest first; among equal texts the lowest id (stable sort on sorted ids).
            group.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        SpecialMatcher { by_first }
    }

    /// The longest added token (control ones only when `with_control`) starting at byte `at`.
    fn match_at(&self, text: &str, at: usize, with_control: bool) -> Option<(usize, u32)> {
        let rest = &text.as_bytes()[at..];
        let group = &self.by_first[*rest.first()? as usize];
        group
            .iter()
            .find(|(t, _, control)| (with_control || !control) && rest.starts_with(t.as_bytes()))
            .map(|(t, id, _)| (t.len(), *id))
    }

    /// Splits `text` into text segments and added tokens (leftmost match first, then the
    /// longest at that position). Control tokens count only when `with_control`. Empty text
    /// segments are left out.
    pub fn split<'a>(&self, text: &'a str, with_control: bool) -> Vec<Segment<'a>> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            // A token text is valid UTF-8, so it can only match at a character boundary.
            if self.by_first[bytes[i] as usize].is_empty() {
                i += 1;
                continue;
            }
            match self.match_at(text, i, with_control) {
                Some((len, id)) => {
                    if start < i {
                        out.push(Segment::Text(&text[start..i]));
                    }
                    out.push(Segment::Token(id));
                    i += len;
                    start = i;
                }
                None => i += 1,
            }
        }
        if start < bytes.len() {
            out.push(Segment::Text(&text[start..]));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher() -> SpecialMatcher {
        SpecialMatcher::new([
            ("<|eot_id|>".to_string(), 9, true),
            ("<|eot".to_string(), 8, false),
            ("<s>".to_string(), 1, true),
            ("é!".to_string(), 5, false),
        ])
    }

    #[test]
    fn leftmost_longest() {
        use Segment::*;
        let m = matcher();
        assert_eq!(
            m.split("a<|eot_id|>b<s><|eotx", true),
            vec![
                Text("a"),
                Token(9),
                Text("b"),
                Token(1),
                Token(8),
                Text("x")
            ]
        );
        // Without control tokens only the user-defined ones match.
        assert_eq!(
            m.split("a<|eot_id|>é!", false),
            vec![Text("a"), Token(8), Text("_id|>"), Token(5)]
        );
        assert_eq!(m.split("", true), vec![]);
        assert_eq!(m.split("plain", true), vec![Text("plain")]);
    }
}
