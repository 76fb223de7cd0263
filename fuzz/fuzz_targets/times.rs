//! Times as every entry reads them (RFC 3339 or Unix ms, capture-time range,
//! retention periods): a value or an error naming the field, never a panic; a
//! parsed capture time formats back to RFC 3339.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = sen_store::time::parse("time", s)
        && let Ok(t) = sen_store::time::capture_time("time", t)
    {
        let f = sen_store::time::format(t);
        assert!(f.ends_with('Z'), "{f}");
        assert_eq!(sen_store::time::parse("time", &f).ok(), Some(t));
    }
    let _ = sen_store::time::parse_period("--retention", s);
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
        let _ = sen_store::time::from_json("time", &v);
    }
});
