//! The split steps llama.cpp writes by hand instead of as regexes: Kimi-K2's word splitter,
//! AFMoE's digit grouping (also used for Tiny Aya's digit regex) and the newline splitter.
//!
//! Each takes the code points of the text and the current pieces (lengths in code points, in
//! order, summing to the text's length) and appends the lengths of the pieces it cuts each
//! piece into. A piece is never looked past: the code point after its end reads as "nothing".

use super::unicode_cat::{Cat, category, is_han, is_space};

/// A view of one piece: code points at absolute positions `start..end`, `None` outside.
struct Piece<'a> {
    cps: &'a [char],
    start: usize,
    end: usize,
}

impl Piece<'_> {
    fn at(&self, i: usize) -> Option<char> {
        (self.start <= i && i < self.end).then(|| self.cps[i])
    }
    fn cat(&self, i: usize) -> Option<Cat> {
        self.at(i).map(category)
    }
    fn is(&self, i: usize, cat: Cat) -> bool {
        self.cat(i) == Some(cat)
    }
    fn space(&self, i: usize) -> bool {
        self.at(i).is_some_and(is_space)
    }
    /// A letter that is not Han (Kimi-K2 keeps Han runs apart from other letters).
    fn plain_letter(&self, i: usize) -> bool {
        self.at(i)
            .is_some_and(|c| category(c) == Cat::Letter && !is_han(c))
    }
    fn han(&self, i: usize) -> bool {
        self.at(i).is_some_and(is_han)
    }
}

/// Appends the lengths of consecutive pieces ending at each `cut` (emitting nothing for a cut at
/// the previous one): the same bookkeeping every hand-written splitter uses.
struct Cutter<'o> {
    out: &'o mut Vec<usize>,
    prev: usize,
}

impl Cutter<'_> {
    fn cut(&mut self, at: usize) {
        if at > self.prev {
            self.out.push(at - self.prev);
        }
        self.prev = at;
    }
}

/// Calls `f` for each piece with its view and a cutter starting at the piece.
fn for_each_piece(
    cps: &[char],
    pieces: &[usize],
    out: &mut Vec<usize>,
    mut f: impl FnMut(&Piece, &mut Cutter),
) {
    let mut start = 0;
    for &len in pieces {
        let p = Piece {
            cps,
            start,
            end: start + len,
        };
        let mut cutter = Cutter {
            out: &mut *out,
            prev: start,
        };
        f(&p, &mut cutter);
        start += len;
    }
}

/// Kimi-K2: Han runs; words of non-Han letters (with one optional leading character that is not
/// a letter, digit, `\r` or `\n`, and an optional English contraction); digit runs cut every
/// three; ` ?[^\s\p{L}\p{N}]+[\r\n]*`; whitespace up to its last line break; whitespace but the
/// last character before a non-space; any other whitespace run; else one code point.
pub fn kimi_k2(cps: &[char], pieces: &[usize], out: &mut Vec<usize>) {
    for_each_piece(cps, pieces, out, |p, cut| {
        let mut pos = p.start;
        while pos < p.end {
            let c = cps[pos];
            let cat = category(c);
            if is_han(c) {
                while p.han(pos) {
                    pos += 1;
                }
                cut.cut(pos);
                continue;
            }
            let lead = !(c == '\r' || c == '\n' || cat == Cat::Letter || cat == Cat::Number);
            if p.plain_letter(pos) || (lead && p.plain_letter(pos + 1)) {
                let word_start = pos;
                pos += usize::from(lead);
                while p.plain_letter(pos) {
                    pos += 1;
                }
                if pos > word_start + usize::from(lead) {
                    // The contraction test lower-cases like llama.cpp; only ASCII capitals lower
                    // to the letters tested, so ASCII lower-casing is the same.
                    let lower = |i: usize| p.at(i).map(|c| c.to_ascii_lowercase());
                    if p.at(pos) == Some('\'') && pos + 1 < p.end {
                        match (lower(pos + 1), lower(pos + 2).filter(|_| pos + 2 < p.end)) {
                            (Some('s' | 't' | 'm' | 'd'), _) => pos += 2,
                            (Some('r'), Some('e'))
                            | (Some('v'), Some('e'))
                            | (Some('l'), Some('l')) => pos += 3,
                            _ => {}
                        }
                    }
                    cut.cut(pos);
                    continue;
                }
                pos = word_start;
            }
            if cat == Cat::Number {
                let mut group = pos;
                while p.is(pos, Cat::Number) {
                    pos += 1;
                    if pos - group >= 3 {
                        cut.cut(pos);
                        group = pos;
                    }
                }
                cut.cut(pos);
                continue;
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`: the test looks at the code point after a space.
            let other = |i: usize| {
                p.at(i).is_some_and(|c| {
                    !is_space(c) && !matches!(category(c), Cat::Letter | Cat::Number)
                })
            };
            let first = if c == ' ' { pos + 1 } else { pos };
            if other(first) {
                pos = first;
                while other(pos) {
                    pos += 1;
                }
                while matches!(p.at(pos), Some('\r' | '\n')) {
                    pos += 1;
                }
                cut.cut(pos);
                continue;
            }
            let mut n_space = 0;
            let mut after_break = None;
            while p.space(pos + n_space) {
                if matches!(p.at(pos + n_space), Some('\r' | '\n')) {
                    after_break = Some(pos + n_space + 1);
                }
                n_space += 1;
            }
            if let Some(end) = after_break {
                pos = end;
            } else if n_space > 1 && p.at(pos + n_space).is_some() {
                pos += n_space - 1;
            } else if n_space > 0 {
                pos += n_space;
            } else {
                pos += 1;
            }
            cut.cut(pos);
        }
    });
}

/// AFMoE digit grouping: each run of digits (`\p{N}`) is cut into groups of three from the
/// right (`1234567` → `1`, `234`, `567`). A cut only ends pieces, so the text before a digit run
/// stays glued to its first group (`ab12345` → `ab12`, `345`) and the text after the last run
/// is one more piece; the regex steps that follow split those apart.
pub fn digit_groups(cps: &[char], pieces: &[usize], out: &mut Vec<usize>) {
    for_each_piece(cps, pieces, out, |p, cut| {
        let mut pos = p.start;
        while pos < p.end {
            if !p.is(pos, Cat::Number) {
                pos += 1;
                continue;
            }
            let run = pos;
            while p.is(pos, Cat::Number) {
                pos += 1;
            }
            // A run whose length is a multiple of three has no short leading group, and then
            // no cut at its start either.
            let mut at = run + (pos - run) % 3;
            if at > run {
                cut.cut(at);
            }
            while at < pos {
                at += 3;
                cut.cut(at);
            }
        }
        cut.cut(p.end);
    });
}

/// Runs of `\n` and runs of anything else (`[^\n]+|[\n]+`).
pub fn newlines(cps: &[char], pieces: &[usize], out: &mut Vec<usize>) {
    for_each_piece(cps, pieces, out, |p, cut| {
        let mut pos = p.start;
        while pos < p.end {
            let newline = cps[pos] == '\n';
            while pos < p.end && (cps[pos] == '\n') == newline {
                pos += 1;
            }
            cut.cut(pos);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: fn(&[char], &[usize], &mut Vec<usize>), text: &str) -> Vec<String> {
        let cps: Vec<char> = text.chars().collect();
        let mut lens = Vec::new();
        f(&cps, &[cps.len()], &mut lens);
        assert_eq!(lens.iter().sum::<usize>(), cps.len());
        let mut at = 0;
        lens.iter()
            .map(|&n| {
                at += n;
                cps[at - n..at].iter().collect()
            })
            .collect()
    }

    #[test]
    fn kimi_k2_words_han_digits_spaces() {
        assert_eq!(
            run(kimi_k2, "I'M 中文ok 12345  x\r\n\ty"),
            [
                "I'M", " ", "中文", "ok", " ", "123", "45", " ", " x", "\r\n", "\ty"
            ]
        );
        assert_eq!(run(kimi_k2, "a.b!? \n"), ["a", ".b", "!?", " \n"]);
    }

    #[test]
    fn digit_groups_glue_the_text_before() {
        assert_eq!(run(digit_groups, "1234567"), ["1", "234", "567"]);
        assert_eq!(
            run(digit_groups, "ab12345 x 999"),
            ["ab12", "345", " x 999"]
        );
        assert_eq!(run(digit_groups, "no digits"), ["no digits"]);
    }

    #[test]
    fn newline_runs() {
        assert_eq!(run(newlines, "a b\n\nc\n"), ["a b", "\n\n", "c", "\n"]);
    }
}
