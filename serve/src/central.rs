//! A central search node (`sen serve --search-backend milvus://...`): no local store;
//! searches run on a collection the boxes replicate into, and the crops stay on the
//! boxes: `GET /v1/images/BOX/ID` fetches one from its box (URL and key from
//! `--boxes`) and answers it from this origin, so the page and its CSP stay
//! same-origin.
//!
//! The `--boxes` file is JSON: `{"BOX": {"url": "https://10.0.0.5:8750",
//! "key_file": "keys/box-a.key", "ca_cert": "certs/box-a.pem"}, ...}`; relative
//! paths are read from the file's folder; a key file's first line is a read key of
//! that box.

use crate::error::ApiError;
use anyhow::{Context, Result, bail};
use axum::http::{StatusCode, header};
use axum::response::Response;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One box the node may fetch crops from.
#[derive(Debug, Clone)]
pub struct BoxEntry {
    pub url: String,
    key: Option<String>,
    client: reqwest::Client,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BoxLine {
    url: String,
    key_file: Option<String>,
    ca_cert: Option<String>,
}

/// Read a `--boxes` file.
pub fn read_boxes(path: &Path, timeout: Duration) -> Result<BTreeMap<String, BoxEntry>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--boxes {}", path.display()))?;
    let raw: BTreeMap<String, BoxLine> = serde_json::from_str(&text).with_context(|| {
        format!(
            "--boxes {}: not a JSON object of box name -> {{\"url\", \"key_file\", \"ca_cert\"}}",
            path.display()
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    // reqwest is built without a default TLS provider: use ring (as the server does).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut out = BTreeMap::new();
    for (name, b) in raw {
        let at = |what: &str| format!("--boxes {}: box {name:?}: {what}", path.display());
        sen_milvus::check_box_name(&name).map_err(|e| anyhow::anyhow!(at(&e.to_string())))?;
        let url = b.url.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&url)
            .map_err(|e| anyhow::anyhow!(at(&format!("url {url:?}: {e}"))))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            bail!(at(&format!(
                "url {url:?}: give http(s)://HOST:PORT of that box's sen serve"
            )));
        }
        let key = match &b.key_file {
            Some(f) => {
                let p = dir.join(f);
                let k = std::fs::read_to_string(&p)
                    .map_err(|e| anyhow::anyhow!(at(&format!("key_file {}: {e}", p.display()))))?;
                let k = k.lines().next().unwrap_or("").trim().to_string();
                if k.is_empty() {
                    bail!(at(&format!(
                        "key_file {}: empty; its first line is a read key of the box",
                        p.display()
                    )));
                }
                Some(k)
            }
            None => None,
        };
        let mut cb = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &b.ca_cert {
            let p = dir.join(ca);
            let pem = std::fs::read(&p)
                .map_err(|e| anyhow::anyhow!(at(&format!("ca_cert {}: {e}", p.display()))))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!(at(&format!("ca_cert {}: {e}", p.display()))))?;
            cb = cb.tls_certs_only([cert]);
        }
        let client = cb
            .build()
            .map_err(|e| anyhow::anyhow!(at(&e.to_string())))?;
        out.insert(name, BoxEntry { url, key, client });
    }
    Ok(out)
}

/// Fetch `/v1/images/ID[?size=thumb]` from the box and answer it as it came (a crop
/// with its content type), or say which box failed how.
pub async fn proxy_image(
    boxes: &BTreeMap<String, BoxEntry>,
    box_name: &str,
    id: u64,
    thumb: bool,
) -> Result<Response, ApiError> {
    let b = boxes.get(box_name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "box {box_name:?} is not in --boxes; the node fetches crops only from the boxes it lists"
        ))
    })?;
    let url = format!(
        "{}/v1/images/{id}{}",
        b.url,
        if thumb { "?size=thumb" } else { "" }
    );
    let mut req = b.client.get(&url);
    if let Some(k) = &b.key {
        req = req.bearer_auth(k);
    }
    let r = req
        .send()
        .await
        .map_err(|e| ApiError::BadGateway(format!("box {box_name:?} ({}): {e}", b.url)))?;
    let status = r.status();
    if status == StatusCode::NOT_FOUND {
        return Err(ApiError::NotFound(format!(
            "box {box_name:?} has no crop for row {id}"
        )));
    }
    if !status.is_success() {
        return Err(ApiError::BadGateway(format!(
            "box {box_name:?} ({}) answered {status} for row {id}",
            b.url
        )));
    }
    let ct = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_string();
    // Only images pass: the page shows what comes back from this origin.
    if !ct.starts_with("image/") {
        return Err(ApiError::BadGateway(format!(
            "box {box_name:?} answered {ct:?} for row {id}, not an image"
        )));
    }
    let bytes = r
        .bytes()
        .await
        .map_err(|e| ApiError::BadGateway(format!("box {box_name:?} ({}): {e}", b.url)))?;
    Ok(crate::handlers::images::image_response(&ct, bytes))
}
