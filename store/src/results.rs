//! The JSON shapes SPEC §11 fixes, shared by `sen store`, `sen serve` and the
//! replicated collection's results (`sen_milvus::boxed_result_json`).

use crate::time;

/// The SPEC §11 result object of one query.
pub fn result_json(
    query: Option<&str>,
    like: Option<u64>,
    took_ms: f64,
    found: &[crate::Found],
) -> serde_json::Value {
    results_object(query, like, took_ms, found.iter().map(|f| (f, None)))
}

/// The SPEC §11 result object from rows, each with its box when it has one.
pub fn results_object<'a>(
    query: Option<&str>,
    like: Option<u64>,
    took_ms: f64,
    rows: impl Iterator<Item = (&'a crate::Found, Option<&'a str>)>,
) -> serde_json::Value {
    serde_json::json!({
        "query": query,
        "like": like,
        "took_ms": took_ms,
        "results": rows.enumerate().map(|(i, (f, b))| {
            let mut r = serde_json::json!({
                "rank": i + 1,
                "id": f.id,
                "score": f.score,
                "camera": f.camera,
                "time": time::format(f.time_ms),
                "path": f.path,
                "pid": f.pid,
                "attrs": f.attrs,
            });
            track_fields(&mut r, f);
            if let Some(b) = b {
                r["box"] = b.into();
            }
            r
        }).collect::<Vec<_>>(),
    })
}

/// SPEC §12's fields of a result, beside `attrs`, when the row has them: `track`,
/// `bbox`, `source`, and a grouped item's `first`, `last` and `crops`.
pub fn track_fields(r: &mut serde_json::Value, f: &crate::Found) {
    if let Some(t) = &f.track {
        r["track"] = t.as_str().into();
    }
    if let Some(b) = &f.bbox {
        r["bbox"] = b.to_vec().into();
    }
    if let Some(s) = &f.source {
        r["source"] = s.as_str().into();
    }
    if let Some(g) = &f.group {
        r["first"] = time::format(g.first_ms).into();
        r["last"] = time::format(g.last_ms).into();
        r["crops"] = g.crops.into();
    }
}

/// `sen store stats --json` (and the server's `/v1/stats`).
pub fn stats_json(s: &crate::Stats) -> serde_json::Value {
    let t = |v: Option<i64>| v.map(time::format);
    serde_json::json!({
        "uuid": s.info.uuid,
        "format_version": s.info.format_version,
        "rows": s.rows,
        "deleted_pending": s.deleted_pending,
        "unflushed": s.unflushed,
        "segments": s.segments,
        "cameras": s.cameras.iter().map(|c| serde_json::json!({
            "camera": c.camera, "rows": c.rows, "first": t(c.first_ms), "last": t(c.last_ms),
            "last_ingest": t(c.last_ingest_ms),
        })).collect::<Vec<_>>(),
        "bytes": s.bytes,
        "encoder_sha256": s.info.image_encoder_sha256,
        "preprocess": s.info.preprocess,
        "dim": s.info.dim,
        "storage": s.info.storage,
        "crops": s.info.crops,
        "change_seq": s.change_seq,
    })
}
