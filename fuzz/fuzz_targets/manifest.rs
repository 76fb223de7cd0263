//! A bundle's `manifest.json`: any text parses to a checked manifest or an error
//! naming the file, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sen_core::Manifest::parse(s, std::path::Path::new("manifest.json"));
    }
});
