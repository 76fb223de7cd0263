//! An `--api-keys` file, and an `Authorization` header checked against it: parsed or
//! refused naming the line; a check answers, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (file, header) = s.split_once('\u{0}').unwrap_or((s, "Bearer 0123456789abcdef"));
    if let Ok(keys) = sen_serve::auth::Keys::parse(file, "keys") {
        assert!(!keys.is_empty());
        let _ = keys.scope(Some(header));
        let _ = keys.check(Some(header), sen_serve::auth::Scope::Write);
    }
});
