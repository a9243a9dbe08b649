//! Code-point classes as llama.cpp's pre-tokenizer sees them: one coarse general category
//! (letter, number, punctuation, mark, symbol, other) and a whitespace flag per code point.
//!
//! llama.cpp generates its tables from the Unicode 15.1 character database, so code points
//! assigned later are unassigned there (class [`Cat::Other`]). The tables here come from
//! `regex-syntax` (a newer Unicode) intersected with `Age <= 15.1`, which gives the same classes
//! without keeping a copy of the database in this crate.

use std::sync::OnceLock;

use regex_syntax::hir::{Class, HirKind};

/// The Unicode version llama.cpp's code-point tables were generated from.
const UNICODE_AGE: &str = "15.1";

/// A code point's general category, merged the way llama.cpp merges them: `L*` → letter, `N*` →
/// number, `P*` → punctuation, `M*` → mark, `S*` → symbol; separators, controls, format, private
/// use and unassigned code points → other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cat {
    Other,
    Number,
    Letter,
    Punctuation,
    Mark,
    Symbol,
}

/// Sorted, disjoint `(first, last, category)` ranges of every code point that is not `Other`.
fn table() -> &'static [(u32, u32, Cat)] {
    static TABLE: OnceLock<Vec<(u32, u32, Cat)>> = OnceLock::new();
    TABLE.get_or_init(build_table)
}

fn build_table() -> Vec<(u32, u32, Cat)> {
    let mut ranges = Vec::new();
    for (prop, cat) in [
        ("N", Cat::Number),
        ("L", Cat::Letter),
        ("P", Cat::Punctuation),
        ("M", Cat::Mark),
        ("S", Cat::Symbol),
    ] {
        let pattern = format!(r"[\p{{{prop}}}&&\p{{Age={UNICODE_AGE}}}]");
        match regex_syntax::parse(&pattern).map(|h| h.into_kind()) {
            Ok(HirKind::Class(Class::Unicode(class))) => ranges.extend(
                class
                    .ranges()
                    .iter()
                    .map(|r| (r.start() as u32, r.end() as u32, cat)),
            ),
            // The patterns are constants (a unit test parses them): this is not reached, and
            // the worst outcome is every code point reading as `Other`.
            other => log::error!("Unicode class {pattern} did not parse to a class: {other:?}"),
        }
    }
    ranges.sort_unstable_by_key(|r| r.0);
    ranges
}

/// The ASCII category of `b`, with llama.cpp's split of ASCII punctuation into punctuation
/// (`!"#%&'()*,-./:;?@[\]_{}`) and symbols (`$+<=>^`|~`), as in Unicode.
fn ascii_cat(b: u8) -> Cat {
    match b {
        b'0'..=b'9' => Cat::Number,
        b'A'..=b'Z' | b'a'..=b'z' => Cat::Letter,
        b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~' => Cat::Symbol,
        b'!'..=b'/' | b':'..=b'@' | b'['..=b'_' | b'{'..=b'}' => Cat::Punctuation,
        _ => Cat::Other,
    }
}

/// The category of `c`.
pub fn category(c: char) -> Cat {
    if c.is_ascii() {
        return ascii_cat(c as u8);
    }
    let cp = c as u32;
    let t = table();
    // The last range starting at or before `cp`.
    let i = t.partition_point(|r| r.0 <= cp);
    match i.checked_sub(1).map(|i| t[i]) {
        Some((_, last, cat)) if cp <= last => cat,
        _ => Cat::Other,
    }
}

/// llama.cpp's whitespace: `\t`..`\r`, space, and the non-ASCII `White_Space` code points
/// (U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F, U+205F, U+3000). The
/// ASCII separators U+001C..U+001F are not whitespace here.
pub fn is_space(c: char) -> bool {
    matches!(c, '\t'..='\r' | ' ') || (!c.is_ascii() && c.is_whitespace())
}

/// The "Han" code points of Kimi-K2's pre-tokenizer: the CJK unified ideograph blocks
/// (URO, extensions A–F) and the compatibility ideographs.
pub fn is_han(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF
        | 0x3400..=0x4DBF
        | 0x20000..=0x2A6DF
        | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F
        | 0x2B820..=0x2CEAF
        | 0x2CEB0..=0x2EBEF
        | 0xF900..=0xFAFF
        | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_of_sample_code_points() {
        let cases = [
            ('a', Cat::Letter),
            ('7', Cat::Number),
            ('$', Cat::Symbol),
            ('_', Cat::Punctuation),
            (' ', Cat::Other),
            ('é', Cat::Letter),
            ('²', Cat::Number),
            ('½', Cat::Number),
            ('°', Cat::Symbol),
            ('€', Cat::Symbol),
            ('…', Cat::Punctuation),
            ('。', Cat::Punctuation),
            ('中', Cat::Letter),
            ('\u{0301}', Cat::Mark),
            ('\u{0E31}', Cat::Mark),
            ('😀', Cat::Symbol),
            ('\u{200D}', Cat::Other),
            ('\u{E000}', Cat::Other),
            // CJK extension I arrived in Unicode 15.1; U+1C89 (Cyrillic Tje) only in 16.0.
            ('\u{2EBF0}', Cat::Letter),
            ('\u{1C89}', Cat::Other),
        ];
        for (c, want) in cases {
            assert_eq!(category(c), want, "U+{:04X}", c as u32);
        }
        // Every ASCII code point agrees with the Unicode tables.
        let t = build_table();
        assert!(t.len() > 1000, "{} ranges", t.len());
        for b in 0..128u8 {
            let cp = b as u32;
            let from_table = t
                .iter()
                .find(|r| r.0 <= cp && cp <= r.1)
                .map_or(Cat::Other, |r| r.2);
            assert_eq!(ascii_cat(b), from_table, "{b:#04x}");
        }
    }

    #[test]
    fn whitespace_and_han() {
        for c in [
            '\t', '\n', '\x0B', '\r', ' ', '\u{85}', '\u{A0}', '\u{2009}', '\u{3000}',
        ] {
            assert!(is_space(c), "U+{:04X}", c as u32);
        }
        for c in ['\x1C', '\u{200B}', 'a', '\u{FEFF}'] {
            assert!(!is_space(c), "U+{:04X}", c as u32);
        }
        assert!(is_han('中') && is_han('\u{20000}') && !is_han('あ') && !is_han('가'));
    }
}
