//! A Frigate `<prefix>/events` message as the source reads it: parsed or refused,
//! never a panic; what it names goes through the store's rules.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<sen_sources::frigate::EventMessage>(data) {
        let o = &m.after;
        let _ = sen_store::camera(Some(o.camera.clone()));
        let _ = sen_store::check_track(&o.id);
        if let Some(b) = o.snapshot.as_ref().and_then(|s| s.bbox) {
            let _ = sen_store::check_bbox(&b);
        }
        let _ = (o.start_time * 1000.0).round() as i64;
    }
});
