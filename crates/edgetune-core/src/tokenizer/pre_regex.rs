//! One regex step of llama.cpp's pre-tokenizer, emulated with `fancy-regex`.
//!
//! llama.cpp runs its split regexes with the C++ standard library's ECMAScript engine, which
//! knows no Unicode categories. It therefore rewrites the problem:
//! - a regex naming `\p{N}`, `\p{L}` (and `Lu`/`Ll`/`Lt`/`Lm`/`Lo`), `\p{P}`, `\p{M}` or `\p{S}`
//!   runs over a *collapsed* text: ASCII code points stay, non-ASCII whitespace becomes `\x0B`,
//!   every other code point becomes one marker for its category ([`Cat`]); each `\p{X}` becomes
//!   a class of that marker plus the ASCII members of the category;
//! - any other regex runs over the code points, non-ASCII whitespace again turned into `\x0B`.
//!
//! `\s`, `\d`, `\w` and `\b` are ASCII-only there, so they are rewritten to ASCII classes here;
//! the markers are private-use characters ([`marker`]), one code point per original code point,
//! so piece lengths in code points carry over unchanged. Matches are enumerated the way
//! `std::regex_iterator` does (see [`SplitRegex::split`]).

use super::unicode_cat::{Cat, category, is_space};

/// The character standing for a non-ASCII code point of category `cat` in the collapsed text.
pub fn marker(cat: Cat) -> char {
    match cat {
        Cat::Other => '\u{E000}',
        Cat::Number => '\u{E001}',
        Cat::Letter => '\u{E002}',
        Cat::Punctuation => '\u{E003}',
        Cat::Mark => '\u{E004}',
        Cat::Symbol => '\u{E005}',
    }
}

/// The `\p{..}` names llama.cpp collapses, with the class body (marker plus ASCII members, in
/// Rust class syntax) each becomes. The letter sub-categories all become the letter class.
fn category_body(name: &str) -> Option<String> {
    let (cat, ascii) = match name {
        "N" => (Cat::Number, "0-9"),
        "L" | "Lu" | "Ll" | "Lt" | "Lm" | "Lo" => (Cat::Letter, "A-Za-z"),
        "P" => (Cat::Punctuation, r##"!"#%\&'()*,\-./:;?@\[\\\]_{}"##),
        "M" => (Cat::Mark, ""),
        "S" => (Cat::Symbol, r"$+<=>\^`|\~"),
        _ => return None,
    };
    Some(format!("{}{ascii}", marker(cat)))
}

/// Whether llama.cpp runs `pattern` over the collapsed text: it names one of the categories.
pub fn uses_categories(pattern: &str) -> bool {
    ["N", "L", "P", "M", "S", "Lu", "Ll", "Lt", "Lm", "Lo"]
        .iter()
        .any(|n| pattern.contains(&format!(r"\p{{{n}}}")))
}

/// ASCII whitespace as C's `isspace` sees it (what ECMAScript's `\s` means in llama.cpp).
const SPACE_BODY: &str = r"\t\n\x0B\x0C\r ";
const WORD_BODY: &str = "0-9A-Za-z_";

/// Rewrites an ECMAScript `pattern` into `fancy-regex` syntax with llama.cpp's meaning.
pub fn translate(pattern: &str, collapsed: bool) -> Result<String, String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() * 2);
    let mut in_class = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        if collapsed && !c.is_ascii() {
            return Err(format!(
                "{pattern:?} mixes Unicode categories with non-ASCII characters"
            ));
        }
        match c {
            '\\' => {
                let e = *chars.get(i).ok_or("a trailing backslash")?;
                i += 1;
                let wrap = |body: &str, negate: bool| {
                    let neg = if negate { "^" } else { "" };
                    // Inside a class a negated set needs its own (nested) class.
                    if in_class && !negate {
                        body.to_string()
                    } else {
                        format!("[{neg}{body}]")
                    }
                };
                match e {
                    'p' => {
                        let rest: String = chars[i..].iter().collect();
                        let name = rest
                            .strip_prefix('{')
                            .and_then(|r| r.split_once('}'))
                            .map(|(n, _)| n.to_string())
                            .ok_or_else(|| format!("{pattern:?}: `\\p` without a name"))?;
                        let body = category_body(&name)
                            .filter(|_| collapsed)
                            .ok_or_else(|| format!("{pattern:?}: `\\p{{{name}}}` is unknown"))?;
                        out += &wrap(&body, false);
                        i += name.chars().count() + 2;
                    }
                    's' => out += &wrap(SPACE_BODY, false),
                    'S' => out += &wrap(SPACE_BODY, true),
                    'd' => out += &wrap("0-9", false),
                    'D' => out += &wrap("0-9", true),
                    'w' => out += &wrap(WORD_BODY, false),
                    'W' => out += &wrap(WORD_BODY, true),
                    'b' if in_class => out += r"\x08",
                    'b' | 'B' => {
                        let w = format!("[{WORD_BODY}]");
                        let at = format!("(?<={w})(?!{w})|(?<!{w})(?={w})");
                        let not_at = format!("(?<={w})(?={w})|(?<!{w})(?!{w})");
                        out += &format!("(?:{})", if e == 'b' { at } else { not_at });
                    }
                    'r' => out += r"\r",
                    'n' => out += r"\n",
                    't' => out += r"\t",
                    'f' => out += r"\x0C",
                    'v' => out += r"\x0B",
                    // Not ECMAScript: the table's notation for a code point it must not write
                    // literally (see `pre_table`); it stands for that code point.
                    'x' if chars.get(i) == Some(&'{') => {
                        let hex: String =
                            chars[i + 1..].iter().take_while(|&&c| c != '}').collect();
                        let c = u32::from_str_radix(&hex, 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| format!("{pattern:?}: bad `\\x{{{hex}}}`"))?;
                        if collapsed && !c.is_ascii() {
                            return Err(format!(
                                "{pattern:?} mixes Unicode categories with non-ASCII characters"
                            ));
                        }
                        out += &format!("\\x{{{:X}}}", c as u32);
                        i += hex.len() + 2;
                    }
                    e if e.is_ascii_punctuation() => {
                        out.push('\\');
                        out.push(e);
                    }
                    e => return Err(format!("{pattern:?}: the escape `\\{e}` is not supported")),
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.get(i) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
                if chars.get(i) == Some(&']') {
                    // ECMAScript's `[]` / `[^]`; none of llama.cpp's patterns uses them.
                    return Err(format!("{pattern:?}: empty classes are not supported"));
                }
            }
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            // Literal inside an ECMAScript class, but nesting or set operators in Rust's.
            '[' | '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            // ECMAScript's `.` stops at every line terminator, Rust's only at `\n`.
            '.' if !in_class => out += r"[^\n\r\x{2028}\x{2029}]",
            c => out.push(c),
        }
    }
    if in_class {
        return Err(format!("{pattern:?}: an unclosed class"));
    }
    Ok(out)
}

/// The text a regex step searches, one character per code point of the original, and where
/// each of them starts (`starts[n]` is the length).
pub struct Haystack {
    pub text: String,
    pub starts: Vec<usize>,
}

impl Haystack {
    /// The collapsed text (`collapsed`) or the code points with non-ASCII whitespace as `\x0B`.
    pub fn new(cps: &[char], collapsed: bool) -> Haystack {
        let mut text = String::with_capacity(cps.len() * 3);
        let mut starts = Vec::with_capacity(cps.len() + 1);
        for &c in cps {
            starts.push(text.len());
            text.push(if c.is_ascii() {
                c
            } else if is_space(c) {
                '\x0B'
            } else if collapsed {
                marker(category(c))
            } else {
                c
            });
        }
        starts.push(text.len());
        Haystack { text, starts }
    }

    /// The code-point index of byte offset `b` (a character boundary).
    fn cp_at(&self, b: usize) -> usize {
        self.starts.partition_point(|&s| s < b)
    }
}

/// A compiled split regex and whether it runs over the collapsed text.
#[derive(Debug)]
pub struct SplitRegex {
    re: fancy_regex::Regex,
    pub collapsed: bool,
}

impl SplitRegex {
    pub fn new(pattern: &str) -> Result<SplitRegex, String> {
        let collapsed = uses_categories(pattern);
        let rust = translate(pattern, collapsed)?;
        let re = fancy_regex::Regex::new(&rust)
            .map_err(|e| format!("compiling {pattern:?} (as {rust:?}): {e:?}"))?;
        Ok(SplitRegex { re, collapsed })
    }

    fn find(&self, s: &str, from: usize) -> Result<Option<(usize, usize)>, String> {
        match self.re.find_from_pos(s, from) {
            Ok(m) => Ok(m.map(|m| (m.start(), m.end()))),
            Err(e) => Err(format!("running {:?}: {e}", self.re.as_str())),
        }
    }

    /// Splits each piece (lengths in code points, `pieces` summing to the haystack's length)
    /// into matches and the stretches between them, all kept, and appends their lengths to
    /// `out`. An empty match gives an empty piece.
    ///
    /// Each piece is searched on its own, as `std::regex_iterator` over the piece does: the first
    /// search sees the piece start as the start of text; after a match the next search starts at
    /// its end with the text before visible; after an empty match at `p` a non-empty match
    /// starting exactly at `p` is tried first, then the search moves one code point on.
    pub fn split(
        &self,
        hay: &Haystack,
        pieces: &[usize],
        out: &mut Vec<usize>,
    ) -> Result<(), String> {
        let mut cp = 0;
        for &len in pieces {
            let (b0, b1) = (hay.starts[cp], hay.starts[cp + len]);
            let s = &hay.text[b0..b1];
            let lens = |from: usize, to: usize| hay.cp_at(b0 + to) - hay.cp_at(b0 + from);
            let mut last = 0;
            let mut m = self.find(s, 0)?;
            while let Some((start, end)) = m {
                if start > last {
                    out.push(lens(last, start));
                }
                out.push(lens(start, end));
                last = end;
                m = if start < end {
                    self.find(s, end)?
                } else if end == s.len() {
                    None
                } else {
                    match self.find(s, end)? {
                        Some((a, b)) if a == end && b > a => Some((a, b)),
                        _ => {
                            let step = s[end..].chars().next().map_or(1, char::len_utf8);
                            self.find(s, end + step)?
                        }
                    }
                };
            }
            if last < s.len() {
                out.push(lens(last, s.len()));
            }
            cp += len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces `pattern` cuts `text` into, as strings of the original text.
    fn pieces(pattern: &str, text: &str) -> Vec<String> {
        let re = SplitRegex::new(pattern).unwrap();
        let cps: Vec<char> = text.chars().collect();
        let hay = Haystack::new(&cps, re.collapsed);
        let mut lens = Vec::new();
        re.split(&hay, &[cps.len()], &mut lens).unwrap();
        let mut at = 0;
        lens.iter()
            .map(|&n| {
                at += n;
                cps[at - n..at].iter().collect()
            })
            .collect()
    }

    #[test]
    fn translation_of_categories_and_ascii_classes() {
        assert_eq!(
            translate(r"[^\s\p{L}]+|\p{N}", true).unwrap(),
            "[^\\t\\n\\x0B\\x0C\\r \u{E002}A-Za-z]+|[\u{E001}0-9]"
        );
        assert_eq!(translate(r"\S+", false).unwrap(), r"[^\t\n\x0B\x0C\r ]+");
        assert_eq!(translate(r"[\[-`{-~&]", false).unwrap(), r"[\[-`{-\~\&]");
        assert!(translate(r"\p{Han}+", true).is_err());
        assert!(translate("[一]\\p{L}", true).is_err());
        assert!(uses_categories(r"[\p{Lu}]") && !uses_categories(r"\p{Han}+"));
    }

    #[test]
    fn gpt2_pieces_over_collapsed_text() {
        let gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
        assert_eq!(
            pieces(gpt2, "Hé's  naïve 3.5€\u{3000}x"),
            [
                "Hé", "'s", " ", " naïve", " 3", ".", "5", "€", "\u{3000}", "x"
            ]
        );
    }

    #[test]
    fn empty_matches_follow_std_regex_iterator() {
        // Digit groups of three from the right: empty matches before "234" and "567".
        assert_eq!(
            pieces(r"(?=(\d{3})+(?!\d))", "1234567"),
            ["1", "", "234", "", "567"]
        );
        assert_eq!(
            pieces(r"(?=(\d{3})+(?!\d))", "123456"),
            ["", "123", "", "456"]
        );
        // A non-empty match right after an empty one at the same place.
        assert_eq!(pieces("x*", "ab"), ["", "a", "", "b", ""]);
    }
}
