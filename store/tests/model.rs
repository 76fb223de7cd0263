//! The store against a plain in-memory model (proptest): random sequences of adds,
//! deletes of every kind, flushes, compactions and reopens; after each step every
//! search, filtered or not, is the same ranking (SPEC §11) as a brute force over the
//! model, and the counts and camera summaries agree. Most rows belong to tracks
//! (SPEC §12): every grouped search equals the brute-force grouping of the model's
//! ranking (one item per `(camera, track)`, its best crop, with the count and time
//! span of the track's crops that pass the filters).

mod common;

use common::*;
use proptest::prelude::*;
use sen_store::time::TimeRange;
use sen_store::{Mode, Options, Query, Selector, Storage, Store, StoreError};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    Add(Vec<u64>),
    DeleteIds(Vec<usize>, bool),
    DeleteCamera(usize),
    DeleteBefore(u32),
    Flush,
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop::collection::vec(0u64..1_000_000, 1..40).prop_map(Op::Add),
        2 => (prop::collection::vec(0usize..1000, 1..6), any::<bool>()).prop_map(|(v, u)| Op::DeleteIds(v, u)),
        1 => (0usize..4).prop_map(Op::DeleteCamera),
        1 => (0u32..1_000_000).prop_map(Op::DeleteBefore),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

fn opts() -> Options {
    Options {
        flush_rows: 25,
        segment_rows: 60,
        ..Options::default()
    }
}

/// Brute force: allowed rows by (score desc, id asc), scores in f64.
fn brute(model: &BTreeMap<u64, sen_store::NewRow>, q: &Query, dtype: Storage) -> Vec<(f64, u64)> {
    let mut v: Vec<(f64, u64)> = model
        .iter()
        .filter(|(id, r)| {
            !q.exclude.contains(id)
                && q.cameras.as_ref().is_none_or(|c| c.contains(&r.camera))
                && q.time.contains(r.time_ms)
        })
        .map(|(id, r)| {
            let e = stored(&r.embedding, dtype);
            (
                e.iter()
                    .zip(&q.vector)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum(),
                *id,
            )
        })
        .collect();
    v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    v.truncate(q.k);
    v
}

fn same_ranking(got: &[sen_store::Found], want: &[(f64, u64)], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.id != w.1 {
            let other = want.iter().find(|x| x.1 == g.id);
            assert!(
                other.is_some_and(|o| (o.0 - w.0).abs() <= 1e-5),
                "{what}: position {i}: id {} vs {}",
                g.id,
                w.1
            );
        }
        assert!((g.score as f64 - w.0).abs() < 1e-4, "{what}: score");
    }
}

fn check(store: &Store, model: &BTreeMap<u64, sen_store::NewRow>, dtype: Storage, seed: u64) {
    let stats = store.stats().unwrap();
    assert_eq!(stats.rows, model.len() as u64, "row count");
    let mut per: BTreeMap<&str, (u64, i64, i64)> = BTreeMap::new();
    for r in model.values() {
        let e = per
            .entry(r.camera.as_str())
            .or_insert((0, i64::MAX, i64::MIN));
        e.0 += 1;
        e.1 = e.1.min(r.time_ms);
        e.2 = e.2.max(r.time_ms);
    }
    let got: Vec<(String, u64, i64, i64)> = stats
        .cameras
        .iter()
        .map(|c| {
            (
                c.camera.clone(),
                c.rows,
                c.first_ms.unwrap(),
                c.last_ms.unwrap(),
            )
        })
        .collect();
    let want: Vec<(String, u64, i64, i64)> = per
        .into_iter()
        .map(|(c, (n, a, b))| (c.to_string(), n, a, b))
        .collect();
    assert_eq!(got, want, "camera summary");
    // Queries: unfiltered, by cameras, by time, both, "more like this", k beyond the rows.
    let ids: Vec<u64> = model.keys().copied().collect();
    let mut queries = vec![];
    for i in 0..6u64 {
        let h = mix(seed ^ i);
        let cameras = (i % 2 == 1).then(|| {
            vec![
                CAMERAS[(h % 4) as usize].to_string(),
                CAMERAS[((h >> 8) % 4) as usize].to_string(),
            ]
        });
        let time = if i % 3 == 2 {
            TimeRange::new(
                Some(T0 + (h % 500_000) as i64),
                Some(T0 + 500_000 + (h % 500_000) as i64),
            )
            .unwrap()
        } else {
            TimeRange::default()
        };
        let exclude = (i == 4 && !ids.is_empty()).then(|| ids[(h as usize) % ids.len()]);
        let vector = match exclude {
            Some(x) => store.embedding(x).unwrap(),
            None => unit(h),
        };
        queries.push(Query {
            vector,
            k: [1, 5, 10, 1000][(h % 4) as usize],
            cameras,
            time,
            exclude: exclude.into_iter().collect(),
            group: false,
        });
    }
    for threads in [1, 2] {
        let res = store.search(&queries, threads).unwrap();
        for (i, (q, got)) in queries.iter().zip(&res).enumerate() {
            let want = brute(model, q, dtype);
            same_ranking(got, &want, &format!("query {i}, {threads} threads"));
            for f in got {
                let r = &model[&f.id];
                assert_eq!(
                    (&f.camera, f.time_ms, &f.path, f.pid),
                    (&r.camera, r.time_ms, &r.path, r.pid)
                );
            }
        }
        // Grouped by track: the brute-force grouping of the model's ranking.
        let grouped: Vec<Query> = queries
            .iter()
            .map(|q| Query {
                group: true,
                ..q.clone()
            })
            .collect();
        for (i, (q, got)) in grouped
            .iter()
            .zip(store.search(&grouped, threads).unwrap())
            .enumerate()
        {
            same_groups(
                &got,
                &brute_groups(model, q, dtype),
                &format!("grouped query {i}, {threads} threads"),
            );
        }
        // One at a time gives the same.
        for q in &queries[..2] {
            let one = store.search(std::slice::from_ref(q), threads).unwrap();
            same_ranking(&one[0], &brute(model, q, dtype), "single");
        }
    }
}

/// A row; two in three belong to one of five tracks per camera.
fn tracked(tag: u64) -> sen_store::NewRow {
    let h = mix(tag ^ 0x7777);
    sen_store::NewRow {
        track: (!h.is_multiple_of(3)).then(|| format!("t{}", h % 5)),
        bbox: Some([1.0, 2.0, 30.0, 60.0]),
        source: Some("cli".into()),
        ..row(tag)
    }
}

/// Brute-force grouping of the whole ranking: items (best id, its score, crops,
/// first, last) by rank, `k` of them.
fn brute_groups(
    model: &BTreeMap<u64, sen_store::NewRow>,
    q: &Query,
    dtype: Storage,
) -> Vec<(u64, f64, u64, i64, i64)> {
    let all = brute(
        model,
        &Query {
            k: usize::MAX,
            ..q.clone()
        },
        dtype,
    );
    let mut out: Vec<(u64, f64, u64, i64, i64)> = vec![];
    let mut at: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (score, id) in all {
        let r = &model[&id];
        let t = r.time_ms;
        match &r.track {
            None => out.push((id, score, 1, t, t)),
            Some(track) => match at.get(&(r.camera.clone(), track.clone())) {
                Some(&i) => {
                    let g = &mut out[i];
                    g.2 += 1;
                    g.3 = g.3.min(t);
                    g.4 = g.4.max(t);
                }
                None => {
                    at.insert((r.camera.clone(), track.clone()), out.len());
                    out.push((id, score, 1, t, t));
                }
            },
        }
    }
    out.truncate(q.k);
    out
}

fn same_groups(got: &[sen_store::Found], want: &[(u64, f64, u64, i64, i64)], what: &str) {
    let ranking: Vec<(f64, u64)> = want.iter().map(|w| (w.1, w.0)).collect();
    same_ranking(got, &ranking, what);
    for (g, w) in got.iter().zip(want) {
        let span = g.group.as_ref().map_or((1, g.time_ms, g.time_ms), |s| {
            (s.crops, s.first_ms, s.last_ms)
        });
        if g.id == w.0 {
            assert_eq!(span, (w.2, w.3, w.4), "{what}: the group of row {}", g.id);
        }
        assert_eq!(g.group.is_some(), g.track.is_some(), "{what}: row {}", g.id);
    }
}

fn run(ops: Vec<Op>, dtype: Storage) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("store");
    let mut store = Some(Store::create_with(&dir, &config(dtype, true), opts()).unwrap());
    let mut model: BTreeMap<u64, sen_store::NewRow> = BTreeMap::new();
    for (step, op) in ops.into_iter().enumerate() {
        let s = store.as_ref().unwrap();
        match op {
            Op::Add(tags) => {
                let rows: Vec<_> = tags.iter().map(|&t| tracked(t)).collect();
                let (first, last) = s.add(rows.clone()).unwrap();
                assert_eq!(last - first + 1, rows.len() as u64, "contiguous ids");
                assert!(
                    model.keys().last().is_none_or(|&m| first > m),
                    "ids increase"
                );
                for (i, r) in rows.into_iter().enumerate() {
                    model.insert(first + i as u64, r);
                }
            }
            Op::DeleteIds(picks, with_unknown) => {
                let ids: Vec<u64> = model.keys().copied().collect();
                if ids.is_empty() {
                    continue;
                }
                let mut want: Vec<u64> = picks.iter().map(|p| ids[p % ids.len()]).collect();
                if with_unknown {
                    want.push(u64::MAX - 3);
                    match s.delete(Selector::Ids(want)) {
                        Err(StoreError::UnknownIds(u)) => assert_eq!(u, vec![u64::MAX - 3]),
                        other => panic!("unknown id not refused: {other:?}"),
                    }
                } else {
                    want.sort();
                    want.dedup();
                    assert_eq!(s.delete(Selector::Ids(want.clone())).unwrap(), want.len());
                    for id in want {
                        model.remove(&id);
                    }
                }
            }
            Op::DeleteCamera(c) => {
                let cam = CAMERAS[c].to_string();
                let n = s.delete(Selector::Camera(cam.clone())).unwrap();
                let before = model.len();
                model.retain(|_, r| r.camera != cam);
                assert_eq!(n, before - model.len());
            }
            Op::DeleteBefore(t) => {
                let t = T0 + t as i64;
                let n = s.delete(Selector::Before(t)).unwrap();
                let before = model.len();
                model.retain(|_, r| r.time_ms >= t);
                assert_eq!(n, before - model.len());
            }
            Op::Flush => s.flush().unwrap(),
            Op::Compact => {
                s.compact().unwrap();
                assert_eq!(s.stats().unwrap().deleted_pending, 0);
            }
            Op::Reopen => {
                drop(store.take());
                store = Some(Store::open_with(&dir, Mode::Writer, opts()).unwrap());
            }
        }
        check(store.as_ref().unwrap(), &model, dtype, step as u64);
    }
    drop(store);
    let rep = sen_store::verify::verify(&dir).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!(rep.rows, model.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, max_shrink_iters: 64, .. ProptestConfig::default() })]

    #[test]
    fn store_equals_the_model_f32(ops in prop::collection::vec(op(), 1..18)) {
        run(ops, Storage::F32);
    }

    #[test]
    fn store_equals_the_model_f16(ops in prop::collection::vec(op(), 1..18)) {
        run(ops, Storage::F16);
    }
}
