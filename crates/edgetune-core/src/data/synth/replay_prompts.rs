//! The replay prompts: general requests, in English and Indonesian, that the base model
//! answers itself before fine-tuning, its answers then trained on beside the new data.

/// General requests for self-replay, disjoint from the retention suite and the seed cases (and
/// from the topics of the training data: no fictional devices, readings or alarms). The base
/// model's own greedy answers to these are trained on beside the new data (self-distillation),
/// so fine-tuning does not teach it that every answer is one short sentence, and benign
/// requests that sound technical ("reset my router", "my printer is offline") stay answered
/// rather than refused. Each is answerable in one to three sentences.
///
/// The first 28 are the demo's default, kept in this order so the demo's measured numbers do
/// not change; the rest extend it for `train --replay self`: more English requests, then from
/// [`REPLAY_INDONESIAN_FROM`] on the Indonesian ones.
pub const REPLAY_PROMPTS: &[&str] = &[
    // The demo's default (28, English).
    "What is photosynthesis?",
    "Name three primary colours.",
    "How do I reset my home Wi-Fi router?",
    "What does a thermostat do?",
    "Give me a tip for writing a clear email.",
    "What is the difference between weather and climate?",
    "Explain what a firewall does in simple terms.",
    "What is the tallest mountain in the world?",
    "How can I save energy at home?",
    "What is a sensor?",
    "Why is the sea salty?",
    "How do I turn off notifications on my phone?",
    "What is the speed of light?",
    "Suggest a healthy breakfast.",
    "What does CPU stand for?",
    "Who painted the Mona Lisa?",
    "How do I clear my browser cache?",
    "What is a volcano?",
    "Write one sentence about autumn.",
    "What is the main ingredient of guacamole?",
    "How many minutes are in an hour?",
    "What is the currency of the United Kingdom?",
    "How do I restart a computer that is frozen?",
    "What is the boiling point of water in Fahrenheit?",
    "Continue the pattern: 3, 6, 9, 12,",
    "What comes next: 10, 20, 30, 40,",
    "Which number is bigger, 7 or 12?",
    "Is 0.5 larger than 0.25?",
    // English: facts, arithmetic, how-to, writing, definitions, chit-chat, everyday tech.
    "How many planets are in our solar system?",
    "What is the closest star to Earth?",
    "Why do we have seasons?",
    "What causes thunder?",
    "What is gravity?",
    "How many bones are in the adult human body?",
    "What is the largest planet in the solar system?",
    "What do bees make?",
    "What is the hardest natural substance?",
    "How long does it take the Earth to go around the Sun?",
    "What is an atom?",
    "Why do leaves change colour in autumn?",
    "What is the main gas in the air we breathe?",
    "Which organ pumps blood through the body?",
    "How does a rainbow form?",
    "Why does the Moon seem to change shape during the month?",
    "What is the difference between a virus and a bacterium?",
    "What do we call an animal that eats only plants?",
    "What is evaporation?",
    "How many legs does a spider have?",
    "What is the longest river in Africa?",
    "Which continent is Egypt in?",
    "What is the largest hot desert in the world?",
    "What is the capital of Italy?",
    "Which is the largest country in the world by area?",
    "What is an island?",
    "Name the seven continents.",
    "What is the capital of Canada?",
    "In which country are the pyramids of Giza?",
    "What is a peninsula?",
    "Who was the first person to walk on the Moon?",
    "In what year did World War II end?",
    "Who invented the telephone?",
    "What was the Roman Empire?",
    "Who was Albert Einstein?",
    "What is the Great Wall of China?",
    "Who was the first president of the United States?",
    "What was the Industrial Revolution?",
    "How much water should an adult drink in a day?",
    "Why is sleep important?",
    "How do I remove a coffee stain from a shirt?",
    "What is a good way to start learning a new language?",
    "How can I keep cut flowers fresh for longer?",
    "Why should I wash my hands before eating?",
    "How often should I water a cactus?",
    "What should I pack for a day at the beach?",
    "What is 15 + 27?",
    "What is 9 times 8?",
    "What is 100 minus 37?",
    "What is half of 50?",
    "What is 144 divided by 12?",
    "What is 25% of 200?",
    "Which number is smaller, 48 or 84?",
    "Is 17 an even or an odd number?",
    "What is 6 squared?",
    "How many seconds are in five minutes?",
    "Put these numbers in order from smallest to largest: 14, 3, 27, 9.",
    "What is 3 + 4 × 2?",
    "Is 21 a prime number?",
    "What is the sum of 250 and 175?",
    "Which is greater, 1000 or 999?",
    "How do I boil an egg?",
    "How do I cook rice in a pot?",
    "How do I make a cup of tea?",
    "How do I take a screenshot on a Windows computer?",
    "How do I copy and paste text on a computer?",
    "How can I make my phone battery last longer?",
    "How do I unclog a kitchen sink?",
    "How do I hang a picture on the wall?",
    "How do I back up the photos on my phone?",
    "How do I make a simple green salad?",
    "How do I iron a shirt?",
    "How do I create a new folder on my computer?",
    "How do I set a timer on my phone?",
    "How do I thaw frozen meat safely?",
    "How do I change a light bulb safely?",
    "How do I compress a file into a zip archive?",
    "Write one sentence about the rain.",
    "Write a short thank-you note to a friend.",
    "Write a haiku about the moon.",
    "Write one sentence describing a sunny morning.",
    "Give me a title for a story about a lost cat.",
    "Write a short birthday message for my sister.",
    "Write two sentences about spring.",
    "Write a polite sentence asking a colleague for help.",
    "Describe a cup of coffee in one sentence.",
    "Write a short rhyme about a dog.",
    "Rewrite this sentence more politely: \"Give me the report now.\"",
    "Summarise the story of Cinderella in two sentences.",
    "What is democracy?",
    "What does \"recycling\" mean?",
    "What is an adjective?",
    "What is a synonym?",
    "What does \"empathy\" mean?",
    "What is inflation?",
    "What is a noun?",
    "What is the internet?",
    "What is a budget?",
    "What is a metaphor?",
    "What is an ecosystem?",
    "What does \"procrastinate\" mean?",
    "How are you today?",
    "Hello! What can you help me with?",
    "Can you tell me a fun fact?",
    "Tell me a short joke.",
    "What is your favourite colour?",
    "I'm bored. Do you have any ideas for something to do?",
    "Good evening! How was your day?",
    "Thank you for your help!",
    "How do I change my Wi-Fi password?",
    "Why is my Wi-Fi slow in some rooms?",
    "What is the difference between a modem and a router?",
    "What is an IP address?",
    "What is the difference between 2.4 GHz and 5 GHz Wi-Fi?",
    "How do I connect a printer to my Wi-Fi network?",
    "What should I do when my printer says it is offline?",
    "How do I clear a paper jam in a printer?",
    "How should I store spare AA batteries?",
    "Can I mix old and new batteries in a remote control?",
    "How do I pair Bluetooth headphones with my phone?",
    "What makes a password strong?",
    "What does a VPN do?",
    "How do I check my internet speed?",
    "What is an Ethernet cable used for?",
    "How do I update the software on my phone?",
    "What is two-factor authentication?",
    "What does mAh mean on a battery?",
    "Why does my laptop get hot?",
    "What is cloud storage?",
    "What is a smart plug?",
    "How do I make my laptop forget a Wi-Fi network?",
    "What does DNS do?",
    // Indonesian (from REPLAY_INDONESIAN_FROM on), the same kinds of request.
    "Apa itu gerhana matahari?",
    "Mengapa es batu mengapung di air?",
    "Apa fungsi paru-paru?",
    "Hewan apa yang dijuluki raja hutan?",
    "Mengapa kita berkeringat saat kepanasan?",
    "Apa itu gempa bumi?",
    "Apa perbedaan antara mamalia dan reptil?",
    "Berapa jumlah kaki seekor serangga?",
    "Dari mana asal air hujan?",
    "Apa itu magnet?",
    "Mengapa bulan tampak bersinar pada malam hari?",
    "Planet apa yang paling dekat dengan matahari?",
    "Apa ibu kota Malaysia?",
    "Di pulau mana kota Bandung berada?",
    "Apa nama gunung tertinggi di Indonesia?",
    "Di provinsi mana Candi Borobudur berada?",
    "Sebutkan lima pulau besar di Indonesia.",
    "Apa nama danau terbesar di Indonesia?",
    "Negara mana saja yang berbatasan darat dengan Indonesia?",
    "Apa itu garis khatulistiwa?",
    "Kapan Indonesia memproklamasikan kemerdekaannya?",
    "Siapa presiden pertama Indonesia?",
    "Siapa R.A. Kartini?",
    "Apa itu Sumpah Pemuda?",
    "Apa itu Candi Prambanan?",
    "Bagaimana cara menjaga kesehatan gigi?",
    "Apa manfaat olahraga pagi?",
    "Bagaimana cara menghemat air di rumah?",
    "Mengapa sarapan itu penting?",
    "Apa saja yang sebaiknya dibawa saat berkemah?",
    "Bagaimana cara menanam cabai di pot?",
    "Bagaimana cara mengatasi rasa gugup sebelum presentasi?",
    "Apa tips belajar yang efektif untuk ujian?",
    "Berapa 8 × 7?",
    "Berapa 45 + 38?",
    "Berapa 90 dikurangi 46?",
    "Berapa 81 dibagi 9?",
    "Angka mana yang lebih besar: 305 atau 350?",
    "Apakah 15 bilangan genap atau ganjil?",
    "Berapa setengah dari 120?",
    "Berapa 10% dari 500?",
    "Ada berapa jam dalam dua hari?",
    "Urutkan dari yang terkecil: 42, 7, 19, 31.",
    "Berapa hasil 12 × 12?",
    "Jika saya punya 20 apel dan memberikan 8 kepada teman, berapa sisanya?",
    "Bagaimana cara membuat nasi goreng sederhana?",
    "Bagaimana cara membuat teh manis?",
    "Bagaimana cara memasak mi instan dengan benar?",
    "Bagaimana cara membuat sambal tomat?",
    "Bagaimana cara mengambil tangkapan layar di ponsel Android?",
    "Bagaimana cara mengganti nada dering di ponsel?",
    "Bagaimana cara mengosongkan memori ponsel yang penuh?",
    "Bagaimana cara mengirim email dengan lampiran?",
    "Bagaimana cara mencuci baju putih agar tetap bersih?",
    "Bagaimana cara membersihkan layar laptop dengan aman?",
    "Bagaimana cara menyimpan sayuran agar tetap segar?",
    "Bagaimana cara menghilangkan bau tidak sedap di kulkas?",
    "Tulis satu kalimat tentang pantai.",
    "Tulis ucapan selamat singkat untuk teman yang baru lulus.",
    "Tulis satu kalimat tentang pagi hari di desa.",
    "Buat pantun pendek tentang persahabatan.",
    "Tulis pesan singkat untuk atasan bahwa saya tidak bisa masuk kerja karena sakit.",
    "Tulis dua kalimat tentang kota Jakarta.",
    "Berikan judul untuk cerita tentang anak yang menemukan harta karun.",
    "Tulis kalimat pembuka untuk surat lamaran kerja.",
    "Ringkas cerita Malin Kundang dalam dua kalimat.",
    "Tulis satu kalimat ucapan terima kasih kepada guru.",
    "Apa arti \"gotong royong\"?",
    "Apa itu Pancasila?",
    "Apa arti peribahasa \"air beriak tanda tak dalam\"?",
    "Apa yang dimaksud dengan kata kerja?",
    "Apa yang dimaksud dengan pajak?",
    "Apa arti kata \"mudik\"?",
    "Apa itu antonim?",
    "Apa yang dimaksud dengan polusi udara?",
    "Apa itu energi terbarukan?",
    "Apa itu rendang?",
    "Apa itu batik?",
    "Selamat pagi! Apa kabar?",
    "Halo, siapa namamu?",
    "Terima kasih atas bantuannya!",
    "Ceritakan satu fakta menarik tentang hewan.",
    "Apa kegiatan yang seru untuk akhir pekan?",
    "Saya sedang sedih hari ini. Bisa beri saya semangat?",
    "Boleh minta satu lelucon singkat?",
    "Selamat malam! Bagaimana harimu?",
    "Bagaimana cara melihat perangkat apa saja yang terhubung ke Wi-Fi rumah saya?",
    "Apakah dinding yang tebal bisa melemahkan sinyal Wi-Fi?",
    "Di mana sebaiknya router diletakkan di dalam rumah?",
    "Apa itu hotspot pribadi di ponsel?",
    "Bagaimana cara menyambungkan laptop ke hotspot ponsel?",
    "Printer saya tidak mau mencetak. Apa yang harus saya periksa?",
    "Bagaimana cara mengganti tinta printer?",
    "Bagaimana cara merawat baterai ponsel agar awet?",
    "Apakah aman mengisi daya ponsel semalaman?",
    "Apa perbedaan baterai alkaline dan baterai isi ulang?",
    "Bagaimana cara membuang baterai bekas dengan benar?",
    "Apa itu Bluetooth?",
    "Bagaimana cara menghemat kuota internet di ponsel?",
    "Apa itu kabel LAN?",
    "Mengapa internet terasa lambat pada malam hari?",
    "Apa itu pembaruan perangkat lunak dan mengapa penting?",
    "Mengapa sebaiknya kita tidak memakai kata sandi yang sama untuk banyak akun?",
    "Bagaimana cara menyambungkan ponsel ke televisi?",
    "Apa itu Wi-Fi mesh?",
];

/// The index in [`REPLAY_PROMPTS`] of the first Indonesian prompt: the ones before it are
/// English, the ones from it on Indonesian.
pub const REPLAY_INDONESIAN_FROM: usize = 160;

#[cfg(test)]
mod tests {
    use super::super::prompts::{retention, seed_cases};
    use super::*;
    use std::collections::HashSet;

    /// Common Indonesian words: every Indonesian prompt has one, no English prompt has any.
    const ID_WORDS: &[&str] = &[
        "apa",
        "apakah",
        "bagaimana",
        "berapa",
        "mengapa",
        "siapa",
        "kapan",
        "di",
        "yang",
        "dan",
        "cara",
        "tulis",
        "saya",
        "untuk",
        "tentang",
        "itu",
        "dari",
        "mana",
        "buat",
        "selamat",
        "halo",
        "terima",
        "dengan",
        "sebutkan",
        "urutkan",
        "berikan",
        "ringkas",
        "ceritakan",
        "boleh",
        "ada",
        "jika",
    ];

    fn key(prompt: &str) -> String {
        prompt.trim().to_lowercase()
    }

    fn has_id_word(prompt: &str) -> bool {
        prompt
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| ID_WORDS.contains(&w))
    }

    #[test]
    fn replay_prompts_count_and_languages() {
        assert!(
            REPLAY_PROMPTS.len() >= 240,
            "{} prompts",
            REPLAY_PROMPTS.len()
        );
        assert!(REPLAY_INDONESIAN_FROM >= 28 && REPLAY_INDONESIAN_FROM <= REPLAY_PROMPTS.len());
        let (en, id) = REPLAY_PROMPTS.split_at(REPLAY_INDONESIAN_FROM);
        assert!(id.len() >= 80, "{} Indonesian prompts", id.len());
        assert!(
            en.len() >= id.len(),
            "{} English, {} Indonesian",
            en.len(),
            id.len()
        );
        for p in en {
            assert!(
                !has_id_word(p),
                "an Indonesian word in the English part: {p:?}"
            );
        }
        for p in id {
            assert!(
                has_id_word(p),
                "no Indonesian word in the Indonesian part: {p:?}"
            );
        }
    }

    #[test]
    fn replay_prompts_distinct() {
        let mut seen = HashSet::new();
        for p in REPLAY_PROMPTS {
            assert!(!p.trim().is_empty());
            assert_eq!(*p, p.trim(), "stray whitespace: {p:?}");
            assert!(seen.insert(key(p)), "duplicate replay prompt: {p:?}");
        }
    }

    #[test]
    fn replay_prompts_disjoint_from_eval_cases() {
        let eval: HashSet<String> = retention()
            .iter()
            .chain(seed_cases().iter())
            .map(|c| key(&c.input))
            .collect();
        assert!(eval.len() >= 14);
        for p in REPLAY_PROMPTS {
            assert!(
                !eval.contains(&key(p)),
                "replay prompt is an eval case: {p:?}"
            );
        }
    }
}
