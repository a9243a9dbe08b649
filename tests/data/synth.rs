//! The synthetic IoT set: determinism, split sizes and disjointness, both languages and all
//! categories present, every answer recomputed here from the numbers in its prompt, and the
//! written JSONL reading back through `data::load` as Alpaca.

use std::collections::{BTreeMap, HashSet};

use edgetune::data::{self, AlpacaExample, Content, Format, synth};

/// The numbers in `s`, with `.` or `,` as the decimal separator (a separator counts only
/// between digits) and `-` as a sign only after a space, `(` or the start.
fn numbers(s: &str) -> Vec<f64> {
    let c: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let signed = c[i] == '-'
            && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())
            && (i == 0 || c[i - 1] == ' ' || c[i - 1] == '(');
        if c[i].is_ascii_digit() || signed {
            let mut t = String::from(c[i]);
            i += 1;
            while i < c.len() && c[i].is_ascii_digit() {
                t.push(c[i]);
                i += 1;
            }
            if i + 1 < c.len() && (c[i] == '.' || c[i] == ',') && c[i + 1].is_ascii_digit() {
                t.push('.');
                i += 1;
                while i < c.len() && c[i].is_ascii_digit() {
                    t.push(c[i]);
                    i += 1;
                }
            }
            out.push(t.parse().unwrap());
        } else {
            i += 1;
        }
    }
    out
}

/// How many decimals `token` (one number as written) has.
fn decimals_of(token: &str) -> i32 {
    token.split(['.', ',']).nth(1).map_or(0, |f| {
        f.chars().take_while(char::is_ascii_digit).count() as i32
    })
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

fn is_indonesian(ex: &AlpacaExample) -> bool {
    [
        "Apakah",
        "Konversikan",
        "Ubah",
        "Jelaskan",
        "Mana",
        "Bilangan",
        "Lanjutkan",
        "Sensor suhu",
        "Sensor kelembapan",
        "Sensor tekanan",
        "Sensor kadar",
        "Sensor getaran",
    ]
    .iter()
    .any(|w| ex.instruction.starts_with(w))
}

#[test]
fn deterministic_and_split() {
    let (train, heldout) = synth::generate(7, 600);
    assert_eq!((train.len(), heldout.len()), (600, 60));
    let again = synth::generate(7, 600);
    assert_eq!((&train, &heldout), (&again.0, &again.1));
    assert_ne!(train, synth::generate(8, 600).0);
    // Prompts are distinct within and across the splits.
    let key = |e: &AlpacaExample| (e.instruction.clone(), e.input.clone());
    let train_keys: HashSet<_> = train.iter().map(key).collect();
    assert_eq!(train_keys.len(), train.len());
    assert!(heldout.iter().all(|e| !train_keys.contains(&key(e))));
    assert_eq!(heldout.iter().map(key).collect::<HashSet<_>>().len(), 60);

    let mut per_task: BTreeMap<&str, [usize; 2]> = BTreeMap::new();
    for e in &train {
        per_task.entry(e.task.as_deref().unwrap()).or_default()[is_indonesian(e) as usize] += 1;
    }
    assert_eq!(per_task.keys().copied().collect::<Vec<_>>(), {
        let mut t = synth::TASKS.to_vec();
        t.sort();
        t
    });
    for (task, [en, id]) in &per_task {
        assert!(
            *en >= 15 && *id >= 15,
            "{task}: {en} English, {id} Indonesian"
        );
    }
}

fn check_threshold(e: &AlpacaExample) {
    let prompt = format!("{}\n{}", e.instruction, e.input);
    let n = numbers(&e.output);
    let yes = e.output.starts_with("Yes.") || e.output.starts_with("Ya.");
    let no = e.output.starts_with("No.") || e.output.starts_with("Tidak.");
    assert!(yes != no, "{e:?}");
    let (r, t) = (n[0], *n.last().unwrap());
    if yes {
        assert!(n.len() == 3 && r > t && close(n[1], r - t), "{e:?}");
    } else if n.len() == 2 {
        assert!(close(r, t), "{e:?}");
    } else {
        assert!(n.len() == 3 && r < t && close(n[1], t - r), "{e:?}");
    }
    // The reading and threshold answered about are the ones asked about.
    let pn = numbers(&prompt);
    assert!(
        pn.iter().any(|&x| close(x, r)) && pn.iter().any(|&x| close(x, t)),
        "{e:?}"
    );
}

fn check_convert(e: &AlpacaExample) {
    let (left, right) = e
        .output
        .split_once(" is ")
        .or_else(|| e.output.split_once(" sama dengan "))
        .unwrap();
    let l: Vec<&str> = left.split_whitespace().collect();
    let r: Vec<&str> = right.split_whitespace().collect();
    let (x, from) = (numbers(l[0])[0], l[1]);
    let (y, to) = (numbers(r[0])[0], r[1]);
    assert!(
        e.instruction.contains(&format!("{} {from} ", l[0])),
        "{e:?}"
    );
    let exact = match (from, to) {
        ("°C", "°F") => x * 1.8 + 32.0,
        ("°F", "°C") => (x - 32.0) / 1.8,
        ("kPa", "psi") => x / 6.894757,
        ("psi", "kPa") => x * 6.894757,
        ("m/s", "km/h") => x * 3.6,
        ("km/h", "m/s") => x / 3.6,
        other => panic!("unexpected units {other:?}"),
    };
    let unit = 10f64.powi(-decimals_of(r[0]));
    assert!(
        (y - exact).abs() <= unit / 2.0 + 1e-6,
        "{e:?}: exact {exact}"
    );
}

fn check_command(e: &AlpacaExample) {
    let v: serde_json::Value = serde_json::from_str(&e.output).unwrap();
    let req = e.input.as_str();
    let actions = [
        ("Turn on", "on"),
        ("Start", "on"),
        ("Switch on", "on"),
        ("Nyalakan", "on"),
        ("Hidupkan", "on"),
        ("Turn off", "off"),
        ("Stop", "off"),
        ("Switch off", "off"),
        ("Matikan", "off"),
        ("Open", "open"),
        ("Buka", "open"),
        ("Close", "close"),
        ("Tutup", "close"),
        ("Set fan", "set_speed"),
        ("Atur kecepatan", "set_speed"),
        ("Set the thermostat", "set_setpoint"),
        ("Atur termostat", "set_setpoint"),
        ("Restart", "restart"),
        ("Mulai ulang", "restart"),
    ];
    let action = actions
        .iter()
        .find(|(w, _)| req.starts_with(w))
        .map(|a| a.1)
        .unwrap_or_else(|| panic!("unknown request {req:?}"));
    assert_eq!(v["action"], action, "{e:?}");
    let devices = [
        ("fan", "kipas"),
        ("pump", "pompa"),
        ("valve", "katup"),
        ("light", "lampu"),
        ("heater", "pemanas"),
        ("thermostat", "termostat"),
        ("gateway", "gateway"),
    ];
    let device = v["device"].as_str().unwrap();
    let (en, id) = devices.iter().find(|d| d.0 == device).unwrap();
    let words: Vec<&str> = req.split_whitespace().collect();
    let at = words
        .iter()
        .position(|w| w == en || w == id)
        .expect("device named");
    if let Some(n) = v.get("id") {
        assert_eq!(words[at + 1].trim_end_matches('.'), n.to_string(), "{e:?}");
    }
    if let Some(z) = v.get("zone") {
        let zi = words
            .iter()
            .position(|w| *w == "zone" || *w == "zona")
            .unwrap();
        assert_eq!(
            words[zi + 1].trim_end_matches('.'),
            z.as_str().unwrap(),
            "{e:?}"
        );
    }
    if let Some(value) = v.get("value") {
        let last = *numbers(req).last().unwrap();
        assert!(close(value.as_f64().unwrap(), last), "{e:?}");
    }
}

fn check_anomaly(e: &AlpacaExample) {
    let series = numbers(e.input.rsplit_once(": ").unwrap().1);
    assert!(series.len() >= 6);
    let mut sorted = series.clone();
    sorted.sort_by(f64::total_cmp);
    let median = (sorted[series.len() / 2] + sorted[(series.len() - 1) / 2]) / 2.0;
    let k = (0..series.len())
        .max_by(|&a, &b| {
            (series[a] - median)
                .abs()
                .total_cmp(&(series[b] - median).abs())
        })
        .unwrap();
    assert!(
        k > 0 && k + 1 < series.len(),
        "the series shows the return to normal"
    );
    let others: Vec<f64> = (0..series.len())
        .filter(|&i| i != k)
        .map(|i| series[i])
        .collect();
    let lo = others.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = others.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let n = numbers(&e.output);
    assert!(close(n[0], (k + 1) as f64), "{e:?}");
    assert!(close(n[1], series[k]), "{e:?}");
    let d = if series[k] > hi {
        series[k] - hi
    } else {
        lo - series[k]
    };
    assert!(d > 0.0 && close(n[2], d), "{e:?}");
    assert!(close(n[3], lo) && close(n[4], hi), "{e:?}");
}

/// Returns whether this was a "trap" (same integer part, the number with fewer decimals larger).
fn check_compare(e: &AlpacaExample) -> bool {
    let q = numbers(&e.instruction);
    assert_eq!(q.len(), 2, "{e:?}");
    let (a, b) = (q[0], q[1]);
    let n = numbers(&e.output);
    if e.output.starts_with("They are equal") || e.output.starts_with("Keduanya sama besar") {
        assert_eq!(a, b, "{e:?}");
        return false;
    }
    assert_ne!(a, b, "{e:?}");
    let larger = ["larger", "bigger", "lebih besar"]
        .iter()
        .any(|w| e.instruction.contains(w));
    let want = if larger { a.max(b) } else { a.min(b) };
    assert_eq!(n[0], want, "{e:?}");
    // The padded restatement holds too.
    let (x, y) = (n[n.len() - 2], n[n.len() - 1]);
    if e.output.contains(" > ") {
        assert!(x > y && larger, "{e:?}");
    } else {
        assert!(e.output.contains(" < ") && x < y && !larger, "{e:?}");
    }
    let texts: Vec<&str> = e
        .instruction
        .split([' ', '?', ':'])
        .filter(|t| t.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .collect();
    let (ta, tb) = (texts[0], texts[1]);
    let (da, db) = (decimals_of(ta), decimals_of(tb));
    a.trunc() == b.trunc() && da != db && (da < db) == (a > b)
}

fn check_fibonacci(e: &AlpacaExample) {
    let seq = numbers(&e.instruction);
    assert!(seq.len() >= 3);
    for w in seq.windows(3) {
        assert_eq!(w[2], w[0] + w[1], "{e:?}");
    }
    let next = numbers(&e.output);
    let mut all = seq.clone();
    all.extend(&next[..3]);
    for w in all.windows(3) {
        assert_eq!(w[2], w[0] + w[1], "{e:?}");
    }
}

#[test]
fn answers_are_correct() {
    let (train, heldout) = synth::generate(3, 3000);
    let mut traps = 0;
    for e in train.iter().chain(&heldout) {
        match e.task.as_deref().unwrap() {
            "threshold" => check_threshold(e),
            "convert" => check_convert(e),
            "command" => check_command(e),
            "anomaly" => check_anomaly(e),
            "compare" => traps += check_compare(e) as usize,
            "fibonacci" => check_fibonacci(e),
            other => panic!("unknown task {other}"),
        }
        assert!(!e.output.trim().is_empty() && !e.instruction.trim().is_empty());
    }
    assert!(traps > 20, "only {traps} 9.11-vs-9.9 style comparisons");
}

#[test]
fn the_classic_comparison_is_answered_right() {
    // Independent of the generator's draws: find any "x.11 vs x.9"-shaped question.
    let (train, _) = synth::generate(1, 5000);
    let found = train
        .iter()
        .filter(|e| e.task.as_deref() == Some("compare"))
        .any(|e| {
            let q = numbers(&e.instruction);
            q.len() == 2 && q[0].trunc() == q[1].trunc() && q[0] != q[1]
        });
    assert!(found);
    assert_eq!(numbers("Which is larger, 9.11 or 9.9?"), vec![9.11, 9.9]);
    assert_eq!(
        numbers("22,1; 22,3; -0,5 (-4) ke-4 T-12"),
        vec![22.1, 22.3, -0.5, -4.0, 4.0, 12.0]
    );
}

#[test]
fn written_set_loads_back_as_alpaca() {
    let (train, _) = synth::generate(5, 200);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iot.jsonl");
    let text: Vec<String> = train
        .iter()
        .map(|e| serde_json::to_string(e).unwrap())
        .collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    let ds = data::load(&path, None).unwrap();
    assert_eq!(ds.format, Format::Alpaca);
    assert_eq!(ds.len(), 200);
    for (e, x) in ds.examples.iter().zip(&train) {
        assert_eq!(
            e.content,
            Content::Alpaca {
                instruction: x.instruction.clone(),
                input: x.input.clone(),
                output: x.output.clone()
            }
        );
        assert_eq!(e.task, x.task);
    }
}
