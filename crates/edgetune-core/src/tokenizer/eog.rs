//! The end-of-generation (EOG) tokens, chosen as llama.cpp chooses them: EOS, EOT and EOM from
//! their keys; the fill-in-the-middle pad, repo and file-separator tokens (from their keys, else
//! found by text); and every token whose text is one of the known end-of-turn texts, whatever
//! its type. llama.cpp also makes those tokens control tokens (so `parse_special` governs them
//! and decoding treats them as control text), and drops two texts that other tokens show to be
//! ordinary: `<|end|>` beside `<|return|>`/`<|call|>` (gpt-oss) or `<|calls|>`/`<|flush|>`
//! (Solar Open), and `</s>` beside `<|tool_response>` (Gemma 4) or `<|plamo:eos|>`.

use std::collections::BTreeSet;

use super::vocab::{GgufVocab, TokenType};

/// Texts that end generation wherever they appear in a vocabulary.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle tokens that end generation, by the texts that identify them when the file
/// has no key for them: (key, texts).
const FIM_EOG: &[(&str, &[&str])] = &[
    (
        "tokenizer.ggml.fim_pad_token_id",
        &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    ),
    (
        "tokenizer.ggml.fim_rep_token_id",
        &[
            "<|fim_repo|>",
            "<|repo_name|>",
            "<fim-repo>",
            "<REPO>",
            "<reponame>",
        ],
    ),
    ("tokenizer.ggml.fim_sep_token_id", &["<|file_sep|>"]),
];

/// The FIM keys whose ids [`GgufVocab`] reads (in [`FIM_EOG`]'s order).
pub fn fim_keys() -> impl Iterator<Item = &'static str> {
    FIM_EOG.iter().map(|(k, _)| *k)
}

/// Makes token `id` a control token, as llama.cpp does for tokens it finds by text.
fn make_control(v: &mut GgufVocab, id: usize) {
    if v.types[id] != TokenType::Control {
        log::warn!(
            "token {id} ({:?}) ends generation but is not a control token; treating it as one",
            v.tokens[id]
        );
        v.types[id] = TokenType::Control;
    }
}

/// The EOG ids of `v`, EOS first, the others in ascending order; adjusts `v.types` as described
/// in the module documentation.
pub fn end_of_generation(v: &mut GgufVocab) -> Vec<u32> {
    let mut eog = BTreeSet::new();
    for (&(_, texts), key_id) in FIM_EOG.iter().zip(v.fim) {
        // llama.cpp takes whichever match its hash map yields first; the lowest id is the
        // deterministic choice (vocabularies hold one of each in practice).
        let id = key_id.map(|id| id as usize).or_else(|| {
            let found = v.tokens.iter().position(|t| texts.contains(&t.as_str()));
            found.inspect(|&i| make_control(v, i))
        });
        eog.extend(id);
    }
    for i in 0..v.tokens.len() {
        if EOG_TEXTS.contains(&v.tokens[i].as_str()) {
            eog.insert(i);
            make_control(v, i);
        }
    }
    eog.extend(
        [v.eos, v.eot, v.eom]
            .into_iter()
            .flatten()
            .map(|id| id as usize),
    );

    let with_text = |eog: &BTreeSet<usize>, text: &str| {
        eog.iter()
            .copied()
            .filter(|&i| v.tokens[i] == text)
            .collect::<Vec<_>>()
    };
    let has = |eog: &BTreeSet<usize>, text: &str| !with_text(eog, text).is_empty();
    let calls = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
    if calls && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
        for i in with_text(&eog, "<|end|>") {
            eog.remove(&i);
            v.types[i] = TokenType::UserDefined;
        }
    }
    if has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>") {
        for i in with_text(&eog, "</s>") {
            eog.remove(&i);
            v.types[i] = TokenType::Normal;
        }
    }

    let eos = v.eos.filter(|id| eog.contains(&(*id as usize)));
    let rest = eog
        .into_iter()
        .map(|i| i as u32)
        .filter(|&i| Some(i) != eos);
    eos.into_iter().chain(rest).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::ModelKind;

    /// A vocabulary of `tokens`, all normal except those listed as control.
    fn vocab(tokens: &[&str], control: &[usize]) -> GgufVocab {
        let mut types = vec![TokenType::Normal; tokens.len()];
        for &i in control {
            types[i] = TokenType::Control;
        }
        GgufVocab {
            kind: ModelKind::Gpt2,
            pre: None,
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            types,
            scores: None,
            merges: Vec::new(),
            bos: None,
            eos: None,
            eot: None,
            eom: None,
            unk: None,
            fim: [None; 3],
            add_bos: None,
            add_space_prefix: false,
        }
    }

    #[test]
    fn smollm2_like_ends() {
        // SmolLM2's first tokens: <reponame> is a FIM repo token, so it ends generation too.
        let mut v = vocab(
            &[
                "<|endoftext|>",
                "<|im_start|>",
                "<|im_end|>",
                "<repo_name>",
                "<reponame>",
                "a",
            ],
            &[0, 1, 2, 3, 4],
        );
        v.eos = Some(2);
        assert_eq!(end_of_generation(&mut v), [2, 0, 4]);
        // A key names the FIM repo token instead: the text is no longer looked for.
        v.fim[1] = Some(5);
        assert_eq!(end_of_generation(&mut v), [2, 0, 5]);
    }

    #[test]
    fn texts_make_control_tokens_and_two_texts_are_dropped() {
        let mut v = vocab(
            &["x", "<|eot_id|>", "<|end|>", "<|return|>", "<|call|>"],
            &[],
        );
        assert_eq!(end_of_generation(&mut v), [1, 3, 4]);
        assert_eq!(v.types[1], TokenType::Control);
        assert_eq!(v.types[2], TokenType::UserDefined);
        assert_eq!(v.types[0], TokenType::Normal);

        let mut v = vocab(&["</s>", "<|tool_response>", "<eos>"], &[0, 1, 2]);
        v.eos = Some(2);
        assert_eq!(end_of_generation(&mut v), [2, 1]);
        assert_eq!(v.types[0], TokenType::Normal);
        // Without the Gemma 4 marker `</s>` ends generation.
        let mut v = vocab(&["</s>", "<eos>"], &[0, 1]);
        assert_eq!(end_of_generation(&mut v), [0, 1]);
    }
}
