//! A DeepStream `nvmsgconv` message (full or minimal schema) as the source reads it,
//! and each object's row fields against the store's rules: parsed or refused with a
//! message, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(objects) = sen_sources::deepstream::parse(data) {
        for o in objects {
            let _ = sen_store::camera(Some(o.camera.clone()));
            let _ = sen_store::check_track(&o.track);
            let _ = sen_store::check_bbox(&o.bbox);
            let _ = sen_store::time::capture_time("@timestamp", o.time_ms);
            if let sen_sources::deepstream::CropRef::File(name) = &o.crop {
                let _ = sen_sources::deepstream::confined(std::path::Path::new("/nonexistent-crops"), name);
            }
        }
    }
});
