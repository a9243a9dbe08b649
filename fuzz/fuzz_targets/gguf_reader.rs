//! libFuzzer target: `GgufFile::from_bytes` on arbitrary bytes must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    edgetune_fuzz::check_gguf(data);
});
