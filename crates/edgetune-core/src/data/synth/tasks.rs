//! The generators of the synthetic IoT set, one per category; each returns
//! `(instruction, input, output)` with the answer computed from the numbers it drew.

use rand::Rng;
use rand::rngs::StdRng;

use super::{Lang, fixed, pick, rounded};

/// A sensor kind: names, unit, decimals, and ranges in ticks (units of the last decimal).
struct Sensor {
    en: &'static str,
    id: &'static str,
    prefix: &'static str,
    unit: &'static str,
    decimals: u32,
    reading: (i64, i64),
    threshold: (i64, i64),
    /// Anomaly series: baseline range, noise (±), spike size range, whether dips occur.
    baseline: (i64, i64),
    noise: i64,
    spike: (i64, i64),
    dips: bool,
}

const SENSORS: [Sensor; 5] = [
    Sensor {
        en: "temperature",
        id: "suhu",
        prefix: "T",
        unit: "°C",
        decimals: 1,
        reading: (100, 500),
        threshold: (250, 450),
        baseline: (180, 300),
        noise: 3,
        spike: (50, 150),
        dips: true,
    },
    Sensor {
        en: "humidity",
        id: "kelembapan",
        prefix: "H",
        unit: "%RH",
        decimals: 1,
        reading: (200, 990),
        threshold: (600, 900),
        baseline: (400, 650),
        noise: 10,
        spike: (150, 300),
        dips: true,
    },
    Sensor {
        en: "pressure",
        id: "tekanan",
        prefix: "P",
        unit: "kPa",
        decimals: 1,
        reading: (800, 4000),
        threshold: (1500, 3500),
        baseline: (1500, 3000),
        noise: 20,
        spike: (400, 1000),
        dips: true,
    },
    Sensor {
        en: "CO₂ level",
        id: "kadar CO₂",
        prefix: "Q",
        unit: "ppm",
        decimals: 0,
        reading: (400, 3000),
        threshold: (800, 2000),
        baseline: (450, 900),
        noise: 15,
        spike: (600, 1500),
        dips: false,
    },
    Sensor {
        en: "vibration",
        id: "getaran",
        prefix: "V",
        unit: "mm/s",
        decimals: 1,
        reading: (5, 200),
        threshold: (45, 112),
        baseline: (10, 30),
        noise: 2,
        spike: (50, 100),
        dips: false,
    },
];

const ZONES: [&str; 6] = ["A", "B", "C", "D", "E", "F"];

fn sensor_name(s: &Sensor, lang: Lang) -> &'static str {
    match lang {
        Lang::En => s.en,
        Lang::Id => s.id,
    }
}

/// A sensor reading against its alarm threshold.
pub fn threshold(rng: &mut StdRng, lang: Lang) -> (String, String, String) {
    let s = pick(rng, &SENSORS);
    let t = rng.random_range(s.threshold.0..=s.threshold.1);
    // One time in twenty the reading sits exactly on the threshold ("above" is strict).
    let r = if rng.random_range(0..20) == 0 {
        t
    } else {
        rng.random_range(s.reading.0..=s.reading.1)
    };
    let f = |x: i64| fixed(x, s.decimals, lang);
    let (u, name) = (s.unit, sensor_name(s, lang));
    let sid = format!("{}-{}", s.prefix, rng.random_range(1..=40));
    let zone = pick(rng, &ZONES);
    let (rs, ts, ds) = (f(r), f(t), f((r - t).abs()));
    let with_input = rng.random_bool(0.5);
    let (instruction, input) = match (lang, with_input) {
        (Lang::En, false) => (
            format!(
                "The {name} sensor {sid} in zone {zone} reads {rs} {u}. The alarm threshold is \
                 {ts} {u}. Is the reading above the alarm threshold?"
            ),
            String::new(),
        ),
        (Lang::En, true) => (
            "Is this reading above the alarm threshold?".to_string(),
            format!(
                "Sensor: {sid} ({name}), zone {zone}\nReading: {rs} {u}\nAlarm threshold: {ts} {u}"
            ),
        ),
        (Lang::Id, false) => (
            format!(
                "Sensor {name} {sid} di zona {zone} menunjukkan {rs} {u}. Ambang alarmnya \
                 {ts} {u}. Apakah pembacaan ini di atas ambang alarm?"
            ),
            String::new(),
        ),
        (Lang::Id, true) => (
            "Apakah pembacaan ini melewati ambang alarm?".to_string(),
            format!(
                "Sensor: {sid} ({name}), zona {zone}\nPembacaan: {rs} {u}\nAmbang alarm: {ts} {u}"
            ),
        ),
    };
    let output = match (lang, r.cmp(&t)) {
        (Lang::En, std::cmp::Ordering::Greater) => format!(
            "Yes. The reading of {rs} {u} is {ds} {u} above the alarm threshold of {ts} {u}, \
             so the alarm should be raised."
        ),
        (Lang::En, std::cmp::Ordering::Less) => format!(
            "No. The reading of {rs} {u} is {ds} {u} below the alarm threshold of {ts} {u}, \
             so no alarm is needed."
        ),
        (Lang::En, std::cmp::Ordering::Equal) => format!(
            "No. The reading of {rs} {u} is exactly at the alarm threshold of {ts} {u}, not \
             above it, so the alarm is not raised yet."
        ),
        (Lang::Id, std::cmp::Ordering::Greater) => format!(
            "Ya. Pembacaan {rs} {u} berada {ds} {u} di atas ambang alarm {ts} {u}, jadi alarm \
             harus diaktifkan."
        ),
        (Lang::Id, std::cmp::Ordering::Less) => format!(
            "Tidak. Pembacaan {rs} {u} berada {ds} {u} di bawah ambang alarm {ts} {u}, jadi \
             alarm tidak perlu diaktifkan."
        ),
        (Lang::Id, std::cmp::Ordering::Equal) => format!(
            "Tidak. Pembacaan {rs} {u} tepat sama dengan ambang alarm {ts} {u}, belum di \
             atasnya, jadi alarm belum perlu diaktifkan."
        ),
    };
    (instruction, input, output)
}

/// A unit conversion, rounded to the decimals it prints.
pub fn convert(rng: &mut StdRng, lang: Lang) -> (String, String, String) {
    // (from unit, to unit, target name en, target name id, input range in tenths, output
    // decimals)
    type Conv = (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        (i64, i64),
        u32,
    );
    const CONVS: [Conv; 6] = [
        (
            "°C",
            "°F",
            "degrees Fahrenheit",
            "derajat Fahrenheit",
            (-300, 600),
            1,
        ),
        (
            "°F",
            "°C",
            "degrees Celsius",
            "derajat Celsius",
            (-200, 1400),
            1,
        ),
        ("kPa", "psi", "psi", "psi", (500, 10000), 2),
        ("psi", "kPa", "kPa", "kPa", (50, 1500), 1),
        ("m/s", "km/h", "km/h", "km/h", (5, 600), 2),
        ("km/h", "m/s", "m/s", "m/s", (10, 2000), 2),
    ];
    let k = rng.random_range(0..CONVS.len());
    let (from, to, name_en, name_id, range, dec) = CONVS[k];
    let ticks = rng.random_range(range.0..=range.1);
    let x = ticks as f64 / 10.0;
    const KPA_PER_PSI: f64 = 6.894_757_293_168;
    let y = match k {
        0 => x * 9.0 / 5.0 + 32.0,
        1 => (x - 32.0) * 5.0 / 9.0,
        2 => x / KPA_PER_PSI,
        3 => x * KPA_PER_PSI,
        4 => x * 3.6,
        _ => x / 3.6,
    };
    let (xs, ys) = (fixed(ticks, 1, lang), rounded(y, dec, lang));
    let rule = match (k, lang) {
        (0, _) => "°F = °C × 9/5 + 32".to_string(),
        (1, _) => "°C = (°F − 32) × 5/9".to_string(),
        (2 | 3, Lang::En) => "1 psi ≈ 6.895 kPa".to_string(),
        (2 | 3, Lang::Id) => "1 psi ≈ 6,895 kPa".to_string(),
        (_, Lang::En) => "1 m/s = 3.6 km/h".to_string(),
        (_, Lang::Id) => "1 m/s = 3,6 km/h".to_string(),
    };
    match lang {
        Lang::En => (
            format!("Convert {xs} {from} to {name_en}."),
            String::new(),
            format!("{xs} {from} is {ys} {to} ({rule})."),
        ),
        Lang::Id => (
            format!("Konversikan {xs} {from} ke {name_id}."),
            String::new(),
            format!("{xs} {from} sama dengan {ys} {to} ({rule})."),
        ),
    }
}

/// An operator's request → a JSON command (keys and decimals language-neutral).
pub fn command(rng: &mut StdRng, lang: Lang) -> (String, String, String) {
    let zone = *pick(rng, &ZONES);
    let n = rng.random_range(1..=12);
    // (device, action, English request, Indonesian request); `{n}` `{z}` `{v}` filled below.
    const SWITCHES: [(&str, &str, &str, &str); 10] = [
        (
            "fan",
            "on",
            "Turn on fan {n} in zone {z}.",
            "Nyalakan kipas {n} di zona {z}.",
        ),
        (
            "fan",
            "off",
            "Turn off fan {n} in zone {z}.",
            "Matikan kipas {n} di zona {z}.",
        ),
        (
            "pump",
            "on",
            "Start pump {n} in zone {z}.",
            "Hidupkan pompa {n} di zona {z}.",
        ),
        (
            "pump",
            "off",
            "Stop pump {n} in zone {z}.",
            "Matikan pompa {n} di zona {z}.",
        ),
        (
            "valve",
            "open",
            "Open valve {n} in zone {z}.",
            "Buka katup {n} di zona {z}.",
        ),
        (
            "valve",
            "close",
            "Close valve {n} in zone {z}.",
            "Tutup katup {n} di zona {z}.",
        ),
        (
            "light",
            "on",
            "Switch on light {n} in zone {z}.",
            "Nyalakan lampu {n} di zona {z}.",
        ),
        (
            "light",
            "off",
            "Switch off light {n} in zone {z}.",
            "Matikan lampu {n} di zona {z}.",
        ),
        (
            "heater",
            "on",
            "Turn on heater {n} in zone {z}.",
            "Nyalakan pemanas {n} di zona {z}.",
        ),
        (
            "heater",
            "off",
            "Turn off heater {n} in zone {z}.",
            "Matikan pemanas {n} di zona {z}.",
        ),
    ];
    let pick_lang = |en: &str, id: &str| match lang {
        Lang::En => en.to_string(),
        Lang::Id => id.to_string(),
    };
    let kind = rng.random_range(0..SWITCHES.len() + 3);
    let (request, json) = if kind < SWITCHES.len() {
        let (device, action, en, id) = SWITCHES[kind];
        (
            pick_lang(en, id),
            format!(r#"{{"device":"{device}","id":{n},"zone":"{zone}","action":"{action}"}}"#),
        )
    } else if kind == SWITCHES.len() {
        let pct = 5 * rng.random_range(2..=20);
        (
            pick_lang(
                "Set fan {n} in zone {z} to {v}% speed.",
                "Atur kecepatan kipas {n} di zona {z} ke {v}%.",
            )
            .replace("{v}", &pct.to_string()),
            format!(
                r#"{{"device":"fan","id":{n},"zone":"{zone}","action":"set_speed","value":{pct}}}"#
            ),
        )
    } else if kind == SWITCHES.len() + 1 {
        let half_degrees = rng.random_range(32..=56);
        let setpoint = fixed(half_degrees * 5, 1, lang);
        let json_value = fixed(half_degrees * 5, 1, Lang::En);
        (
            pick_lang(
                "Set the thermostat in zone {z} to {v} °C.",
                "Atur termostat di zona {z} ke {v} °C.",
            )
            .replace("{v}", &setpoint),
            format!(
                r#"{{"device":"thermostat","zone":"{zone}","action":"set_setpoint","value":{json_value}}}"#
            ),
        )
    } else {
        (
            pick_lang("Restart gateway {n}.", "Mulai ulang gateway {n}."),
            format!(r#"{{"device":"gateway","id":{n},"action":"restart"}}"#),
        )
    };
    let request = request.replace("{n}", &n.to_string()).replace("{z}", zone);
    let instruction = pick_lang(
        "Convert the operator's request into a JSON command for the gateway.",
        "Ubah permintaan operator berikut menjadi perintah JSON untuk gateway.",
    );
    (instruction, request, json)
}

/// A short series of readings with one spike or dip, explained.
pub fn anomaly(rng: &mut StdRng, lang: Lang) -> (String, String, String) {
    let s = pick(rng, &SENSORS);
    let len = rng.random_range(6..=8usize);
    let base = rng.random_range(s.baseline.0..=s.baseline.1);
    let mut xs: Vec<i64> = (0..len)
        .map(|_| base + rng.random_range(-s.noise..=s.noise))
        .collect();
    // Never first or last: the series shows the values before and the return after.
    let k = rng.random_range(1..len - 1);
    let up = !s.dips || rng.random_bool(0.6);
    let jump = rng.random_range(s.spike.0..=s.spike.1);
    xs[k] = if up { base + jump } else { base - jump };
    let others = xs
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != k)
        .map(|(_, &x)| x);
    let (lo, hi) = (
        others.clone().min().unwrap_or(base),
        others.max().unwrap_or(base),
    );
    let d = if up { xs[k] - hi } else { lo - xs[k] };
    let f = |x: i64| fixed(x, s.decimals, lang);
    let (u, name) = (s.unit, sensor_name(s, lang));
    let sid = format!("{}-{}", s.prefix, rng.random_range(1..=40));
    let sep = match lang {
        Lang::En => ", ",
        Lang::Id => "; ",
    };
    let series = xs.iter().map(|&x| f(x)).collect::<Vec<_>>().join(sep);
    let (v, ds, los, his, pos) = (f(xs[k]), f(d), f(lo), f(hi), k + 1);
    match lang {
        Lang::En => {
            let (dir, kind) = if up {
                ("above the highest", "jump")
            } else {
                ("below the lowest", "drop")
            };
            (
                "Explain the anomaly in these sensor readings.".to_string(),
                format!("Sensor {sid} ({name}, one reading per minute): {series} {u}"),
                format!(
                    "Reading {pos} ({v} {u}) is an anomaly: it is {ds} {u} {dir} of the other \
                     readings, which stay between {los} and {his} {u}, and the next reading is \
                     back to normal. A single-sample {kind} like this is more likely a sensor \
                     glitch or electrical noise than a real change in {name}; check the \
                     sensor's wiring and connection, and treat the value as suspect unless it \
                     repeats."
                ),
            )
        }
        Lang::Id => {
            let (dir, kind) = if up {
                ("di atas pembacaan tertinggi", "Lonjakan")
            } else {
                ("di bawah pembacaan terendah", "Penurunan")
            };
            (
                "Jelaskan anomali pada data sensor berikut.".to_string(),
                format!("Sensor {sid} ({name}, satu pembacaan per menit): {series} {u}"),
                format!(
                    "Pembacaan ke-{pos} ({v} {u}) adalah anomali: nilainya {ds} {u} {dir} \
                     lainnya, yang berada di antara {los} dan {his} {u}, dan pembacaan \
                     berikutnya sudah kembali normal. {kind} satu sampel seperti ini lebih \
                     mungkin disebabkan oleh gangguan sensor atau derau listrik daripada \
                     perubahan {name} yang sebenarnya; periksa kabel dan sambungan sensor, dan \
                     anggap nilai ini meragukan kecuali terulang."
                ),
            )
        }
    }
}

/// "Which is larger, 9.11 or 9.9?" and relatives, exact.
pub fn compare(rng: &mut StdRng, lang: Lang) -> (String, String, String) {
    // Two decimals as (integer part, fraction digits).
    let int_a: u64 = if rng.random_bool(0.7) {
        rng.random_range(0..=20)
    } else {
        rng.random_range(21..=999)
    };
    let shape = rng.random_range(0..10);
    let (a, b) = match shape {
        // Same value, different digit counts: 2.5 vs 2.50.
        0 => {
            let len = rng.random_range(1..=2);
            let f = digits(rng, len, true);
            let padded = format!("{f}{}", "0".repeat(rng.random_range(1..=2)));
            ((int_a, f), (int_a, padded))
        }
        // Different integer parts, the smaller one with more decimals.
        1..=2 => {
            let int_b = int_a + rng.random_range(1..=3);
            let (la, lb) = (rng.random_range(2..=4), rng.random_range(1..=2));
            (
                (int_a, digits(rng, la, true)),
                (int_b, digits(rng, lb, true)),
            )
        }
        // The trap: same integer part, the shorter fraction is the larger number or not.
        _ => {
            let la = rng.random_range(1..=2);
            let lb = la + rng.random_range(1..=2);
            (
                (int_a, digits(rng, la, true)),
                (int_a, digits(rng, lb, true)),
            )
        }
    };
    let (mut a, mut b) = (a, b);
    if rng.random_bool(0.5) {
        std::mem::swap(&mut a, &mut b);
    }
    let width = a.1.len().max(b.1.len());
    let text = |x: &(u64, String)| dec_text(x.0, &x.1, lang);
    let padded = |x: &(u64, String)| dec_text(x.0, &format!("{:0<width$}", x.1), lang);
    // Exact comparison on the integers of the `width`-th decimal place.
    let scaled = |x: &(u64, String)| -> u128 {
        x.0 as u128 * 10u128.pow(width as u32)
            + format!("{:0<width$}", x.1).parse::<u128>().unwrap_or(0)
    };
    let ask_larger = rng.random_bool(0.6);
    let (sa, sb) = (text(&a), text(&b));
    let instruction = match (lang, ask_larger, rng.random_bool(0.5)) {
        (Lang::En, true, true) => format!("Which is larger, {sa} or {sb}?"),
        (Lang::En, true, false) => format!("Which number is bigger: {sa} or {sb}?"),
        (Lang::En, false, true) => format!("Which is smaller, {sa} or {sb}?"),
        (Lang::En, false, false) => format!("Which number is smaller: {sa} or {sb}?"),
        (Lang::Id, true, true) => format!("Mana yang lebih besar, {sa} atau {sb}?"),
        (Lang::Id, true, false) => format!("Bilangan mana yang lebih besar: {sa} atau {sb}?"),
        (Lang::Id, false, true) => format!("Mana yang lebih kecil, {sa} atau {sb}?"),
        (Lang::Id, false, false) => format!("Bilangan mana yang lebih kecil: {sa} atau {sb}?"),
    };
    let (big, small) = if scaled(&a) >= scaled(&b) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let output = if scaled(&a) == scaled(&b) {
        let (pa, pb) = (padded(&a), padded(&b));
        match lang {
            Lang::En => format!("They are equal: {sa} and {sb} are the same number ({pa} = {pb})."),
            Lang::Id => format!(
                "Keduanya sama besar: {sa} dan {sb} adalah bilangan yang sama ({pa} = {pb})."
            ),
        }
    } else {
        let (bt, st, bp, sp) = (text(big), text(small), padded(big), padded(small));
        match (lang, ask_larger) {
            (Lang::En, true) => format!(
                "{bt} is larger than {st}. Written with the same number of decimal places, \
                 {bp} > {sp}."
            ),
            (Lang::En, false) => format!(
                "{st} is smaller than {bt}. Written with the same number of decimal places, \
                 {sp} < {bp}."
            ),
            (Lang::Id, true) => format!(
                "{bt} lebih besar daripada {st}. Jika ditulis dengan jumlah angka desimal yang \
                 sama, {bp} > {sp}."
            ),
            (Lang::Id, false) => format!(
                "{st} lebih kecil daripada {bt}. Jika ditulis dengan jumlah angka desimal yang \
                 sama, {sp} < {bp}."
            ),
        }
    };
    (instruction, String::new(), output)
}

/// `n` random decimal digits; the last one non-zero when `nonzero_last`.
fn digits(rng: &mut StdRng, n: usize, nonzero_last: bool) -> String {
    (0..n)
        .map(|i| {
            let lo = if nonzero_last && i == n - 1 { 1 } else { 0 };
            char::from(b'0' + rng.random_range(lo..=9u8))
        })
        .collect()
}

fn dec_text(int: u64, frac: &str, lang: Lang) -> String {
    let sep = match lang {
        Lang::En => '.',
        Lang::Id => ',',
    };
    format!("{int}{sep}{frac}")
}

/// The next three terms of a stretch of the Fibonacci sequence.
pub fn fibonacci(rng: &mut StdRng, lang: Lang) -> (String, String, String) {
    let start = rng.random_range(0..=40usize);
    let shown = rng.random_range(3..=7usize);
    let mut fib = vec![0u64, 1];
    while fib.len() < start + shown + 3 {
        fib.push(fib[fib.len() - 1] + fib[fib.len() - 2]);
    }
    let list = |s: &[u64]| s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    let seq = list(&fib[start..start + shown]);
    let next = &fib[start + shown..start + shown + 3];
    match lang {
        Lang::En => (
            format!("Continue the Fibonacci sequence with the next three numbers: {seq}"),
            String::new(),
            format!(
                "The next three numbers are {}, {} and {} (each number is the sum of the two \
                 before it).",
                next[0], next[1], next[2]
            ),
        ),
        Lang::Id => (
            format!("Lanjutkan deret Fibonacci berikut dengan tiga bilangan berikutnya: {seq}"),
            String::new(),
            format!(
                "Tiga bilangan berikutnya adalah {}, {}, dan {} (setiap bilangan adalah jumlah \
                 dua bilangan sebelumnya).",
                next[0], next[1], next[2]
            ),
        ),
    }
}
