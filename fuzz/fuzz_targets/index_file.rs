//! A `sen index` file: opening any bytes is an error naming the file, or an index
//! whose search answers (or refuses) without a panic or an out-of-bounds read.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "frame.rs"]
mod frame;

fuzz_target!(|data: &[u8]| {
    let Some(f) = frame::file(data, 1) else {
        return;
    };
    if let Ok(idx) = sen_store::index::Index::open(f.path())
        && idx.header.dim <= 1 << 16
    {
        let q = vec![0.5f32; idx.header.dim];
        let _ = idx.search(&q, 3, 1);
        let _ = idx.search_many(&[&q, &q], 2, 2);
    }
});
