//! A store segment file: opening and verifying any bytes is an error naming the
//! file, or a segment whose columns and rows read within bounds.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "frame.rs"]
mod frame;

fuzz_target!(|data: &[u8]| {
    let Some(f) = frame::file(data, 2) else {
        return;
    };
    if let Ok(s) = sen_store::segment::Segment::open(f.path()) {
        let _ = s.verify();
        let n = s.len();
        let (ids, times, cams) = (s.ids(), s.times(), s.cameras());
        assert_eq!((ids.len(), times.len(), cams.len()), (n, n, n));
        for i in 0..n.min(8) {
            let _ = s.row_bytes(i);
            let _ = s.find(ids[i]);
        }
    }
});
