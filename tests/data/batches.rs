//! Examples → ids and labels with the test model's byte-level tokenizer (loss masks decoded
//! back to exactly the response + EOS), and batching: truncation and packing shapes, seeded
//! shuffling, stopping, and resuming from a saved cursor.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use edgetune::data::{
    self, Batch, BatchConfig, Batcher, Content, Cursor, Example, IGNORE, TokenizeOptions,
    TokenizedExample,
};
use edgetune::gguf::GgufFile;
use edgetune::testmodel::{self, WeightTypes};
use edgetune::tokenizer::Tokenizer;
use edgetune::tokenizer::template::Message;

/// The test model's vocabulary: 256 byte tokens, then these control tokens.
const BOS: u32 = 256;
const EOS: u32 = 257;
const START_HEADER: u32 = 258;
const EOT: u32 = 260;

fn tok() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        testmodel::write_test_model(&testmodel::TINY, WeightTypes::Q4KM, 1, &path).unwrap();
        Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap()
    })
}

fn example(content: Content) -> Example {
    Example {
        content,
        task: None,
        line: 1,
    }
}

fn targets_text(t: &TokenizedExample) -> String {
    tok().decode(&t.target_ids()).unwrap()
}

#[test]
fn alpaca_loss_on_response_and_eos_only() {
    let ex = example(Content::Alpaca {
        instruction: "Turn on fan 3.".into(),
        input: "zone B".into(),
        output: "{\"fan\":3,\"on\":true}".into(),
    });
    let t = data::tokenize(tok(), &ex, &TokenizeOptions::default()).unwrap();
    assert_eq!(t.ids.len(), t.labels.len());
    assert_eq!(t.ids[0], BOS);
    assert_eq!(*t.ids.last().unwrap(), EOS);
    assert_eq!(targets_text(&t), "{\"fan\":3,\"on\":true}<|end_of_text|>");
    // Labels repeat the ids where they are not ignored (HF convention, unshifted).
    for (&id, &l) in t.ids.iter().zip(&t.labels) {
        assert!(l == IGNORE || l == id as i32);
    }
    // The ignored part decodes to the prompt, which ends with the response header.
    let n_prompt = t.labels.iter().take_while(|&&l| l == IGNORE).count();
    let prompt = tok().decode(&t.ids[..n_prompt]).unwrap();
    assert!(prompt.starts_with("<|begin_of_text|>Below is an instruction"));
    assert!(
        prompt.ends_with("### Input:\nzone B\n\n### Response:\n"),
        "{prompt:?}"
    );

    let all = data::tokenize(
        tok(),
        &ex,
        &TokenizeOptions {
            train_on_prompt: true,
            ..TokenizeOptions::default()
        },
    )
    .unwrap();
    assert_eq!(all.ids, t.ids);
    assert_eq!(all.labels[0], IGNORE);
    assert_eq!(all.target_ids(), all.ids[1..].to_vec());
}

#[test]
fn chat_loss_on_assistant_turns_with_eot() {
    let ex = example(Content::Chat {
        messages: vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello!"),
            Message::new("user", "Status?"),
            Message::new("assistant", " All sensors OK. "),
        ],
    });
    let t = data::tokenize(tok(), &ex, &TokenizeOptions::default()).unwrap();
    assert_eq!(t.ids[0], BOS);
    assert_eq!(t.ids[1], START_HEADER);
    assert_eq!(*t.ids.last().unwrap(), EOT);
    assert_eq!(t.ids.iter().filter(|&&i| i == EOT).count(), 5);
    assert_eq!(
        targets_text(&t),
        "Hello!<|eot_id|>All sensors OK.<|eot_id|>"
    );
    // The two assistant turns are two separate runs of targets.
    let starts = (1..t.labels.len())
        .filter(|&i| t.labels[i] != IGNORE && t.labels[i - 1] == IGNORE)
        .count();
    assert_eq!(starts, 2);
}

#[test]
fn text_and_pretokenized() {
    let t = data::tokenize(
        tok(),
        &example(Content::Text {
            text: "gateway log".into(),
        }),
        &TokenizeOptions::default(),
    )
    .unwrap();
    assert_eq!(t.ids.len(), 1 + 11 + 1);
    assert_eq!((t.ids[0], *t.ids.last().unwrap()), (BOS, EOS));
    assert_eq!(targets_text(&t), "gateway log<|end_of_text|>");

    let plain = example(Content::PreTokenized {
        input_ids: vec![5, 6, 7, 8],
        labels: None,
    });
    let t = data::tokenize(tok(), &plain, &TokenizeOptions::default()).unwrap();
    assert_eq!(t.ids, vec![5, 6, 7, 8]);
    assert_eq!(t.labels, vec![IGNORE, 6, 7, 8]);
    let labelled = example(Content::PreTokenized {
        input_ids: vec![5, 6, 7, 8],
        labels: Some(vec![5, -100, 7, -100]),
    });
    let t = data::tokenize(tok(), &labelled, &TokenizeOptions::default()).unwrap();
    assert_eq!(t.labels, vec![IGNORE, IGNORE, 7, IGNORE]);

    // Ids outside the vocabulary are refused with the file and line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ids.jsonl");
    std::fs::write(
        &path,
        "{\"input_ids\": [1, 2]}\n\n{\"input_ids\": [1, 99999]}\n",
    )
    .unwrap();
    let ds = data::load(&path, None).unwrap();
    let msg = data::tokenize_all(tok(), &ds, &TokenizeOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains(&format!("{}:3: ", path.display())), "{msg}");
    assert!(msg.contains("input_ids[1] = 99999"), "{msg}");
}

#[test]
fn loaded_alpaca_file_tokenizes_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.jsonl");
    let lines: Vec<String> = (0..20)
        .map(|i| format!("{{\"instruction\": \"Count {i}\", \"output\": \"{i}\"}}"))
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let ds = data::load(&path, None).unwrap();
    let t = data::tokenize_all(tok(), &ds, &TokenizeOptions::default()).unwrap();
    for (i, ex) in t.iter().enumerate() {
        assert_eq!(targets_text(ex), format!("{i}<|end_of_text|>"));
    }
}

// ---- batching, on hand-made sequences --------------------------------------------------

/// Example `e` of length `len`: ids `1000 e + position`, every token after the first a target.
fn seqs(lens: &[usize]) -> Vec<TokenizedExample> {
    lens.iter()
        .enumerate()
        .map(|(e, &len)| {
            let ids: Vec<u32> = (0..len as u32).map(|p| 1000 * e as u32 + p).collect();
            let mut labels: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            labels[0] = IGNORE;
            TokenizedExample {
                ids,
                labels,
                task: None,
            }
        })
        .collect()
}

const PAD: u32 = 999_999;

fn cfg(seq_len: usize, batch_size: usize, pack: bool, seed: u64) -> BatchConfig {
    BatchConfig {
        seq_len,
        batch_size,
        pack,
        seed,
        epochs: Some(1),
        max_steps: None,
        pad_id: PAD,
    }
}

/// The examples in a row, as (example index, length), read back from the ids and positions;
/// checks padding and that no target crosses into the next example.
fn row_examples(ids: &[u32], labels: &[i32], pos: &[u32]) -> Vec<(u32, usize)> {
    let mut out: Vec<(u32, usize)> = Vec::new();
    for i in 0..ids.len() {
        if ids[i] == PAD {
            assert!(
                ids[i..].iter().all(|&x| x == PAD),
                "padding only at the end"
            );
            assert!(labels[i..].iter().all(|&l| l == IGNORE));
            assert!(pos[i..].iter().all(|&p| p == 0));
            break;
        }
        let (e, p) = (ids[i] / 1000, ids[i] % 1000);
        assert_eq!(pos[i], p, "position restarts with each example");
        if p == 0 {
            assert_eq!(labels[i], IGNORE, "an example's first token is no target");
            out.push((e, 1));
        } else {
            assert_eq!(labels[i], ids[i] as i32);
            let last = out.last_mut().expect("starts with an example start");
            assert_eq!(last.0, e);
            last.1 += 1;
        }
    }
    out
}

/// All batches of a run, as rows of (example, length).
fn run_all(b: &mut Batcher) -> Vec<Vec<Vec<(u32, usize)>>> {
    let mut out = Batch::new(1, 1);
    let mut all = Vec::new();
    while b.next_batch(&mut out) {
        let rows = (0..out.batch_size)
            .map(|r| {
                let (i, l, p) = out.row(r);
                row_examples(i, l, p)
            })
            .collect::<Vec<_>>();
        assert!(
            rows[out.rows..].iter().all(Vec::is_empty),
            "rows past `rows` are padding"
        );
        assert_eq!(
            out.n_targets,
            out.labels.iter().filter(|&&l| l != IGNORE).count()
        );
        all.push(rows);
    }
    all
}

#[test]
fn truncation_shapes() {
    let data = seqs(&[3, 5, 9, 2, 7]);
    let mut b = Batcher::new(&data, cfg(6, 2, false, 1)).unwrap();
    let s = b.stats();
    assert_eq!((s.rows, s.truncated, s.dropped), (5, 2, 0));
    assert_eq!(b.steps_per_epoch(), 3);
    let batches = run_all(&mut b);
    assert_eq!(batches.len(), 3);
    let mut seen: BTreeMap<u32, usize> = BTreeMap::new();
    for rows in &batches {
        for row in rows {
            assert!(row.len() <= 1);
            for &(e, len) in row {
                assert!(seen.insert(e, len).is_none(), "each example once per epoch");
            }
        }
    }
    let want: BTreeMap<u32, usize> = [(0, 3), (1, 5), (2, 6), (3, 2), (4, 6)].into();
    assert_eq!(seen, want);
    // The last batch of the epoch is partial.
    assert_eq!(batches[2].iter().filter(|r| !r.is_empty()).count(), 1);
}

#[test]
fn packing_keeps_examples_whole() {
    let lens = [3, 5, 9, 2, 7, 4, 4, 1, 6, 12];
    let data = seqs(&lens);
    let mut b = Batcher::new(&data, cfg(10, 3, true, 5)).unwrap();
    let s = b.stats();
    // The one-token example has no target; the 12-token one is cut to 10.
    assert_eq!((s.dropped, s.truncated), (1, 1));
    let batches = run_all(&mut b);
    let mut seen = BTreeMap::new();
    let mut rows = 0;
    for row in batches.iter().flatten().filter(|r| !r.is_empty()) {
        rows += 1;
        assert!(row.iter().map(|x| x.1).sum::<usize>() <= 10);
        for &(e, len) in row {
            assert!(seen.insert(e, len).is_none());
        }
    }
    assert_eq!(rows, s.rows);
    assert!(rows < 9, "packing shares rows ({rows} rows)");
    let want: BTreeMap<u32, usize> = lens
        .iter()
        .enumerate()
        .filter(|&(_, &l)| l > 1)
        .map(|(e, &l)| (e as u32, l.min(10)))
        .collect();
    assert_eq!(seen, want);
}

#[test]
fn examples_without_targets_left_are_dropped() {
    let mut data = seqs(&[4, 4]);
    // Example 1's only target lies past seq_len 3.
    data[1].labels = vec![IGNORE, IGNORE, IGNORE, 1003];
    let b = Batcher::new(&data, cfg(3, 1, false, 0)).unwrap();
    assert_eq!((b.stats().dropped, b.n_rows()), (1, 1));
    let only_prompt = vec![data[1].clone()];
    assert!(Batcher::new(&only_prompt, cfg(3, 1, false, 0)).is_err());
    assert!(Batcher::new(&data, cfg(1, 1, false, 0)).is_err());
    assert!(Batcher::new(&data, cfg(4, 0, false, 0)).is_err());
}

fn order(seed: u64, epochs: u64) -> Vec<u32> {
    let mut c = cfg(8, 4, false, seed);
    c.epochs = Some(epochs);
    let mut b = Batcher::new(&seqs(&[3; 40]), c).unwrap();
    run_all(&mut b)
        .into_iter()
        .flatten()
        .flatten()
        .map(|x| x.0)
        .collect()
}

#[test]
fn shuffling_is_seeded() {
    let a = order(11, 3);
    assert_eq!(a.len(), 120);
    assert_eq!(a, order(11, 3));
    assert_ne!(a, order(12, 3));
    // Each epoch is a permutation, and the epochs differ.
    for ep in a.chunks(40) {
        let mut s = ep.to_vec();
        s.sort();
        assert_eq!(s, (0..40).collect::<Vec<u32>>());
    }
    assert_ne!(a[..40], a[40..80]);
    assert_ne!(a[..40], (0..40).collect::<Vec<u32>>()[..]);
}

#[test]
fn steps_and_epochs_stop_the_run() {
    let data = seqs(&[3; 10]);
    let mut c = cfg(4, 3, false, 0);
    c.epochs = Some(2);
    let mut b = Batcher::new(&data, c.clone()).unwrap();
    assert_eq!(b.total_steps(), Some(8));
    assert_eq!(run_all(&mut b).len(), 8);
    assert!(b.finished());
    c.max_steps = Some(5);
    let mut b = Batcher::new(&data, c.clone()).unwrap();
    assert_eq!(b.total_steps(), Some(5));
    assert_eq!(run_all(&mut b).len(), 5);
    c.epochs = None;
    c.max_steps = Some(9);
    let mut b = Batcher::new(&data, c).unwrap();
    assert_eq!(run_all(&mut b).len(), 9);
}

#[test]
fn cursor_resumes_exactly() {
    let data = seqs(&[3, 4, 5, 6, 2, 3, 4, 5, 6, 7, 2, 2, 3]);
    let mut c = cfg(9, 2, true, 42);
    c.epochs = Some(6);
    let mut a = Batcher::new(&data, c.clone()).unwrap();
    let mut out = Batch::new(2, 9);
    for _ in 0..7 {
        assert!(a.next_batch(&mut out));
    }
    let saved = serde_json::to_string(&a.cursor()).unwrap();
    let rest_a = run_all(&mut a);
    assert!(!rest_a.is_empty());

    let mut b = Batcher::new(&data, c.clone()).unwrap();
    let cursor: Cursor = serde_json::from_str(&saved).unwrap();
    b.restore(&cursor).unwrap();
    assert_eq!(run_all(&mut b), rest_a);

    // A cursor only fits the data and settings it came from.
    let mut other_seed = c.clone();
    other_seed.seed = 43;
    assert!(
        Batcher::new(&data, other_seed)
            .unwrap()
            .restore(&cursor)
            .is_err()
    );
    let mut other_len = c.clone();
    other_len.seq_len = 10;
    assert!(
        Batcher::new(&data, other_len)
            .unwrap()
            .restore(&cursor)
            .is_err()
    );
    let fewer = data[..12].to_vec();
    assert!(Batcher::new(&fewer, c).unwrap().restore(&cursor).is_err());
}

#[test]
fn batches_reuse_their_buffers() {
    let data = seqs(&[5; 9]);
    let mut b = Batcher::new(&data, cfg(8, 2, false, 3)).unwrap();
    let mut out = Batch::new(2, 8);
    let ptrs = (
        out.ids.as_ptr(),
        out.labels.as_ptr(),
        out.positions.as_ptr(),
    );
    while b.next_batch(&mut out) {
        assert_eq!(
            (
                out.ids.as_ptr(),
                out.labels.as_ptr(),
                out.positions.as_ptr()
            ),
            ptrs
        );
        assert_eq!(out.ids.len(), 16);
    }
}
