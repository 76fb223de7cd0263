//! What an attacker with no key (or a read key) tried against a live `sen serve`, each
//! refused the way SPEC §11 fixes (issue 27): connections that send nothing or
//! dribble, more connections than file descriptors, bodies announced past the limit,
//! floods of multipart parts, images whose header claims an enormous side, oversized
//! row fields, idempotency keys reused with another body, far-future times, unknown
//! ids by the million, short keys behind `sha256:` lines, and error responses outside
//! the JSON envelope; plus a store that cannot open, a forced SIMD path the CPU lacks,
//! and thumbnails of deleted rows. Loopback ephemeral ports only; every wait bounded.

use reqwest::blocking::{Client, multipart};
use sen_testing::{Serve, client, raw_http, result_ids, synth_crops, tiny_bundle};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

const SEN: &str = env!("CARGO_BIN_EXE_sen");

fn start(bundle: &Path, store: &Path, extra: &[&str]) -> Serve {
    Serve::launch(SEN, bundle).store(store).args(extra).start()
}

fn error_of(r: reqwest::blocking::Response) -> (u16, String, String) {
    let st = r.status().as_u16();
    let v: Value = r.json().unwrap_or(Value::Null);
    (
        st,
        v["error"]["code"].as_str().unwrap_or("").to_string(),
        v["error"]["message"].as_str().unwrap_or("").to_string(),
    )
}

/// A PNG of `w` x `h` with an empty image stream: its size is in its header, and
/// nothing of it would decode (a 39 KB file claimed 39,999,999 x 1).
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut c = crc32fast::Hasher::new();
        c.update(kind);
        c.update(data);
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&c.finalize().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = vec![];
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    // zlib's empty stream.
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A 1 x 1 PNG that decodes.
fn tiny_png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(vec![]);
    image::DynamicImage::new_rgb8(1, 1)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

fn count(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Whether the server closed `s` (a read returns end of file) within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 512];
    let t = Instant::now();
    while t.elapsed() < within {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
    false
}

/// Connections that send nothing are closed after --header-timeout; more of them
/// than file descriptors leave the server answering (the cap fits the open-file
/// limit, the rest wait in the backlog until a slot frees); a kept-alive connection
/// is closed after --idle-timeout and a header dribbled past --header-timeout is cut;
/// a body announced past the limit is refused before it is read; SIGTERM with such
/// connections open exits at once, not after the shutdown timeout.
#[test]
fn connections_are_timed_out_capped_and_never_block_the_box() {
    let d = tempfile::tempdir().unwrap();
    let b = tiny_bundle(d.path(), 5);
    let s = Serve::launch(SEN, &b)
        .store(&d.path().join("store"))
        .args([
            "--header-timeout",
            "1",
            "--idle-timeout",
            "2",
            "--max-body-mib",
            "1",
            "--shutdown-timeout",
            "30",
        ])
        .nofile(100)
        .start();
    let addr = s.url.trim_start_matches("http://").to_string();
    // 60 silent connections: more than the 36 the open-file limit (100 less 64
    // reserved) lets the server hold at once.
    let mut silent: Vec<TcpStream> = (0..60)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    // The box still answers: the silent ones are closed within the header timeout.
    let t = Instant::now();
    let r = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(s.at("/healthz"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let closed = silent
        .iter_mut()
        .map(|c| closed_within(c, Duration::from_secs(6)))
        .filter(|&closed| closed)
        .count();
    assert_eq!(closed, 60, "silent connections left open");
    let m = client()
        .get(s.at("/metrics"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        count(&m, "sen_connections_closed_total{reason=\"header\"}") >= 60.0,
        "{m}"
    );
    // A header dribbled past the header timeout is cut.
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    assert!(closed_within(&mut slow, Duration::from_secs(5)));
    // A kept-alive connection: served, then closed after the idle timeout.
    let mut kept = TcpStream::connect(&addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 256];
    let n = kept.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    assert!(closed_within(&mut kept, Duration::from_secs(6)));
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
    // A body announced past the limit: 413 at once, in the envelope, body unread.
    let t = Instant::now();
    let (st, text) = raw_http(
        &s.url,
        b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000000\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_eq!(st, 413, "{text}");
    assert!(
        text.contains("\"too_large\"") && text.contains("Content-Length"),
        "{text}"
    );
    assert!(t.elapsed() < Duration::from_secs(3));
    // SIGTERM with idle and silent connections open: out within seconds.
    let _idle: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let mut s = s;
    s.signal("-TERM");
    let t = Instant::now();
    let st = s.wait_exit(Duration::from_secs(10));
    assert!(st.success(), "{st}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

/// Multipart: the image limit is enforced as parts arrive (413, never the 429 no
/// retry could pass), a request of as many images as the queue holds is admitted as
/// a whole, a start-up that could never admit a full request is refused; a header
/// claiming 39,999,999 x 1 is refused from the header (413) through the read key's
/// embedding route.
#[test]
fn image_limits_hold_before_decoding() {
    let d = tempfile::tempdir().unwrap();
    let b = tiny_bundle(d.path(), 5);
    let keys = d.path().join("keys");
    std::fs::write(
        &keys,
        "read reader-key-0123456789\nwrite writer-key-0123456789\n",
    )
    .unwrap();
    let out = sen_core::process::command(SEN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-images",
            "9",
            "--max-queue",
            "8",
            "--bundle",
        ])
        .arg(&b)
        .arg("--store")
        .arg(d.path().join("nope"))
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("--max-images 9"), "{e}");
    let s = start(
        &b,
        &d.path().join("store"),
        &[
            "--api-keys",
            keys.to_str().unwrap(),
            "--max-images",
            "8",
            "--max-queue",
            "8",
        ],
    );
    let c = client();
    let png = tiny_png();
    let form = |n: usize| {
        let mut f = multipart::Form::new();
        for i in 0..n {
            f = f.part(
                "image",
                multipart::Part::bytes(png.clone())
                    .file_name(format!("p{i}.png"))
                    .mime_str("image/png")
                    .unwrap(),
            );
        }
        f
    };
    // As many as the queue holds: admitted whole.
    let r = c
        .post(s.at("/v1/images"))
        .bearer_auth("writer-key-0123456789")
        .multipart(form(8))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<Value>().unwrap()["ids"].as_array().unwrap().len(),
        8
    );
    // One more: 413 naming the limit, nothing stored.
    let (st, code, msg) = error_of(
        c.post(s.at("/v1/images"))
            .bearer_auth("writer-key-0123456789")
            .multipart(form(40))
            .send()
            .unwrap(),
    );
    assert_eq!((st, code.as_str()), (413, "too_large"), "{msg}");
    assert!(msg.contains("--max-images 8"), "{msg}");
    let stats: Value = c
        .get(s.at("/v1/stats"))
        .bearer_auth("reader-key-0123456789")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stats["rows"], 8);
    // A header claiming a 39,999,999 px side, with a read key: refused from the header.
    let t = Instant::now();
    let (st, code, msg) = error_of(
        c.post(s.at("/v1/embed/image"))
            .bearer_auth("reader-key-0123456789")
            .header("content-type", "image/png")
            .body(png_header_only(39_999_999, 1))
            .send()
            .unwrap(),
    );
    assert_eq!((st, code.as_str()), (413, "image_too_large"), "{msg}");
    assert!(msg.contains("39999999x1") && msg.contains("8192"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // And as a multipart part.
    let f = multipart::Form::new().part(
        "image",
        multipart::Part::bytes(png_header_only(8193, 2))
            .file_name("wide.png")
            .mime_str("image/png")
            .unwrap(),
    );
    let (st, code, msg) = error_of(
        c.post(s.at("/v1/images"))
            .bearer_auth("writer-key-0123456789")
            .multipart(f)
            .send()
            .unwrap(),
    );
    assert_eq!((st, code.as_str()), (413, "image_too_large"), "{msg}");
    assert!(msg.contains("wide.png"), "{msg}");
}

/// Row fields and times: `path` and `attrs` past their limits, attrs nested too
/// deep and capture times outside 2000..2100 are refused (422) naming the row and
/// field; an idempotency key is bound to its request and to the calling key; a
/// delete naming a million unknown ids answers a bounded message; thumbnails of rows
/// deleted by camera are not served from the cache.
#[test]
fn rows_keys_and_deletes_are_bounded() {
    let d = tempfile::tempdir().unwrap();
    let b = tiny_bundle(d.path(), 5);
    let keys = d.path().join("keys");
    std::fs::write(
        &keys,
        "write writer-key-a-0123456789\nwrite writer-key-b-0123456789\n",
    )
    .unwrap();
    let s = start(
        &b,
        &d.path().join("store"),
        &["--api-keys", keys.to_str().unwrap()],
    );
    let c = client();
    let crops = synth_crops(d.path(), 2, 3);
    let add = |key: &str, meta: Value, idem: Option<&str>| {
        let f = multipart::Form::new()
            .part(
                "image",
                multipart::Part::bytes(crops[0].1.clone())
                    .file_name("a.jpg")
                    .mime_str("image/jpeg")
                    .unwrap(),
            )
            .text("meta", meta.to_string());
        let mut r = c.post(s.at("/v1/images")).bearer_auth(key).multipart(f);
        if let Some(k) = idem {
            r = r.header("idempotency-key", k);
        }
        r.send().unwrap()
    };
    let ka = "writer-key-a-0123456789";
    let deep = (0..17).fold(json!(1), |v, _| json!({ "a": v }));
    for (meta, want) in [
        (json!([{"attrs": {"x": "y".repeat(17 << 10)}}]), "attrs are"),
        (json!([{"attrs": deep}]), "nest 17 deep"),
        (json!([{"time": "9999-01-01T00:00:00Z"}]), "2100"),
        (json!([{"time": i64::MAX}]), "2100"),
        (json!([{"time": "1999-12-31T23:59:59Z"}]), "2000"),
    ] {
        let (st, code, msg) = error_of(add(ka, meta, None));
        assert_eq!((st, code.as_str()), (422, "invalid_argument"), "{msg}");
        assert!(msg.contains(want), "{msg}");
    }
    let long = multipart::Form::new().part(
        "image",
        multipart::Part::bytes(crops[0].1.clone())
            .file_name("p".repeat(5000))
            .mime_str("image/jpeg")
            .unwrap(),
    );
    let (st, _, msg) = error_of(
        c.post(s.at("/v1/images"))
            .bearer_auth(ka)
            .multipart(long)
            .send()
            .unwrap(),
    );
    assert_eq!(st, 422, "{msg}");
    assert!(msg.contains("path is 5000 bytes"), "{msg}");
    // Idempotency: same key and body replays; another body 422; another API key is
    // another caller.
    let first = add(ka, json!([{"camera": "gate"}]), Some("k1"));
    assert_eq!(first.status(), 201);
    let ids = first.json::<Value>().unwrap()["ids"].clone();
    let again = add(ka, json!([{"camera": "gate"}]), Some("k1"));
    assert_eq!(again.status(), 201);
    assert_eq!(again.json::<Value>().unwrap()["ids"], ids);
    let (st, code, msg) = error_of(add(ka, json!([{"camera": "hall"}]), Some("k1")));
    assert_eq!((st, code.as_str()), (422, "invalid_argument"), "{msg}");
    assert!(
        msg.contains("\"k1\"") && msg.contains("another request"),
        "{msg}"
    );
    let other = add(
        "writer-key-b-0123456789",
        json!([{"camera": "gate"}]),
        Some("k1"),
    );
    assert_eq!(other.status(), 201);
    assert_ne!(other.json::<Value>().unwrap()["ids"], ids);
    // A million unknown ids: 404 with a bounded message.
    let many: Vec<u64> = (1_000_000..2_000_000).collect();
    let r = c
        .post(s.at("/v1/delete"))
        .bearer_auth(ka)
        .json(&json!({ "ids": many }))
        .send()
        .unwrap();
    let (st, code, msg) = error_of(r);
    assert_eq!((st, code.as_str()), (404, "not_found"));
    assert!(msg.len() < 500 && msg.contains("999980 more"), "{msg}");
    // A thumbnail, then its row deleted by camera: 404, not the cached thumbnail.
    let id = ids[0].as_u64().unwrap();
    let thumb = |id: u64| {
        c.get(s.at(&format!("/v1/images/{id}?size=thumb")))
            .bearer_auth(ka)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(thumb(id), 200);
    assert_eq!(
        c.post(s.at("/v1/delete"))
            .bearer_auth(ka)
            .json(&json!({"camera": "gate"}))
            .send()
            .unwrap()
            .status(),
        200
    );
    assert_eq!(thumb(id), 404);
}

/// Retention deletes rows at start; a thumbnail cached before does not outlive them.
#[test]
fn retention_removes_thumbnails_too() {
    let d = tempfile::tempdir().unwrap();
    let b = tiny_bundle(d.path(), 5);
    let store = d.path().join("store");
    let crops = synth_crops(d.path(), 2, 2);
    let old = (sen_store::time::now_ms() - 3 * 86_400_000).to_string();
    let s = start(&b, &store, &[]);
    let c = client();
    let r = c
        .post(s.at(&format!("/v1/images?time={old}")))
        .header("content-type", "image/jpeg")
        .body(crops[0].1.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().unwrap()["id"].as_u64().unwrap();
    let thumb = |s: &Serve| {
        c.get(s.at(&format!("/v1/images/{id}?size=thumb")))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(thumb(&s), 200);
    drop(s);
    let s = start(&b, &store, &["--retention", "1d"]);
    let t = Instant::now();
    while thumb(&s) != 404 {
        assert!(t.elapsed() < Duration::from_secs(20), "retention never ran");
        std::thread::sleep(Duration::from_millis(100));
    }
    let all: Value = c
        .post(s.at("/v1/search"))
        .json(&json!({"text": "a person"}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(result_ids(&all).is_empty());
}

/// Every error has the JSON envelope (405, a bad path, a target too long, headers too
/// large); `sha256:` keys obey the minimum key length; the Bearer scheme is
/// case-insensitive; a keys file others can read is warned about.
#[test]
fn envelopes_and_keys() {
    let d = tempfile::tempdir().unwrap();
    let b = tiny_bundle(d.path(), 5);
    let keys = d.path().join("keys");
    // The digest of "short": a key too short to be accepted, whatever its digest.
    let short_digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"short"))
    };
    std::fs::write(
        &keys,
        format!("read sha256:{short_digest}\nread reader-key-0123456789\n"),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let s = start(
        &b,
        &d.path().join("store"),
        &["--api-keys", keys.to_str().unwrap()],
    );
    assert!(
        s.log().contains("readable by every user") && s.log().contains("chmod 600"),
        "{}",
        s.log()
    );
    let c = client();
    let get = |p: &str, auth: Option<&str>| {
        let mut r = c.get(s.at(p));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send().unwrap()
    };
    assert_eq!(get("/v1/stats", Some("Bearer short")).status(), 401);
    assert_eq!(
        get("/v1/stats", Some("bearer reader-key-0123456789")).status(),
        200
    );
    assert_eq!(
        get("/v1/stats", Some("BEARER reader-key-0123456789")).status(),
        200
    );
    let rk = Some("Bearer reader-key-0123456789");
    let (st, code, _) = error_of(get("/v1/search", rk));
    assert_eq!((st, code.as_str()), (405, "method_not_allowed"));
    // A path segment that does not decode to UTF-8: axum's own 400, in the envelope.
    let (st, code, _) = error_of(get("/v1/images/%FF%FE", rk));
    assert_eq!((st, code.as_str()), (400, "bad_request"));
    let (st, code, _) = error_of(get(&format!("/v1/stats?{}", "a".repeat(9000)), rk));
    assert_eq!((st, code.as_str()), (414, "uri_too_long"));
    let (st, code, _) = error_of(
        c.get(s.at("/v1/stats"))
            .header("authorization", "Bearer reader-key-0123456789")
            .header("x-big", "v".repeat(40 << 10))
            .send()
            .unwrap(),
    );
    assert_eq!((st, code.as_str()), (431, "headers_too_large"));
}

/// A store that cannot open (its writer lock held by another process) stops the
/// process with a non-zero exit naming the holder, so a supervisor restarts it; a
/// forced SEN_SIMD the CPU lacks stops start-up instead of failing searches.
#[test]
fn what_cannot_start_exits() {
    let d = tempfile::tempdir().unwrap();
    let b = tiny_bundle(d.path(), 5);
    let store = d.path().join("store");
    let s = start(&b, &store, &[]);
    let (mut second, _) = Serve::launch(SEN, &b).store(&store).spawn().unwrap();
    let st = second.wait_exit(Duration::from_secs(30));
    assert!(!st.success(), "{st}");
    let log = second.final_log();
    assert!(
        log.contains(&format!("pid {}", s.child.id())) && log.contains("one writer at a time"),
        "{log}"
    );
    drop(s);
    let foreign = if cfg!(target_arch = "x86_64") {
        "neon"
    } else {
        "avx2"
    };
    let out = sen_core::process::command(SEN)
        .args(["serve", "--listen", "127.0.0.1:0", "--bundle"])
        .arg(&b)
        .arg("--store")
        .arg(&store)
        .env("SEN_SIMD", foreign)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("SEN_SIMD"), "{e}");
}

/// A real full disk under `sen serve` (a 16 MiB tmpfs): ingest answers 507
/// `insufficient_storage` with nothing of the request stored, `/readyz` says the store
/// takes no new rows, a delete by camera still works, and ingest works again after
/// it. Needs root to mount (CI runs as root); elsewhere skipped, saying why.
#[test]
fn a_full_disk_answers_507_and_deletes_free_room() {
    let d = tempfile::tempdir().unwrap();
    let Some(fs) = sen_testing::Tmpfs::mount(&d.path().join("tmpfs"), "16m") else {
        return;
    };
    let mnt = fs.dir.clone();
    let b = tiny_bundle(d.path(), 5);
    let s = start(&b, &mnt.join("store"), &["--disk-reserve-mib", "6"]);
    let c = client();
    // Crops big enough to fill the disk in a few hundred requests: noise, as PNG.
    let big = {
        let mut px = image::RgbImage::new(160, 160);
        let mut x = 1u32;
        for p in px.pixels_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *p = image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8]);
        }
        let mut out = std::io::Cursor::new(vec![]);
        image::DynamicImage::ImageRgb8(px)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        out.into_inner()
    };
    let stats = || -> Value { c.get(s.at("/v1/stats")).send().unwrap().json().unwrap() };
    let mut acked = 0u64;
    let mut n = 0;
    let full = loop {
        assert!(n < 2000, "16 MiB never filled");
        let camera = if n % 2 == 0 { "even" } else { "odd" };
        let r = c
            .post(s.at(&format!("/v1/images?camera={camera}")))
            .header("content-type", "image/png")
            .body(big.clone())
            .send()
            .unwrap();
        if r.status() != 201 {
            break error_of(r);
        }
        acked += 1;
        n += 1;
    };
    assert_eq!(
        (full.0, full.1.as_str()),
        (507, "insufficient_storage"),
        "{}",
        full.2
    );
    assert_eq!(stats()["rows"], acked, "nothing of the refused request");
    let (st, _, msg) = error_of(c.get(s.at("/readyz")).send().unwrap());
    assert_eq!(st, 503);
    assert!(
        msg.contains("disk is full") && msg.contains("deletes still work"),
        "{msg}"
    );
    let r = c
        .post(s.at("/v1/delete"))
        .json(&json!({"camera": "even"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200, "a delete on a full disk");
    let deleted = r.json::<Value>().unwrap()["deleted"].as_u64().unwrap();
    assert!(deleted > 0);
    assert_eq!(c.get(s.at("/readyz")).send().unwrap().status(), 200);
    let r = c
        .post(s.at("/v1/images?camera=odd"))
        .header("content-type", "image/png")
        .body(big.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(stats()["rows"], acked - deleted + 1);
}
