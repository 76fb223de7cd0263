//! Durability, proven by killing: a child process adds, deletes and compacts in a
//! loop and reports each acknowledgement; the parent SIGKILLs it at random moments.
//! After each kill the store opens, `verify` passes, every acknowledged row is there
//! with its exact embedding, crop and metadata, and no acknowledged delete came back.
//! `SEN_CRASH_ROUNDS` sets the number of kills (20 here; `make crash-test` runs 500).
//!
//! Also: a power cut over the fault layer (unsynced segment files dropped), erasure of
//! a deleted crop from every file, a snapshot taken during writes, a second writer,
//! a store made for another encoder, damage found by `verify` and on use, and a full
//! disk.

mod common;

use common::*;
use sen_store::io::testing::FaultFs;
use sen_store::{Mode, Options, Query, Selector, Storage, Store, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn small() -> Options {
    Options {
        flush_rows: 40,
        segment_rows: 200,
        ..Options::default()
    }
}

/// The child's work: runs only when the parent starts this test binary with
/// SEN_CRASH_CHILD set (it is a test so the harness can start it; alone it returns).
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("SEN_CRASH_CHILD") else {
        return;
    };
    let dir = Path::new(&dir);
    let seed: u64 = std::env::var("SEN_CRASH_SEED").unwrap().parse().unwrap();
    let store = if dir.join("store.db").exists() {
        Store::open_with(dir, Mode::Writer, small()).unwrap()
    } else {
        Store::create_with(dir, &config(Storage::F16, true), small()).unwrap()
    };
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut tag = seed * 1_000_000;
    for step in 0u64.. {
        let h = mix(seed ^ step);
        match h % 10 {
            0..=6 => {
                let n = 1 + (h >> 8) % 30;
                let rows: Vec<_> = (0..n).map(|i| row(tag + i)).collect();
                let (first, last) = store.add(rows).unwrap();
                writeln!(out, "add {first} {last} {tag}").unwrap();
                tag += n;
            }
            7 | 8 => {
                let live: Vec<u64> = store.live_ids(0, u64::MAX);
                if !live.is_empty() {
                    let id = live[(h >> 16) as usize % live.len()];
                    // The intent first: a kill after the commit and before "del" leaves
                    // a delete that happened without being acknowledged.
                    writeln!(out, "deleting {id}").unwrap();
                    out.flush().unwrap();
                    store.delete(Selector::Ids(vec![id])).unwrap();
                    writeln!(out, "del {id}").unwrap();
                }
            }
            _ => {
                store.compact().unwrap();
                writeln!(out, "compact").unwrap();
            }
        }
        out.flush().unwrap();
    }
}

fn rounds() -> usize {
    std::env::var("SEN_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// Check every acknowledged row and delete against the reopened store. A row whose
/// delete was started but not acknowledged (`maybe`) may be either there or gone;
/// everything else acknowledged must be exactly as written.
fn check_acked(dir: &Path, added: &BTreeMap<u64, u64>, deleted: &BTreeSet<u64>) {
    check_acked_maybe(dir, added, deleted, &BTreeSet::new())
}

fn check_acked_maybe(
    dir: &Path,
    added: &BTreeMap<u64, u64>,
    deleted: &BTreeSet<u64>,
    maybe: &BTreeSet<u64>,
) {
    let rep = sen_store::verify::verify(dir).unwrap();
    assert!(
        rep.problems.is_empty(),
        "verify after a kill: {:?}",
        rep.problems
    );
    let store = Store::open_with(dir, Mode::Writer, small()).unwrap();
    for (&id, &tag) in added {
        if deleted.contains(&id) {
            assert!(
                matches!(store.row(id), Err(StoreError::NotFound(_))),
                "acknowledged delete of {id} came back"
            );
            continue;
        }
        let want = row(tag);
        if maybe.contains(&id) && matches!(store.row(id), Err(StoreError::NotFound(_))) {
            continue;
        }
        let got = store
            .row(id)
            .unwrap_or_else(|e| panic!("acknowledged row {id} lost: {e}"));
        assert_eq!(
            (got.camera, got.time_ms, got.path, got.pid),
            (want.camera, want.time_ms, want.path, want.pid)
        );
        assert_eq!(got.attrs, want.attrs.map(serde_json::Value::Object));
        assert_eq!(
            store.embedding(id).unwrap(),
            stored(&want.embedding, Storage::F16)
        );
        assert_eq!(store.crop(id).unwrap(), want.crop);
    }
}

/// Kills per store directory: long runs start a fresh store every this many rounds so
/// the per-round check (every acknowledged row) stays bounded.
const KILLS_PER_STORE: usize = 50;

#[test]
fn killed_at_random_moments_loses_nothing_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let (mut added, mut deleted) = (BTreeMap::new(), BTreeSet::new());
    let mut maybe = BTreeSet::new();
    let exe = std::env::current_exe().unwrap();
    let t0 = Instant::now();
    let n = rounds();
    let (mut total_added, mut total_deleted) = (0, 0);
    for round in 0..n {
        let dir = d.path().join(format!("store{}", round / KILLS_PER_STORE));
        if round % KILLS_PER_STORE == 0 {
            total_added += added.len();
            total_deleted += deleted.len();
            added.clear();
            deleted.clear();
        }
        let mut child = sen_core::process::command(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("SEN_CRASH_CHILD", &dir)
            .env("SEN_CRASH_SEED", (round as u64 + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill after a random number of acknowledgements (and a random moment).
        let wait_acks = 1 + mix(round as u64 * 7919) % 40;
        let mut acks = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while acks < wait_acks && Instant::now() < deadline {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                if line.starts_with("add ") || line.starts_with("del ") || line == "compact" {
                    acks += 1;
                }
                record(&line, &mut added, &mut deleted);
                record_intent(&line, &mut maybe);
            }
        }
        std::thread::sleep(Duration::from_micros(mix(round as u64) % 5000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        // Acknowledgements printed before the kill count too.
        for line in rx.try_iter() {
            record(&line, &mut added, &mut deleted);
            record_intent(&line, &mut maybe);
        }
        assert!(
            acks > 0,
            "round {round}: the child acknowledged nothing in 20 s"
        );
        check_acked_maybe(&dir, &added, &deleted, &maybe);
        // Settle the unacknowledged deletes: now they either happened or did not.
        let s = Store::open_with(&dir, Mode::Reader, small()).unwrap();
        for id in std::mem::take(&mut maybe) {
            if !deleted.contains(&id) && matches!(s.row(id), Err(StoreError::NotFound(_))) {
                deleted.insert(id);
            }
        }
    }
    eprintln!(
        "{n} kills, {} rows acknowledged, {} deletes acknowledged, in {:.1} s",
        total_added + added.len(),
        total_deleted + deleted.len(),
        t0.elapsed().as_secs_f64()
    );
}

/// A delete the child started (acknowledged or not).
fn record_intent(line: &str, maybe: &mut BTreeSet<u64>) {
    if let Some(id) = line.strip_prefix("deleting ") {
        maybe.insert(id.parse().unwrap());
    }
}

fn record(line: &str, added: &mut BTreeMap<u64, u64>, deleted: &mut BTreeSet<u64>) {
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.first() {
        Some(&"add") => {
            let (first, last, tag): (u64, u64, u64) = (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
            );
            for id in first..=last {
                added.insert(id, tag + (id - first));
            }
        }
        Some(&"del") => {
            deleted.insert(f[1].parse().unwrap());
        }
        _ => {}
    }
}

/// A power cut drops what was not synced: over the fault layer, segment files and
/// renames not yet fsynced vanish. Every acknowledged row and delete must survive.
#[test]
fn a_power_cut_keeps_what_was_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let fs = Arc::new(FaultFs::new());
    let opts = Options {
        fs: fs.clone(),
        ..small()
    };
    let store = Store::create_with(&dir, &config(Storage::F32, true), opts.clone()).unwrap();
    let mut added = BTreeMap::new();
    let mut deleted = BTreeSet::new();
    let mut tag = 0;
    for round in 0..12u64 {
        let rows: Vec<_> = (0..17).map(|i| row(tag + i)).collect();
        let (first, last) = store.add(rows).unwrap();
        for id in first..=last {
            added.insert(id, tag + (id - first));
        }
        tag += 17;
        if round % 3 == 2 {
            store.delete(Selector::Ids(vec![first + 1])).unwrap();
            deleted.insert(first + 1);
        }
        if round % 5 == 4 {
            store.compact().unwrap();
        }
    }
    // Power cut while the store is open: unsynced segment state is gone.
    fs.power_cut().unwrap();
    drop(store);
    let store = Store::open(&dir, Mode::Reader).unwrap();
    drop(store);
    check_acked_f32(&dir, &added, &deleted);
}

fn check_acked_f32(dir: &Path, added: &BTreeMap<u64, u64>, deleted: &BTreeSet<u64>) {
    let rep = sen_store::verify::verify(dir).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    let store = Store::open(dir, Mode::Writer).unwrap();
    for (&id, &tag) in added {
        if deleted.contains(&id) {
            assert!(matches!(store.row(id), Err(StoreError::NotFound(_))));
        } else {
            assert_eq!(store.embedding(id).unwrap(), row(tag).embedding, "row {id}");
            assert_eq!(store.row(id).unwrap().path, row(tag).path);
        }
    }
}

/// The fault layer itself: a file whose rename was never followed by a directory
/// fsync is gone after a power cut (so the test above can fail).
#[test]
fn the_fault_layer_drops_unsynced_renames() {
    use sen_store::io::Durable;
    let d = tempfile::tempdir().unwrap();
    let fs = FaultFs::new();
    let (tmp, a, b) = (
        d.path().join("x.tmp"),
        d.path().join("a"),
        d.path().join("b"),
    );
    fs.write_synced(&tmp, &[b"one"]).unwrap();
    fs.rename(&tmp, &a).unwrap();
    fs.sync_dir(d.path()).unwrap();
    fs.write_synced(&tmp, &[b"two"]).unwrap();
    fs.rename(&tmp, &b).unwrap(); // no directory fsync
    fs.power_cut().unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), b"one");
    assert!(!b.exists() && !tmp.exists());
}

/// Erasure: a deleted row's crop (and path and attributes) leave every file of the
/// store once compaction ran.
#[test]
fn a_deleted_crop_is_gone_from_every_file_after_compaction() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let store = Store::create_with(&dir, &config(Storage::F32, true), small()).unwrap();
    let marker = format!("SEN-ERASURE-{}", uuid_like());
    let mut secret = row(1);
    secret.crop.as_mut().unwrap().bytes = format!("jpeg..{marker}..jpeg").into_bytes();
    secret.path = format!("{marker}.jpg");
    store.add((10..60).map(row).collect()).unwrap();
    let (id, _) = store.add(vec![secret]).unwrap();
    store.add((60..130).map(row).collect()).unwrap();
    store.flush().unwrap();
    assert!(
        scan(&dir, marker.as_bytes()),
        "the marker is in the store before the delete"
    );
    store.delete(Selector::Ids(vec![id])).unwrap();
    store.compact().unwrap();
    drop(store);
    assert!(
        !scan(&dir, marker.as_bytes()),
        "the marker survived delete + compact"
    );
}

fn uuid_like() -> String {
    format!("{:016x}", mix(std::process::id() as u64 ^ 0x5EED))
}

/// Whether any file under `dir` contains `needle`.
fn scan(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn a_snapshot_taken_during_writes_opens_and_verifies() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let store = Arc::new(Store::create_with(&dir, &config(Storage::F16, true), small()).unwrap());
    store.add((0..100).map(row).collect()).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let w = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut tag = 1000;
            // Bounded: at most 400 batches.
            for _ in 0..400 {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                store.add((tag..tag + 10).map(row).collect()).unwrap();
                if tag % 70 == 0 {
                    store.compact().unwrap();
                }
                tag += 10;
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    for k in 0..3 {
        let out = d.path().join(format!("snap{k}"));
        sen_store::verify::snapshot(&dir, &out).unwrap();
        let rep = sen_store::verify::verify(&out).unwrap();
        assert!(rep.problems.is_empty(), "snapshot {k}: {:?}", rep.problems);
        assert!(rep.rows >= 100);
        let s = Store::open(&out, Mode::Writer).unwrap();
        let q = Query {
            vector: unit(5),
            k: 3,
            cameras: None,
            time: Default::default(),
            exclude: vec![],
            group: false,
        };
        assert_eq!(s.search(&[q], 1).unwrap()[0].len(), 3);
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    w.join().unwrap();
}

#[test]
fn bad_input_is_a_clear_error_and_the_store_stays_whole() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let store = Store::create_with(&dir, &config(Storage::F32, true), small()).unwrap();
    store.add((0..50).map(row).collect()).unwrap();
    // A second writer is refused, naming the holder's pid.
    let e = Store::open(&dir, Mode::Writer).err().unwrap().to_string();
    assert!(
        e.contains(&format!("pid {}", std::process::id())) && e.contains("one writer"),
        "{e}"
    );
    // Readers are fine meanwhile.
    Store::open(&dir, Mode::Reader).unwrap();
    // Another encoder or dimension.
    let e = store
        .check_encoder(&"cd".repeat(32), DIM, &preprocess(), "b2")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("made for image encoder") && e.contains("b2"),
        "{e}"
    );
    let e = store
        .check_encoder(&"ab".repeat(32), 8, &preprocess(), "b3")
        .unwrap_err()
        .to_string();
    assert!(e.contains("8 dims"), "{e}");
    // The same encoder with another resize filter (SPEC §10): refused, naming both
    // preprocessing blocks; the store's own passes.
    store
        .check_encoder(&"ab".repeat(32), DIM, &preprocess(), "b1")
        .unwrap();
    let mut bilinear = preprocess();
    bilinear.resize = "bilinear".into();
    let e = store
        .check_encoder(&"ab".repeat(32), DIM, &bilinear, "b4")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&preprocess().canonical_json())
            && e.contains(&bilinear.canonical_json())
            && e.contains("b4"),
        "{e}"
    );
    // Unknown ids: listed, nothing deleted.
    match store.delete(Selector::Ids(vec![3, 999, 4, 1000])) {
        Err(StoreError::UnknownIds(u)) => assert_eq!(u, vec![999, 1000]),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.stats().unwrap().rows, 50);
    // Bad rows: wrong dimension, non-finite, bad camera, seconds for a time, no crop.
    for (mut r, want) in [
        (row(1), "embedding has 3 values"),
        (row(2), "not finite"),
        (row(3), "camera"),
        (row(4), "seconds"),
        (row(5), "has none"),
    ] {
        match want {
            "embedding has 3 values" => r.embedding.truncate(3),
            "not finite" => r.embedding[2] = f32::NAN,
            "camera" => r.camera = "c".repeat(129),
            "seconds" => r.time_ms = 1_795_961_002,
            _ => r.crop = None,
        }
        let e = store.add(vec![row(9), r]).unwrap_err().to_string();
        assert!(e.contains(want) && e.contains("row 2"), "{want}: {e}");
    }
    assert_eq!(store.stats().unwrap().rows, 50, "failed adds add nothing");
    store.flush().unwrap();
    drop(store);
    // Damage: a flipped byte in a segment's embeddings is found by verify, and on use
    // it is an error naming the row, never a result.
    let seg = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut b = std::fs::read(&seg).unwrap();
    let n = b.len();
    b[n - 5] ^= 0x40;
    std::fs::write(&seg, &b).unwrap();
    let rep = sen_store::verify::verify(&dir).unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("embedding checksum")),
        "{:?}",
        rep.problems
    );
    let store = Store::open(&dir, Mode::Writer).unwrap();
    let last = store.live_ids(0, u64::MAX).into_iter().max().unwrap();
    let v = store.embedding(last).unwrap();
    let q = Query {
        vector: v,
        k: 50,
        cameras: None,
        time: Default::default(),
        exclude: vec![],
        group: false,
    };
    let e = store.search(&[q], 1).unwrap_err().to_string();
    assert!(
        e.contains(&format!("row {last}")) && e.contains("checksum"),
        "{e}"
    );
    // A damaged database header is refused at open, naming the file.
    drop(store);
    let db = dir.join("store.db");
    let mut b = std::fs::read(&db).unwrap();
    b[3] = b'X';
    std::fs::write(&db, &b).unwrap();
    let e = Store::open(&dir, Mode::Reader).err().unwrap().to_string();
    assert!(
        e.contains("store.db") && e.contains("not an SQLite database"),
        "{e}"
    );
}

/// A full disk while writing a segment: the flush fails, the rows stay durable in the
/// pending log, and the store reopens with everything acknowledged.
#[test]
fn a_full_disk_loses_nothing_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let fs = Arc::new(FaultFs::new());
    let opts = Options {
        fs: fs.clone(),
        flush_rows: 1_000_000,
        segment_rows: 1_000_000,
        ..Options::default()
    };
    let store = Store::create_with(&dir, &config(Storage::F32, true), opts).unwrap();
    let (first, last) = store.add((0..64).map(row).collect()).unwrap();
    fs.fail_writes_after(100);
    let e = store.flush().unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert!(e.to_string().contains("segments"), "names the file: {e}");
    fs.fail_writes_after(u64::MAX);
    drop(store);
    let store = Store::open(&dir, Mode::Writer).unwrap();
    assert_eq!(
        store.live_ids(0, u64::MAX),
        (first..=last).collect::<Vec<_>>()
    );
    store.flush().unwrap();
    assert!(sen_store::verify::verify(&dir).unwrap().problems.is_empty());
}

/// The child of the file-size-limit test: adds until the limit stops it, printing
/// each acknowledgement and then the error.
#[test]
fn fsize_child() {
    let Ok(dir) = std::env::var("SEN_FSIZE_CHILD") else {
        return;
    };
    let dir = Path::new(&dir);
    let store = Store::open_with(dir, Mode::Writer, small()).unwrap();
    let limit: u64 = std::env::var("SEN_FSIZE_LIMIT").unwrap().parse().unwrap();
    // SAFETY: plain libc calls; SIGXFSZ ignored so a write past the limit fails with
    // EFBIG instead of killing the process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let r = libc::rlimit {
            rlim_cur: limit,
            rlim_max: limit,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &r), 0);
    }
    let out = std::io::stdout();
    let mut out = out.lock();
    let mut tag = 10_000;
    // Bounded: the limit stops it long before 10,000 batches.
    for _ in 0..10_000 {
        match store.add((tag..tag + 20).map(row).collect()) {
            Ok((first, last)) => writeln!(out, "add {first} {last} {tag}").unwrap(),
            Err(e) => {
                writeln!(out, "error {e}").unwrap();
                out.flush().unwrap();
                return;
            }
        }
        out.flush().unwrap();
        tag += 20;
    }
    panic!("the file-size limit never stopped the adds");
}

/// The disk filling up during adds (RLIMIT_FSIZE in a child): the failing add is a
/// clear error, nothing acknowledged is lost, and the store opens and verifies.
#[test]
fn a_file_size_limit_during_adds_loses_nothing_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let store = Store::create_with(&dir, &config(Storage::F16, true), small()).unwrap();
    let (first, last) = store.add((0..30).map(row).collect()).unwrap();
    drop(store);
    let mut added: BTreeMap<u64, u64> = (first..=last).map(|id| (id, id - first)).collect();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let limit = size(&dir.join("store.db")).max(size(&dir.join("store.db-wal"))) + 300_000;
    let out = sen_core::process::command(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "fsize_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("SEN_FSIZE_CHILD", &dir)
        .env("SEN_FSIZE_LIMIT", limit.to_string())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut deleted = BTreeSet::new();
    for line in text.lines() {
        record(line, &mut added, &mut deleted);
    }
    let err = text
        .lines()
        .find(|l| l.starts_with("error "))
        .unwrap_or_else(|| panic!("no error line: {text}"));
    assert!(err.contains("store") && !err.contains("panicked"), "{err}");
    assert!(
        added.len() > 30,
        "some adds succeeded before the limit: {text}"
    );
    check_acked(&dir, &added, &deleted);
}
