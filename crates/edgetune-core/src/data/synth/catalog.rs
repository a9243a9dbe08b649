//! The fictional device catalog of the assistant set: four devices no pretrained model has
//! seen, each with four facts (management port, factory reset, one error code, a maintenance
//! interval), the questions that ask for them and the answers, in English and Indonesian.
//!
//! Every fact kind has question phrasings for training and *other* phrasings kept for the
//! held-out split, so a held-out pass means the model learned the fact, not the sentence. The
//! answer is one canonical sentence per fact and language; the held-out check looks for the
//! fact's key (the port number, the button and the seconds, the code's cause, the interval),
//! written the same way in both languages, so a paraphrased answer still passes.

use super::Lang;

/// One fictional device.
pub struct Device {
    /// The full name, as questions write it.
    pub name: &'static str,
    /// The model code alone, as telemetry lines and short questions write it.
    pub code: &'static str,
    /// What it is, in each language (for answers).
    pub kind_en: &'static str,
    pub kind_id: &'static str,
    pub port: u16,
    /// Reset: the button(s), how long or how often, and what the LED does.
    pub reset_en: &'static str,
    pub reset_id: &'static str,
    /// Substrings every correct reset answer contains, per language.
    pub reset_keys_en: &'static [&'static str],
    pub reset_keys_id: &'static [&'static str],
    pub error_code: &'static str,
    pub error_en: &'static str,
    pub error_id: &'static str,
    /// A substring every correct error answer contains (same in both languages).
    pub error_key: &'static str,
    pub maint_en: &'static str,
    pub maint_id: &'static str,
    /// The interval as every correct maintenance answer writes it, per language.
    pub maint_key_en: &'static str,
    pub maint_key_id: &'static str,
}

pub const DEVICES: [Device; 4] = [
    Device {
        name: "Kestrel KX-40",
        code: "KX-40",
        kind_en: "LoRaWAN gateway",
        kind_id: "gateway LoRaWAN",
        port: 8443,
        reset_en: "hold the PAIR button for 12 seconds until the LED blinks amber",
        reset_id: "tahan tombol PAIR selama 12 detik sampai LED berkedip kuning",
        reset_keys_en: &["PAIR", "12 seconds"],
        reset_keys_id: &["PAIR", "12 detik"],
        error_code: "E41",
        error_en: "the backhaul uplink is lost",
        error_id: "koneksi uplink backhaul terputus",
        error_key: "backhaul",
        maint_en: "replace the surge protector every 24 months",
        maint_id: "ganti pelindung lonjakan listrik setiap 24 bulan",
        maint_key_en: "24 months",
        maint_key_id: "24 bulan",
    },
    Device {
        name: "Marlin M7",
        code: "M7",
        kind_en: "air-quality sensor hub",
        kind_id: "hub sensor kualitas udara",
        port: 7012,
        reset_en: "hold RESET and FN together for 8 seconds until the LED turns blue",
        reset_id: "tahan RESET dan FN bersamaan selama 8 detik sampai LED menyala biru",
        reset_keys_en: &["RESET", "FN", "8 seconds"],
        reset_keys_id: &["RESET", "FN", "8 detik"],
        error_code: "E17",
        error_en: "the CO2 sensor has drifted out of calibration",
        error_id: "sensor CO2 bergeser dari kalibrasi",
        error_key: "CO2",
        maint_en: "calibrate the CO2 sensor every 90 days",
        maint_id: "kalibrasi sensor CO2 setiap 90 hari",
        maint_key_en: "90 days",
        maint_key_id: "90 hari",
    },
    Device {
        name: "Tern T3",
        code: "T3",
        kind_en: "water valve controller",
        kind_id: "pengendali katup air",
        port: 9311,
        reset_en: "press the recessed SET button 5 times within 3 seconds",
        reset_id: "tekan tombol SET yang tersembunyi 5 kali dalam 3 detik",
        reset_keys_en: &["SET", "5 times"],
        reset_keys_id: &["SET", "5 kali"],
        error_code: "E08",
        error_en: "the valve motor is stalled",
        error_id: "motor katup macet (stalled)",
        error_key: "stalled",
        maint_en: "grease the valve stem every 6 months",
        maint_id: "lumasi batang katup setiap 6 bulan",
        maint_key_en: "6 months",
        maint_key_id: "6 bulan",
    },
    Device {
        name: "Heron H9",
        code: "H9",
        kind_en: "three-phase energy meter",
        kind_id: "meter energi tiga fase",
        port: 6620,
        reset_en: "hold the MODE button for 20 seconds until the display shows CLR",
        reset_id: "tahan tombol MODE selama 20 detik sampai layar menampilkan CLR",
        reset_keys_en: &["MODE", "20 seconds"],
        reset_keys_id: &["MODE", "20 detik"],
        error_code: "E52",
        error_en: "a current clamp is connected in reverse",
        error_id: "salah satu klem arus terpasang terbalik (reverse)",
        error_key: "reverse",
        maint_en: "tighten the terminal screws every 12 months",
        maint_id: "kencangkan sekrup terminal setiap 12 bulan",
        maint_key_en: "12 months",
        maint_key_id: "12 bulan",
    },
];

/// The four kinds of fact a device has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactKind {
    Port,
    Reset,
    Error,
    Maintenance,
}

pub const FACT_KINDS: [FactKind; 4] = [
    FactKind::Port,
    FactKind::Reset,
    FactKind::Error,
    FactKind::Maintenance,
];

impl FactKind {
    pub fn name(self) -> &'static str {
        match self {
            FactKind::Port => "port",
            FactKind::Reset => "reset",
            FactKind::Error => "error",
            FactKind::Maintenance => "maintenance",
        }
    }
}

/// Question phrasings for `kind` in `lang`: `(training, held-out)`. `{dev}` is the device's
/// name or code, `{code}` the error code.
pub fn questions(kind: FactKind, lang: Lang) -> (&'static [&'static str], &'static [&'static str]) {
    match (kind, lang) {
        (FactKind::Port, Lang::En) => (
            &[
                "Which port does the {dev} use for its management interface?",
                "What is the management port of the {dev}?",
                "On which TCP port is the {dev}'s web console?",
                "I need to open the {dev} admin page. Which port?",
                "Which port should I allow in the firewall for the {dev}'s management UI?",
                "What's the {dev} admin port?",
            ],
            &[
                "Tell me the port number for managing the {dev}.",
                "To reach the {dev} configuration UI, what port should I connect to?",
            ],
        ),
        (FactKind::Port, Lang::Id) => (
            &[
                "Port berapa yang dipakai {dev} untuk antarmuka manajemen?",
                "Apa port manajemen {dev}?",
                "Konsol web {dev} ada di port TCP berapa?",
            ],
            &["Sebutkan nomor port untuk mengelola {dev}."],
        ),
        (FactKind::Reset, Lang::En) => (
            &[
                "How do I factory reset the {dev}?",
                "What are the steps to reset the {dev} to factory settings?",
                "My {dev} is misconfigured. How do I restore its defaults?",
                "Explain the factory reset procedure of the {dev}.",
                "How do I erase all settings on the {dev}?",
                "How do I restore the {dev} to factory settings?",
            ],
            &[
                "How can I wipe the {dev} back to its out-of-the-box state?",
                "What is the way to do a hard reset on the {dev}?",
            ],
        ),
        (FactKind::Reset, Lang::Id) => (
            &[
                "Bagaimana cara reset pabrik {dev}?",
                "Apa langkah untuk mengembalikan {dev} ke setelan pabrik?",
                "{dev} saya salah konfigurasi. Bagaimana mengembalikan setelan awalnya?",
                "Bagaimana cara menghapus semua pengaturan {dev}?",
            ],
            &["Bagaimana melakukan hard reset pada {dev}?"],
        ),
        (FactKind::Error, Lang::En) => (
            &[
                "What does error {code} mean on the {dev}?",
                "The {dev} shows {code}. What is wrong?",
                "My {dev} reports error code {code}. What does it indicate?",
                "Explain the {dev} error {code}.",
                "What causes error {code} on a {dev}?",
                "{code} appeared on the {dev}. What does that mean?",
            ],
            &[
                "I see {code} on my {dev}'s status page. What is the cause?",
                "What is the meaning of code {code} on a {dev}?",
            ],
        ),
        (FactKind::Error, Lang::Id) => (
            &[
                "Apa arti error {code} pada {dev}?",
                "{dev} menampilkan {code}. Apa masalahnya?",
                "Kode error {code} di {dev} menandakan apa?",
            ],
            &["Muncul {code} di halaman status {dev} saya. Apa penyebabnya?"],
        ),
        (FactKind::Maintenance, Lang::En) => (
            &[
                "What routine maintenance does the {dev} need?",
                "How often should the {dev} be serviced, and what should be done?",
                "What is the maintenance interval of the {dev}?",
                "Which periodic maintenance task applies to the {dev}?",
                "How often does the {dev} need servicing?",
                "What maintenance schedule does the {dev} follow?",
            ],
            &[
                "What upkeep does the {dev} require, and how often?",
                "When is the {dev} due for its regular service?",
            ],
        ),
        (FactKind::Maintenance, Lang::Id) => (
            &[
                "Perawatan rutin apa yang dibutuhkan {dev}?",
                "Seberapa sering {dev} perlu dirawat, dan apa yang dilakukan?",
                "Berapa interval perawatan {dev}?",
            ],
            &["Kapan {dev} harus menjalani servis rutinnya?"],
        ),
    }
}

/// The canonical answer to a `kind` question about `d` in `lang`.
pub fn answer(d: &Device, kind: FactKind, lang: Lang) -> String {
    match (kind, lang) {
        (FactKind::Port, Lang::En) => format!(
            "The {} serves its management interface on TCP port {}.",
            d.name, d.port
        ),
        (FactKind::Port, Lang::Id) => format!(
            "{} melayani antarmuka manajemennya di port TCP {}.",
            d.name, d.port
        ),
        (FactKind::Reset, Lang::En) => format!("To factory reset the {}, {}.", d.name, d.reset_en),
        (FactKind::Reset, Lang::Id) => {
            format!("Untuk reset pabrik {}, {}.", d.name, d.reset_id)
        }
        (FactKind::Error, Lang::En) => format!(
            "Error {} on the {} means {}.",
            d.error_code, d.name, d.error_en
        ),
        (FactKind::Error, Lang::Id) => format!(
            "Error {} pada {} berarti {}.",
            d.error_code, d.name, d.error_id
        ),
        (FactKind::Maintenance, Lang::En) => format!(
            "The {} ({}) needs one routine task: {}.",
            d.name, d.kind_en, d.maint_en
        ),
        (FactKind::Maintenance, Lang::Id) => format!(
            "{} ({}) butuh satu perawatan rutin: {}.",
            d.name, d.kind_id, d.maint_id
        ),
    }
}

/// The substrings a correct answer to a `kind` question about `d` in `lang` contains.
pub fn answer_keys(d: &Device, kind: FactKind, lang: Lang) -> Vec<String> {
    let en = lang == Lang::En;
    match kind {
        FactKind::Port => vec![d.port.to_string()],
        FactKind::Reset => {
            let keys = if en { d.reset_keys_en } else { d.reset_keys_id };
            keys.iter().map(|s| s.to_string()).collect()
        }
        FactKind::Error => vec![d.error_key.to_string()],
        FactKind::Maintenance => {
            vec![(if en { d.maint_key_en } else { d.maint_key_id }).to_string()]
        }
    }
}

/// Questions asking for a device's whole profile (every fact at once), per language. Seeing
/// the facts together, bound to the device's name, helps a model pull each one out again for
/// questions phrased in ways it was not trained on.
pub fn profile_questions(lang: Lang) -> &'static [&'static str] {
    match lang {
        Lang::En => &[
            "Tell me about the {dev}.",
            "Give me a summary of the {dev}'s key facts.",
            "What should a technician know about the {dev}?",
        ],
        Lang::Id => &[
            "Ceritakan tentang {dev}.",
            "Apa yang perlu diketahui teknisi tentang {dev}?",
        ],
    }
}

/// The profile of `d` in `lang`: what it is, then its four facts.
pub fn profile(d: &Device, lang: Lang) -> String {
    match lang {
        Lang::En => format!(
            "The {} is a {}. Its management interface is on TCP port {}. To factory reset it, \
             {}. Error {} means {}. Routine maintenance: {}.",
            d.name, d.kind_en, d.port, d.reset_en, d.error_code, d.error_en, d.maint_en
        ),
        Lang::Id => format!(
            "{} adalah {}. Antarmuka manajemennya ada di port TCP {}. Untuk reset pabrik, {}. \
             Error {} berarti {}. Perawatan rutin: {}.",
            d.name, d.kind_id, d.port, d.reset_id, d.error_code, d.error_id, d.maint_id
        ),
    }
}

/// `template` with the device (its full name, or its code when `short`) and error code put in.
pub fn fill(template: &str, d: &Device, short: bool) -> String {
    template
        .replace("{dev}", if short { d.code } else { d.name })
        .replace("{code}", d.error_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_answer_holds_its_keys_in_both_languages() {
        for d in &DEVICES {
            for kind in FACT_KINDS {
                for lang in [Lang::En, Lang::Id] {
                    let a = answer(d, kind, lang);
                    for key in answer_keys(d, kind, lang) {
                        assert!(a.contains(&key), "{a:?} lacks {key:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn held_out_phrasings_are_not_training_phrasings() {
        for kind in FACT_KINDS {
            for lang in [Lang::En, Lang::Id] {
                let (train, held) = questions(kind, lang);
                assert!(!train.is_empty() && !held.is_empty());
                for h in held {
                    assert!(!train.contains(h), "{h:?}");
                }
            }
        }
    }
}
