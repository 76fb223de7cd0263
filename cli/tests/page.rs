//! The operator's search page in a real browser: headless Chromium driven over the
//! DevTools protocol (chromiumoxide) against `sen serve` on an ephemeral loopback
//! port with a synthetic gallery. Chromium comes from Debian's `chromium` package
//! (`.ci/run` installs it); without it this test fails under CI and says how to
//! install it elsewhere. Writes a screenshot to `target/search-page.png` (or to
//! `SEN_SCREENSHOT`); `SEN_PAGE_BUNDLE` and `SEN_PAGE_STORE` point it at a trained
//! bundle and its store, `SEN_PAGE_QUERY` sets the query (`make screenshot`).

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::emulation::SetDeviceMetricsOverrideParams;
use chromiumoxide::cdp::browser_protocol::page::{
    CaptureScreenshotFormat, DialogType, EventJavascriptDialogOpening, HandleJavaScriptDialogParams,
};
use chromiumoxide::page::{Page, ScreenshotParams};
use futures::StreamExt;
use sen_testing::{Serve, result_ids, synth_crops, tiny_bundle};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const READ: &str = "page-reader-key-0123456789";
const WRITE: &str = "page-writer-key-0123456789";
const XSS: &str = "<img src=x onerror=\"window.__xss=1\">";

fn chromium() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SEN_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|n| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(n))
                    .find(|p| p.is_file())
            })
        })
}

fn serve(bundle: &Path, store: &Path, keys: &Path) -> Serve {
    Serve::launch(env!("CARGO_BIN_EXE_sen"), bundle)
        .store(store)
        .args([std::ffi::OsStr::new("--api-keys"), keys.as_os_str()])
        .start()
}

/// Evaluate `js` in the page and return its JSON value.
async fn js(page: &Page, js: &str) -> Value {
    page.evaluate(js)
        .await
        .unwrap_or_else(|e| panic!("{js}: {e}"))
        .into_value()
        .unwrap_or(Value::Null)
}

/// Wait (bounded) until `cond` (JavaScript) is true.
async fn until(page: &Page, cond: &str, what: &str) {
    let t = Instant::now();
    while js(page, cond).await != Value::Bool(true) {
        if t.elapsed() > Duration::from_secs(20) {
            let state = js(page, "JSON.stringify({message: document.getElementById('message').textContent, \
                detail: document.getElementById('detail-message').textContent, \
                open: document.getElementById('detail').open, results: document.querySelectorAll('#results li').length})").await;
            panic!("timed out waiting for {what}; page: {state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const GRID: &str =
    "Array.from(document.querySelectorAll('#results li')).map(li => Number(li.dataset.id))";

/// `/v1/search`'s ids for `body` (a blocking call, moved off the async worker).
fn api_ids(url: &str, body: Value) -> Vec<u64> {
    tokio::task::block_in_place(|| api_ids_blocking(url, body))
}

fn api_ids_blocking(url: &str, body: Value) -> Vec<u64> {
    result_ids(&api_blocking(url, body))
}

fn api_blocking(url: &str, body: Value) -> Value {
    reqwest::blocking::Client::new()
        .post(format!("{url}/v1/search"))
        .bearer_auth(READ)
        .json(&body)
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// Enter on the button `selector` (a click's mouse-up would wait on the dialog), then
/// the confirmation it opens accepted as the operator would, checking that it is a
/// real confirm dialog saying `says`.
async fn confirmed_by_enter(page: &Page, selector: &str, says: &'static str) {
    let mut dialogs = page
        .event_listener::<EventJavascriptDialogOpening>()
        .await
        .unwrap();
    let p2 = page.clone();
    let accept = tokio::spawn(async move {
        if let Some(ev) = dialogs.next().await {
            assert_eq!(ev.r#type, DialogType::Confirm);
            assert!(ev.message.contains(says), "{}", ev.message);
            p2.execute(HandleJavaScriptDialogParams::new(true))
                .await
                .unwrap();
        }
    });
    page.find_element(selector)
        .await
        .unwrap()
        .focus()
        .await
        .unwrap();
    let (key, sel) = (page.clone(), selector.to_string());
    let press = tokio::spawn(async move {
        let _ = key
            .find_element(sel.as_str())
            .await
            .unwrap()
            .press_key("Enter")
            .await;
    });
    tokio::time::timeout(Duration::from_secs(20), accept)
        .await
        .expect("no confirmation dialog within 20 s")
        .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), press).await;
}

/// The page with the write key: "watch this" on the typed description and a
/// selected camera (no score calibration in the tiny bundle, so a score threshold),
/// the watch in the list; a crop on that camera raises a live card with its crop; one
/// on another camera does not; the history lists it; the list deletes the watch after
/// a confirmation. The watch's name is hostile and shows as text.
async fn watches_and_alerts(page: &Page, s: &Serve, text: &str) {
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let r = http
            .get(format!("{}{path}", s.url))
            .bearer_auth(READ)
            .send();
        async move { r.await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(
        js(
            page,
            "document.getElementById('watch-threshold-label').textContent"
        )
        .await,
        json!("Alert at score ≥")
    );
    assert_eq!(
        js(page, "document.getElementById('watch-prior-field').hidden").await,
        json!(true)
    );
    page.find_element("#watch-box summary")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page.find_element("#watch-name")
        .await
        .unwrap()
        .click()
        .await
        .unwrap()
        .type_str(XSS)
        .await
        .unwrap();
    js(page, "document.getElementById('watch-threshold').value = '-1'; \
        Array.from(document.querySelectorAll('#cameras option')).forEach(o => o.selected = o.value === 'cam-b'); 0").await;
    page.find_element("#watch-add")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        page,
        "document.getElementById('watch-message').textContent.startsWith('Watching')",
        "the watch to be made",
    )
    .await;
    let w = get("/v1/watches").await;
    let w = &w["watches"];
    assert_eq!(w.as_array().unwrap().len(), 1, "{w}");
    assert_eq!(w[0]["name"], XSS);
    assert_eq!(w[0]["text"], text);
    assert_eq!(w[0]["cameras"], json!(["cam-b"]));
    assert_eq!(w[0]["min_score"], json!(-1.0));
    let id = w[0]["id"].as_u64().unwrap();
    until(
        page,
        &format!("document.querySelector('#watch-list li[data-id=\"{id}\"] button') !== null"),
        "the watch in the list",
    )
    .await;
    // A crop on cam-a (not the watch's camera), then one on cam-b: one card, cam-b's.
    let tmp = tempfile::tempdir().unwrap();
    let crops = tokio::task::block_in_place(|| synth_crops(tmp.path(), 9, 2));
    let mut row = 0;
    for (cam, (_, img)) in ["cam-a", "cam-b"].into_iter().zip(crops) {
        let r = http
            .post(format!("{}/v1/images", s.url))
            .query(&[("camera", cam)])
            .bearer_auth(WRITE)
            .header("content-type", "image/jpeg")
            .body(img)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        row = r.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    }
    until(
        page,
        "document.querySelectorAll('#alert-cards li').length > 0",
        "a live alert card",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let cards = js(page, "Array.from(document.querySelectorAll('#alert-cards li')).map(li => [li.querySelector('.name').textContent, li.querySelector('.camera').textContent, li.querySelector('.time').textContent])").await;
    assert_eq!(cards.as_array().unwrap().len(), 1, "{cards}");
    assert_eq!(cards[0][0], XSS);
    assert_eq!(cards[0][1], "cam-b");
    assert!(cards[0][2].as_str().unwrap().contains("UTC"), "{cards}");
    until(page, "Array.from(document.querySelectorAll('#alert-cards img')).every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)", "the alert's crop").await;
    let alerts = get("/v1/alerts").await;
    assert_eq!(alerts["alerts"][0]["row"], json!(row));
    // The history.
    page.find_element("#history-box summary")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    page.find_element("#history-load")
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        page,
        "document.querySelectorAll('#history li[data-id]').length === 1",
        "the history",
    )
    .await;
    let h = js(page, "document.querySelector('#history li').textContent").await;
    assert!(
        h.as_str().unwrap().contains(&format!("row {row}"))
            && h.as_str().unwrap().contains("cam-b"),
        "{h}"
    );
    assert_eq!(
        js(
            page,
            "window.__xss === undefined && document.querySelectorAll('img[src=\"x\"]').length === 0"
        )
        .await,
        json!(true)
    );
    // Deleted from the list, after the confirmation.
    confirmed_by_enter(
        page,
        &format!("#watch-list li[data-id=\"{id}\"] button"),
        "Delete watch",
    )
    .await;
    until(
        page,
        &format!("document.querySelector('#watch-list li[data-id=\"{id}\"]') === null"),
        "the deleted watch to leave",
    )
    .await;
    assert_eq!(get("/v1/watches").await["watches"], json!([]));
}

#[test]
fn the_search_page_in_a_real_browser() {
    if std::env::var_os("SEN_SKIP_BROWSER").is_some() {
        println!("SKIPPED: SEN_SKIP_BROWSER is set (make test-aarch64 runs no browser)");
        return;
    }
    let Some(chrome) = chromium() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "chromium is not installed (CI is set, so this is a failure): `apt-get install chromium`; .ci/run installs it"
            );
        }
        eprintln!(
            "SKIPPED: no chromium on PATH; install it with `apt-get install chromium` (or set SEN_CHROMIUM) to run the browser test"
        );
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let keys = d.path().join("keys");
    std::fs::write(&keys, format!("read {READ}\nwrite {WRITE}\n")).unwrap();
    let trained = std::env::var_os("SEN_PAGE_BUNDLE").map(PathBuf::from);
    let (bundle, store) = match (&trained, std::env::var_os("SEN_PAGE_STORE")) {
        (Some(b), Some(s)) => (b.clone(), PathBuf::from(s)),
        _ => (tiny_bundle(d.path(), 7), d.path().join("store")),
    };
    let s = serve(&bundle, &store, &keys);
    let http = reqwest::blocking::Client::new();
    // A synthetic gallery on three cameras, one named to attack the page.
    if trained.is_none() {
        for (i, (_, img)) in synth_crops(d.path(), 4, 30).into_iter().enumerate() {
            let cam = match i % 3 {
                0 => "cam-a",
                1 => "cam-b",
                _ => XSS,
            };
            // cam-a's crops are two tracks of five (SPEC §12), so the page groups them.
            let mut q = vec![
                ("camera", cam.to_string()),
                (
                    "time",
                    (1_795_961_002_120i64 + i as i64 * 60_000).to_string(),
                ),
            ];
            if cam == "cam-a" {
                q.push(("track", format!("walk-{}", i % 2)));
            }
            let r = http
                .post(format!("{}/v1/images", s.url))
                .query(&q)
                .bearer_auth(WRITE)
                .header("content-type", "image/jpeg")
                .body(img)
                .send()
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    }
    // The page's security headers.
    let r = http.get(format!("{}/", s.url)).send().unwrap();
    assert_eq!(r.headers()["content-security-policy"], sen_serve::CSP);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["referrer-policy"], "no-referrer");
    let html = r.text().unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let profile = d.path().join("chrome-profile");
        let cfg = BrowserConfig::builder()
            .chrome_executable(chrome)
            .user_data_dir(profile)
            .no_sandbox()
            .window_size(1280, 1000)
            .arg("--headless=new")
            .build()
            .unwrap();
        let (mut browser, mut handler) = Browser::launch(cfg).await.unwrap();
        let h = tokio::spawn(async move { while let Some(e) = handler.next().await { if e.is_err() { break; } } });
        let page = browser.new_page(format!("{}/", s.url)).await.unwrap();
        until(&page, "document.readyState === 'complete'", "the page to load").await;
        // Every control has a label.
        let unlabelled = js(&page, "Array.from(document.querySelectorAll('input, select, button')).filter(e => \
            !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.id)").await;
        assert_eq!(unlabelled, json!([]), "controls without a label");
        // Without a key the status strip says what to do.
        until(&page, "document.getElementById('message').textContent.includes('API key')", "the 401 message").await;
        // The read key, typed into its field, kept in sessionStorage.
        page.find_element("#key-box summary").await.unwrap().click().await.unwrap();
        page.find_element("#key").await.unwrap().click().await.unwrap().type_str(READ).await.unwrap();
        page.find_element("#key-save").await.unwrap().click().await.unwrap();
        assert_eq!(js(&page, "sessionStorage.getItem('sen.apiKey')").await, json!(READ));
        until(&page, "document.getElementById('status-ready').textContent === 'ready'", "the status strip").await;
        // The read key opens the live alert stream (fetch with the Bearer header).
        until(&page, "document.getElementById('alerts-state').textContent === 'live'", "the alert stream").await;
        until(&page, "document.querySelector('#watch-list li') !== null", "the watch list").await;
        until(&page, "document.querySelectorAll('#cameras option').length === 3 || document.querySelectorAll('#cameras option').length > 0", "the cameras").await;
        // A query typed and Enter pressed: the grid shows exactly /v1/search's ids, in order.
        let text = std::env::var("SEN_PAGE_QUERY")
            .unwrap_or_else(|_| "a woman in a white coat with a black handbag".into());
        let text = text.as_str();
        page.find_element("#q").await.unwrap().click().await.unwrap().type_str(text).await.unwrap().press_key("Enter").await.unwrap();
        until(&page, "document.querySelectorAll('#results li').length > 0", "results").await;
        let grid: Vec<u64> = serde_json::from_value(js(&page, GRID).await).unwrap();
        let grouped = |mut b: Value| {
            if trained.is_none() {
                b["group"] = "track".into();
            }
            b
        };
        assert_eq!(grid, api_ids(&s.url, grouped(json!({"text": text, "k": 24}))), "the grid is /v1/search's ranking, one item per track");
        until(&page, "Array.from(document.querySelectorAll('#results img')).every(i => i.src.startsWith('blob:'))", "thumbnails fetched with the key").await;
        assert!(js(&page, "document.getElementById('latency').textContent").await.as_str().unwrap().contains("ms"));
        if trained.is_none() {
            // Filter by a camera: the grid follows.
            js(&page, "const o = Array.from(document.querySelectorAll('#cameras option')).find(o => o.value === 'cam-b'); o.selected = true; 0").await;
            page.find_element("#search").await.unwrap().click().await.unwrap();
            until(&page, "document.getElementById('message').textContent.startsWith('10 ')", "the filtered grid").await;
            let grid: Vec<u64> = serde_json::from_value(js(&page, GRID).await).unwrap();
            assert_eq!(grid, api_ids(&s.url, grouped(json!({"text": text, "k": 24, "cameras": ["cam-b"]}))));
            // cam-a's tracks: one tile each, with their crop count and time span.
            js(&page, "Array.from(document.querySelectorAll('#cameras option')).forEach(o => o.selected = o.value === 'cam-a'); 0").await;
            page.find_element("#search").await.unwrap().click().await.unwrap();
            until(&page, "document.getElementById('message').textContent.startsWith('2 tracks')", "cam-a's two tracks").await;
            let spans = js(&page, "Array.from(document.querySelectorAll('#results .track')).map(e => e.textContent)").await;
            let spans: Vec<String> = serde_json::from_value(spans).unwrap();
            assert_eq!(spans.len(), 2, "{spans:?}");
            assert!(spans.iter().all(|t| t.starts_with("5 crops · ") && t.contains('–')), "{spans:?}");
            js(&page, "Array.from(document.querySelectorAll('#cameras option')).forEach(o => o.selected = false); 0").await;
            page.find_element("#search").await.unwrap().click().await.unwrap();
            until(&page, "!document.getElementById('message').textContent.startsWith('2 tracks') && document.querySelectorAll('#results li').length > 2", "the whole grid again").await;
            let grid: Vec<u64> = serde_json::from_value(js(&page, GRID).await).unwrap();
            js(&page, "Array.from(document.querySelectorAll('#cameras option')).forEach(o => o.selected = false); 0").await;
            // Nothing from the hostile camera name ran; it shows as text.
            assert_eq!(js(&page, "window.__xss === undefined && document.querySelectorAll('img[src=\"x\"]').length === 0").await, json!(true));
            assert_eq!(js(&page, &format!("Array.from(document.querySelectorAll('#cameras option')).some(o => o.textContent === {})", serde_json::to_string(XSS).unwrap())).await, json!(true));
            // More like this, by keyboard: Tab to the first result, Enter, then the button.
            page.find_element("#results li button").await.unwrap().focus().await.unwrap().press_key("Enter").await.unwrap();
            until(&page, "document.getElementById('detail').open", "the detail dialog").await;
            let first = grid[0];
            assert_eq!(js(&page, "document.getElementById('detail-delete').hidden").await, json!(true), "no delete with a read key");
            // The buttons do not move when the crop arrives (the image has a fixed box).
            let before = js(&page, "document.getElementById('detail-like').getBoundingClientRect().top").await;
            until(&page, "document.getElementById('detail-img').complete && document.getElementById('detail-img').naturalWidth > 0", "the detail image").await;
            assert_eq!(js(&page, "document.getElementById('detail-like').getBoundingClientRect().top").await, before, "layout shift in the detail dialog");
            page.find_element("#detail-like").await.unwrap().focus().await.unwrap().press_key("Enter").await.unwrap();
            // More like this of a track is the mean of its crops (like_track).
            let top = tokio::task::block_in_place(|| api_blocking(&s.url, json!({"text": text, "k": 1, "group": "track"})));
            let top = &top["results"][0];
            let grid = if let Some(track) = top["track"].as_str() {
                until(&page, &format!("document.getElementById('message').textContent.includes('like track {track}')"), "more like this track").await;
                let grid: Vec<u64> = serde_json::from_value(js(&page, GRID).await).unwrap();
                assert_eq!(grid, api_ids(&s.url, json!({"like_track": {"camera": top["camera"], "track": track}, "k": 24, "group": "track"})));
                grid
            } else {
                until(&page, &format!("document.getElementById('message').textContent.includes('like row {first}')"), "more like this").await;
                let grid: Vec<u64> = serde_json::from_value(js(&page, GRID).await).unwrap();
                assert_eq!(grid, api_ids(&s.url, json!({"like": first, "k": 24})));
                grid
            };
            assert!(!grid.contains(&first));
            // A wrong key: a clear message.
            js(&page, "sessionStorage.setItem('sen.apiKey', 'wrong-key-0123456789'); 0").await;
            page.find_element("#search").await.unwrap().click().await.unwrap();
            until(&page, "document.getElementById('message').textContent.includes('not known')", "the wrong-key message").await;
            // The write key: delete a row after confirming; it leaves the grid and the store.
            js(&page, &format!("sessionStorage.setItem('sen.apiKey', '{WRITE}'); 0")).await;
            page.find_element("#key-save").await.unwrap();
            js(&page, "document.getElementById('key').value = sessionStorage.getItem('sen.apiKey'); 0").await;
            page.find_element("#key-save").await.unwrap().click().await.unwrap();
            until(&page, "document.getElementById('message').textContent.includes('Key set')", "the key").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            page.find_element("#search").await.unwrap().click().await.unwrap();
            until(&page, "document.querySelectorAll('#results li').length > 0 && document.getElementById('message').textContent.includes('tracks and rows')", "results with the write key").await;
            let victim: u64 = serde_json::from_value(js(&page, "Number(document.querySelector('#results li').dataset.id)").await).unwrap();
            page.find_element("#results li button").await.unwrap().click().await.unwrap();
            until(&page, "document.getElementById('detail').open && !document.getElementById('detail-delete').hidden", "the delete button").await;
            // The confirmation is a real dialog; accept it as the operator would.
            confirmed_by_enter(&page, "#detail-delete", "Delete row").await;
            until(&page, &format!("!document.querySelector('#results li[data-id=\"{victim}\"]')"), "the deleted row to leave").await;
            let st = tokio::task::block_in_place(|| {
                http.get(format!("{}/v1/images/{victim}", s.url)).bearer_auth(READ).send().unwrap().status()
            });
            assert_eq!(st, 404);
            watches_and_alerts(&page, &s, text).await;
        }
        // At 768 px nothing scrolls sideways.
        page.execute(SetDeviceMetricsOverrideParams::new(768, 1000, 1.0, false)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(js(&page, "document.documentElement.scrollWidth <= 768 && document.body.scrollWidth <= 768").await, json!(true));
        page.execute(SetDeviceMetricsOverrideParams::new(1280, 1000, 1.0, false)).await.unwrap();
        if trained.is_some() {
            until(&page, "Array.from(document.querySelectorAll('#results img')).every(i => i.complete && i.naturalWidth > 0)", "thumbnails").await;
        }
        let png = page
            .screenshot(ScreenshotParams::builder().format(CaptureScreenshotFormat::Png).full_page(true).build())
            .await
            .unwrap();
        let out = std::env::var_os("SEN_SCREENSHOT").map(PathBuf::from).unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/search-page.png")
        });
        std::fs::write(&out, png).unwrap();
        eprintln!("screenshot: {}", out.display());
        browser.close().await.unwrap();
        let _ = h.await;
    });
}
