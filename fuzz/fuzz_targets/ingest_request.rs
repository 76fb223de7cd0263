//! `POST /v1/images` as the server reads it, before anything is decoded: a request
//! target with query parameters (camera, time, pid), a content type (multipart with a
//! fixed boundary, or an image type) and a body. Whatever arrives gives parts within
//! the limits or an API error; never a panic, never more images than allowed.
#![no_main]
use libfuzzer_sys::fuzz_target;

const LIMITS: sen_serve::AddLimits = sen_serve::AddLimits {
    max_images: 4,
    max_body: 1 << 20,
    image: sen_core::preprocess::ImageLimits {
        max_side: 512,
        max_pixels: 65_536,
    },
};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the content type, the next line is the query string.
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (query, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&rest[..0], rest),
    };
    let ct = match kind % 4 {
        0 => "multipart/form-data; boundary=XyZ",
        1 => "image/png",
        2 => "image/jpeg",
        _ => "text/plain",
    };
    let uri = format!("/v1/images?{}", String::from_utf8_lossy(query));
    let Ok(req) = axum::http::Request::builder()
        .method("POST")
        .uri(uri)
        .header("content-type", ct)
        .body(axum::body::Body::from(body.to_vec()))
    else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    if let Ok(add) = rt.block_on(sen_serve::read_add(req, &LIMITS)) {
        assert!(!add.uploads.is_empty() && add.uploads.len() <= LIMITS.max_images);
        assert_eq!(add.uploads.len(), add.metas.len());
        let _ = sen_serve::rows_of(&add);
    }
});
