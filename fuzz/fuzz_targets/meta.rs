//! A multipart add's `meta` part, and each entry's attrs against the store's row
//! limits: parsed or refused, never a panic (deep nesting included).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(metas) = sen_serve::parse_meta(data) {
        for (i, m) in metas.into_iter().enumerate() {
            let row = sen_store::NewRow {
                camera: m.camera.unwrap_or_else(|| "default".into()),
                time_ms: 1_800_000_000_000,
                path: "p".into(),
                pid: m.pid,
                attrs: m.attrs,
                embedding: vec![],
                crop: None,
                track: m.track,
                bbox: m.bbox,
                source: Some("http".into()),
            };
            let _ = sen_store::camera(Some(row.camera.clone()));
            let _ = sen_store::RowLimits::default().check(i + 1, &row);
            if let Some(t) = &m.time {
                let _ = sen_store::time::from_json("time", t);
            }
        }
    }
});
