//! Image bytes as every entry meets them: the size is read from the header and
//! checked before decoding, and a decode within the limits never allocates past
//! them or panics (small limits keep each run fast).
#![no_main]
use libfuzzer_sys::fuzz_target;

const LIMITS: sen_core::preprocess::ImageLimits = sen_core::preprocess::ImageLimits {
    max_side: 256,
    max_pixels: 16_384,
};

fuzz_target!(|data: &[u8]| {
    let name = std::path::Path::new("upload");
    if let Ok((w, h)) = sen_core::preprocess::image_size(data, name, &LIMITS) {
        assert!(w.max(h) <= LIMITS.max_side && w as u64 * h as u64 <= LIMITS.max_pixels);
    }
    if let Ok(rgb) = sen_core::preprocess::decode_rgb8_limited(data, name, &LIMITS) {
        assert_eq!(rgb.data.len(), rgb.width * rgb.height * 3);
        assert!(rgb.width.max(rgb.height) <= LIMITS.max_side as usize);
    }
});
