//! The operator's search page: three static files, embedded, under a strict CSP.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

// ---------------------------------------------------------------- the page

/// The page's Content-Security-Policy: nothing but this origin's script, style,
/// images (and blob: object URLs of fetched crops) and API calls; no inline script
/// or style, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

fn static_file(ct: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(ct)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

pub(crate) async fn page() -> Response {
    static_file(
        "text/html; charset=utf-8",
        include_str!("../page/index.html"),
    )
}

pub(crate) async fn page_js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../page/app.js"),
    )
}

pub(crate) async fn page_css() -> Response {
    static_file("text/css; charset=utf-8", include_str!("../page/app.css"))
}
