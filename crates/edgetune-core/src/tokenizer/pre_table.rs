//! The table of llama.cpp's BPE pre-tokenizers: every `tokenizer.ggml.pre` name its vocabulary
//! loader accepts, the pre-tokenizer type the name selects, and each type's split steps.
//!
//! Two levels, as in llama.cpp: a *type* ([`PreType`]) fixes the split steps and how words reach
//! BPE; a *name* ([`PreName`]) picks a type plus per-name flags (several names share a type
//! with different flags, e.g. `qwen2` keeps spaces before punctuation when decoding, `megrez`
//! does not). The regexes are llama.cpp's, unchanged: [`super::pre_regex`] gives them the meaning
//! they have there.

/// One split step: every piece the previous step made is split again; matches and the stretches
/// between them are both pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// An ECMAScript regex, as llama.cpp writes it.
    Regex(&'static str),
    /// Kimi-K2's hand-written word splitter ([`super::pre_custom::kimi_k2`]).
    KimiK2,
    /// Digit runs cut into groups of three from the right ([`super::pre_custom::digit_groups`]).
    DigitGroups,
    /// Runs of `\n` and runs of anything else ([`super::pre_custom::newlines`]).
    Newlines,
}

/// A pre-tokenizer type: how text becomes the words BPE merges.
#[derive(Debug)]
pub struct PreType {
    /// llama.cpp's name of the type, for messages.
    pub name: &'static str,
    pub steps: &'static [Step],
    /// Words are UTF-8 bytes written as GPT-2's printable characters ("Ġ" for a space); when
    /// false, BPE runs on raw UTF-8 and unknown characters fall back to `<0xXX>` byte tokens.
    pub byte_encode: bool,
    /// mmBERT's Metaspace words: each word starts with "▁" and is cut before every other "▁".
    pub metaspace: bool,
    /// A word of only newlines that is a token is taken whole, without merging.
    pub newline_words: bool,
    /// BOS is added even when the file says `add_bos_token = false` (Gemma 4).
    pub force_bos: bool,
}

const fn ty(name: &'static str, steps: &'static [Step]) -> PreType {
    PreType {
        name,
        steps,
        byte_encode: true,
        metaspace: false,
        newline_words: false,
        force_bos: false,
    }
}

/// Words go to BPE as raw UTF-8 (SentencePiece-style vocabularies stored as `gpt2`).
const fn raw_utf8(mut t: PreType) -> PreType {
    t.byte_encode = false;
    t
}

use Step::{DigitGroups, KimiK2, Newlines, Regex};

// The regexes several types share.
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const CJK_KANA: &str = r"[一-龥぀-ゟ゠-ヿ]+";
const CJK_HANGUL: &str = r"[一-龥ࠀ-一가-퟿]+";
const PORO: &str = r" ?[^(\s|.,!?…。，、।۔،)]+";

pub static DEFAULT: PreType = ty(
    "default",
    &[
        Regex(r"[\p{P}\$\+<=>\^~\|]+"),
        Regex(GPT2),
        Regex(r"\p{N}+"),
        Regex(r"[0-9][0-9][0-9]"),
    ],
);
static LLAMA3_T: PreType = ty("llama3", &[Regex(LLAMA3)]);
static JAIS2: PreType = ty(
    "jais2",
    &[Regex(
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
    )],
);
static DBRX: PreType = ty("dbrx", &[Regex(LLAMA3)]);
static SMAUG: PreType = ty("smaug", &[Regex(LLAMA3)]);
static CHATGLM4: PreType = ty("chatglm4", &[Regex(LLAMA3)]);
/// Six characters of the letter class change under Unicode normalization (U+1F7D, U+1FBE,
/// U+1FD3, U+1FDB, U+2126, U+212A), so they are written as `\x{..}`: an editor that normalizes
/// the file cannot then turn `ῐ-\x{1FD3}` into the empty range `ῐ-ΐ`.
static DEEPSEEK_LLM: PreType = ty(
    "deepseek-llm",
    &[
        Regex(r"[\r\n]"),
        Regex(
            r"\s?[A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-\x{1F7D}ᾀ-ᾴᾶ-ᾼ\x{1FBE}ῂ-ῄῆ-ῌῐ-\x{1FD3}ῖ-\x{1FDB}ῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\x{2126}ℨ\x{212A}-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃]+",
        ),
        Regex(r"\s?[!-/:-~！-／：-～‘-‟　-。]+"),
        Regex(r"\s+$"),
        Regex(CJK_HANGUL),
        Regex(r"\p{N}+"),
    ],
);
const DEEPSEEK3_STEPS: &[Step] = &[
    Regex(r"\p{N}{1,3}"),
    Regex(CJK_KANA),
    Regex(concat!(
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"##,
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    )),
];
static DEEPSEEK3: PreType = ty("deepseek3-llm", DEEPSEEK3_STEPS);
static HUNYUAN_DENSE: PreType = ty("hunyuan-dense", DEEPSEEK3_STEPS);
static JOYAI_LLM: PreType = ty("joyai-llm", DEEPSEEK3_STEPS);
static HY_V4: PreType = ty("hy_v4", DEEPSEEK3_STEPS);
static SPARK2_5: PreType = ty(
    "spark2_5",
    &[
        Regex(r"\p{N}{1,3}"),
        Regex(CJK_KANA),
        Regex(concat!(
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"##,
            r"| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+"
        )),
        Regex(r"\p{N}"),
    ],
);
static YOUTU: PreType = ty(
    "youtu",
    &[
        Regex(r"[가-힣ㄱ-ㆎ]+|[！…“”‘’—：；，、-〿︰-﹏]+|[ㄅ-ㄯ]+|[一-龥぀-ゟ゠-ヿ]+"),
        Regex(concat!(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
            r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )),
    ],
);
static DEEPSEEK_CODER: PreType = ty(
    "deepseek-coder",
    &[
        Regex(r"[\r\n]"),
        Regex(r"\s?\p{L}+"),
        Regex(r"\s?\p{P}+"),
        Regex(CJK_HANGUL),
        Regex(r"\p{N}"),
    ],
);
static FALCON: PreType = ty(
    "falcon",
    &[
        Regex(r"[\p{P}\$\+<=>\^~\|`]+"),
        Regex(GPT2),
        Regex(r"[0-9][0-9][0-9]"),
    ],
);
/// StarCoder's steps, shared by several types: single digits, then GPT-2's regex.
const STARCODER_STEPS: &[Step] = &[Regex(r"\p{N}"), Regex(GPT2)];
static STARCODER: PreType = ty("starcoder", STARCODER_STEPS);
static REFACT: PreType = ty("refact", STARCODER_STEPS);
static COMMAND_R: PreType = ty("command-r", STARCODER_STEPS);
static SMOLLM: PreType = ty("smollm", STARCODER_STEPS);
static CODESHELL: PreType = ty("codeshell", STARCODER_STEPS);
static EXAONE: PreType = ty("exaone", STARCODER_STEPS);
static MINERVA: PreType = ty("minerva", STARCODER_STEPS);
static MELLUM2: PreType = ty("mellum2", STARCODER_STEPS);
static GPT2_T: PreType = ty("gpt2", &[Regex(GPT2)]);
static MPT: PreType = ty("mpt", &[Regex(GPT2)]);
static OLMO: PreType = ty("olmo", &[Regex(GPT2)]);
static JAIS: PreType = ty("jais", &[Regex(GPT2)]);
static TRILLION: PreType = ty("trillion", &[Regex(GPT2)]);
static GRANITE_DOCLING: PreType = ty("granite-docling", &[Regex(GPT2)]);
static QWEN2_T: PreType = ty("qwen2", &[Regex(QWEN2)]);
static STABLELM2: PreType = ty("stablelm2", &[Regex(QWEN2)]);
static HUNYUAN: PreType = ty("hunyuan", &[Regex(QWEN2)]);
static SOLAR_OPEN: PreType = ty("solar-open", &[Regex(QWEN2)]);
static QWEN35: PreType = ty(
    "qwen35",
    &[Regex(
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    )],
);
static PORO_T: PreType = ty("poro", &[Regex(PORO)]);
static BLOOM: PreType = ty("bloom", &[Regex(PORO)]);
static GPT3_FINNISH: PreType = ty("gpt3-finnish", &[Regex(PORO)]);
static VIKING: PreType = ty("viking", &[Regex(PORO), Regex(r"\p{N}")]);
static TEKKEN: PreType = ty(
    "tekken",
    &[Regex(concat!(
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
        r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
        r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ))],
);
static CHAMELEON: PreType = ty(
    "chameleon",
    &[
        Regex(r"<sentinel:[0-9]+>"),
        Regex(r"(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z"),
        Regex(r"([\t\n]|    |  )"),
        Regex(r"\p{N}"),
        Regex(r"[\p{P}!-/:-@\[-`{-~]"),
        Regex(GPT2),
    ],
);
const GPT4O_STEPS: &[Step] = &[Regex(concat!(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
))];
static GPT4O: PreType = ty("gpt4o", GPT4O_STEPS);
static MINIMAX_M2: PreType = ty("minimax-m2", GPT4O_STEPS);
static GRANITE_EMB_MULTI: PreType = ty(
    "granite-emb-multi",
    &[Regex(concat!(
        r"[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))*((?=[\p{L}\p{M}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
        r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}\p{M}])([^a-z]))+((?=[\p{L}\p{M}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
        r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ))],
);
/// Tiny Aya: its digit regex `\d{1,3}(?=(?:\d{3})*\b)` is run by llama.cpp as the AFMoE digit
/// grouping, so that is what runs here.
static TINY_AYA: PreType = ty(
    "tiny_aya",
    &[
        DigitGroups,
        Regex(concat!(
            r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
            r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
            r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )),
    ],
);
static KIMI_K2: PreType = ty("kimi-k2", &[KimiK2]);
static SUPERBPE: PreType = ty(
    "superbpe",
    &[Regex(r"\p{N}+"), Regex(r"(?=(\d{3})+(?!\d))")],
);
static BAILINGMOE: PreType = ty(
    "bailingmoe",
    &[Regex(
        r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
    )],
);
static SEED_CODER: PreType = ty(
    "seed-coder",
    &[Regex(
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    )],
);
static UFAKZEKA: PreType = ty(
    "ufakzeka",
    &[Regex(
        r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    )],
);
static GROK_2: PreType = ty("grok-2", &[Regex(QWEN2)]);
static AFMOE: PreType = ty(
    "afmoe",
    &[
        DigitGroups,
        Regex(r"[一-鿿㐀-䶿豈-﫿぀-ゟ゠-ヿ･-ﾟ⼀-⿟เ-๿຀-໿ក-៿က-႟ꩠ-ꩿꧠ-꧿가-힯ᄀ-ᇿ]+"),
        Regex(concat!(
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"##,
            r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        )),
    ],
);
static LAGUNA: PreType = ty("laguna", &[Newlines, Regex(QWEN2)]);
static EXAONE_MOE: PreType = ty(
    "exaone-moe",
    &[Regex(
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+",
    )],
);
/// Gemma 4: the normalizer writes spaces as "▁" and BPE runs on whole lines.
static GEMMA4: PreType = PreType {
    newline_words: true,
    force_bos: true,
    ..raw_utf8(ty("gemma4", &[Newlines]))
};
static SARVAM_MOE: PreType = raw_utf8(ty("sarvam-moe", &[Newlines]));
static MMBERT: PreType = PreType {
    metaspace: true,
    newline_words: true,
    ..raw_utf8(ty("mmbert", &[Newlines]))
};
static MINICPM5: PreType = ty(
    "minicpm5",
    &[
        Regex(r"\p{N}{1,3}"),
        Regex(
            r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
    ],
);
static WHITESPACE: PreType = raw_utf8(ty("whitespace", &[Regex(r"\S+")]));

/// What one or more `tokenizer.ggml.pre` names select.
#[derive(Debug)]
pub struct PreName {
    pub names: &'static [&'static str],
    pub ty: &'static PreType,
    /// A word that is already a token is taken whole, without running the merges.
    pub ignore_merges: bool,
    /// Decoding removes the space before punctuation and contractions (Hugging Face's
    /// `clean_up_tokenization_spaces`). Kept for callers that detokenize like llama.cpp; this
    /// crate's decoder does not, so that `decode(encode(s)) == s`.
    pub clean_spaces: bool,
    /// Spaces are written as "▁" before splitting (SentencePiece-style vocabularies).
    pub escape_whitespaces: bool,
    /// BOS is added when the file has no `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// llama.cpp appends a separator token for embedding and reranking; unused for generation.
    pub add_sep: bool,
}

const fn row(names: &'static [&'static str], ty: &'static PreType) -> PreName {
    PreName {
        names,
        ty,
        ignore_merges: false,
        clean_spaces: true,
        escape_whitespaces: false,
        add_bos: false,
        add_sep: false,
    }
}

impl PreName {
    const fn ignore_merges(mut self) -> Self {
        self.ignore_merges = true;
        self
    }
    const fn keep_spaces(mut self) -> Self {
        self.clean_spaces = false;
        self
    }
    const fn escape(mut self) -> Self {
        self.escape_whitespaces = true;
        self
    }
    const fn bos(mut self) -> Self {
        self.add_bos = true;
        self
    }
    const fn sep(mut self) -> Self {
        self.add_sep = true;
        self
    }
}

/// A file without `tokenizer.ggml.pre`: llama.cpp's `default`, with a warning.
pub static MISSING: PreName = row(&[], &DEFAULT);

/// Every name llama.cpp's vocabulary loader accepts. The GLM rows also have no default BOS id in
/// llama.cpp; edgetune has none for any `gpt2` file, so there is nothing to drop.
pub static PRE_NAMES: &[PreName] = &[
    row(&["default"], &DEFAULT),
    row(&["minicpm5"], &MINICPM5).ignore_merges(),
    row(
        &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        &LLAMA3_T,
    )
    .ignore_merges()
    .bos(),
    row(&["deepseek-llm"], &DEEPSEEK_LLM).keep_spaces(),
    row(&["deepseek-coder"], &DEEPSEEK_CODER).keep_spaces(),
    row(&["deepseek-v3"], &DEEPSEEK3).keep_spaces(),
    row(&["spark2_5"], &SPARK2_5).keep_spaces(),
    row(&["youtu"], &YOUTU).keep_spaces().ignore_merges(),
    row(&["falcon"], &FALCON),
    row(&["mpt"], &MPT),
    row(&["starcoder"], &STARCODER),
    row(
        &[
            "gpt-2",
            "phi-2",
            "jina-es",
            "jina-de",
            "gigachat",
            "jina-v2-es",
            "jina-v2-de",
            "a.x-4.0",
            "mellum",
            "modern-bert",
        ],
        &GPT2_T,
    ),
    row(&["jais-2"], &JAIS2),
    row(&["gemma4", "granite-embed-multi-311m"], &GEMMA4).escape(),
    row(&["mmbert"], &MMBERT).escape(),
    row(&["sarvam-moe"], &SARVAM_MOE).escape().keep_spaces(),
    row(&["jina-v1-en", "jina-v2-code", "roberta-bpe"], &GPT2_T).sep(),
    row(&["whitespace"], &WHITESPACE),
    row(&["refact"], &REFACT),
    row(&["command-r"], &COMMAND_R).keep_spaces(),
    row(&["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2"], &QWEN2_T).keep_spaces(),
    row(&["qwen35"], &QWEN35).keep_spaces(),
    row(&["stablelm2"], &STABLELM2),
    row(&["olmo"], &OLMO),
    row(&["dbrx"], &DBRX),
    row(&["smaug-bpe"], &SMAUG),
    row(&["poro-chat"], &PORO_T).keep_spaces(),
    row(&["chatglm-bpe"], &CHATGLM4),
    row(&["glm4", "glm5"], &CHATGLM4).ignore_merges(),
    row(&["viking"], &VIKING).keep_spaces(),
    row(&["jais"], &JAIS),
    row(&["tekken"], &TEKKEN)
        .keep_spaces()
        .ignore_merges()
        .bos(),
    row(&["smollm"], &SMOLLM).keep_spaces(),
    row(&["codeshell"], &CODESHELL),
    row(&["bloom"], &BLOOM),
    row(&["gpt3-finnish"], &GPT3_FINNISH),
    row(&["exaone"], &EXAONE),
    row(&["exaone4"], &GPT2_T),
    row(&["exaone-moe"], &EXAONE_MOE),
    row(&["chameleon"], &CHAMELEON).bos().keep_spaces(),
    row(&["minerva-7b"], &MINERVA),
    row(&["megrez"], &QWEN2_T),
    row(&["gpt-4o", "llama4", "kanana2", "talkie"], &GPT4O).keep_spaces(),
    row(&["granite-embed-multi-97m"], &GRANITE_EMB_MULTI)
        .keep_spaces()
        .ignore_merges(),
    row(&["tiny_aya", "cohere2moe"], &TINY_AYA).keep_spaces(),
    row(&["superbpe"], &SUPERBPE).keep_spaces(),
    row(&["trillion"], &TRILLION).keep_spaces(),
    row(&["granite-docling"], &GRANITE_DOCLING).keep_spaces(),
    row(&["bailingmoe", "bailingmoe2", "llada-moe"], &BAILINGMOE).keep_spaces(),
    row(&["seed-coder"], &SEED_CODER).keep_spaces(),
    row(&["hunyuan"], &HUNYUAN).keep_spaces(),
    row(&["hunyuan-dense"], &HUNYUAN_DENSE).keep_spaces(),
    row(&["hy_v4"], &HY_V4).keep_spaces(),
    row(&["joyai-llm"], &JOYAI_LLM).keep_spaces(),
    row(&["kimi-k2"], &KIMI_K2).keep_spaces(),
    row(&["ufakzeka"], &UFAKZEKA).keep_spaces(),
    row(&["grok-2"], &GROK_2).keep_spaces(),
    row(&["afmoe"], &AFMOE).keep_spaces(),
    row(&["laguna"], &LAGUNA).keep_spaces(),
    row(&["minimax-m2"], &MINIMAX_M2).keep_spaces(),
    row(&["solar-open"], &SOLAR_OPEN).keep_spaces(),
    row(&["mellum2"], &MELLUM2),
];

/// The row for a `tokenizer.ggml.pre` value; `None` for a name llama.cpp does not know.
pub fn lookup(pre: &str) -> Option<&'static PreName> {
    PRE_NAMES.iter().find(|r| r.names.contains(&pre))
}

/// Every accepted name, in table order.
pub fn names() -> impl Iterator<Item = &'static str> {
    PRE_NAMES.iter().flat_map(|r| r.names.iter().copied())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_resolve() {
        let all: Vec<&str> = names().collect();
        let mut sorted = all.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), all.len(), "a name appears twice");
        assert_eq!(lookup("smollm").unwrap().ty.name, "smollm");
        assert!(lookup("llama-bpe").unwrap().ignore_merges);
        assert!(lookup("megrez").unwrap().clean_spaces && !lookup("qwen2").unwrap().clean_spaces);
        assert!(lookup("no-such-pre").is_none());
    }
}
