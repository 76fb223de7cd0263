//! Times as SPEC §11 fixes them: input RFC 3339 (any offset) or Unix milliseconds
//! (integers below 100,000,000,000 are refused as probably seconds); output RFC 3339
//! UTC with milliseconds (`2026-11-29T14:03:22.120Z`). Internally, i64 Unix ms.

use crate::error::StoreError;

/// Integers below this are taken for seconds, not milliseconds, and refused
/// (100,000,000,000 ms is 1973-03-03; as seconds it would be the year 5138).
pub const MIN_UNIX_MS: i64 = 100_000_000_000;

/// Parse a time given as RFC 3339 or Unix milliseconds; `what` names the flag or
/// field in the error (`--from`, `time`).
pub fn parse(what: &str, s: &str) -> Result<i64, StoreError> {
    let t = s.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !t.contains('T') {
        let v: i64 = t.parse().map_err(|_| {
            StoreError::Input(format!(
                "{what} {s:?}: not a time; give RFC 3339 (2026-11-29T14:03:22Z, any offset) or Unix milliseconds"
            ))
        })?;
        return from_unix_ms(what, v);
    }
    let dt = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
        StoreError::Input(format!(
            "{what} {s:?}: not a time ({e}); give RFC 3339 (2026-11-29T14:03:22Z, any offset) or Unix milliseconds"
        ))
    })?;
    Ok(dt.timestamp_millis())
}

/// Check an integer time: Unix milliseconds, not seconds.
pub fn from_unix_ms(what: &str, v: i64) -> Result<i64, StoreError> {
    if v < MIN_UNIX_MS {
        return Err(StoreError::Input(format!(
            "{what} {v}: looks like seconds, not milliseconds (times as integers are Unix \
             milliseconds, at least {MIN_UNIX_MS}); multiply by 1000 or give RFC 3339"
        )));
    }
    Ok(v)
}

/// The earliest capture time a row may have (SPEC §11): 2000-01-01T00:00:00Z.
pub const MIN_CAPTURE_MS: i64 = 946_684_800_000;
/// The end of the capture times a row may have (SPEC §11): 2100-01-01T00:00:00Z.
pub const END_CAPTURE_MS: i64 = 4_102_444_800_000;

/// Check a row's capture time: Unix milliseconds (not seconds) within
/// [2000-01-01, 2100-01-01) UTC.
pub fn capture_time(what: &str, v: i64) -> Result<i64, StoreError> {
    from_unix_ms(what, v)?;
    if !(MIN_CAPTURE_MS..END_CAPTURE_MS).contains(&v) {
        return Err(StoreError::Input(format!(
            "{what} {}: capture times run from 2000-01-01 to 2100-01-01 UTC",
            format(v)
        )));
    }
    Ok(v)
}

/// A JSON time field: a string (RFC 3339 or digits) or an integer of Unix ms.
pub fn from_json(what: &str, v: &serde_json::Value) -> Result<i64, StoreError> {
    match v {
        serde_json::Value::String(s) => parse(what, s),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => from_unix_ms(what, i),
            None => Err(StoreError::Input(format!(
                "{what} {n}: times as numbers are whole Unix milliseconds"
            ))),
        },
        other => Err(StoreError::Input(format!(
            "{what} {other}: give RFC 3339 (a string) or Unix milliseconds (an integer)"
        ))),
    }
}

/// RFC 3339 UTC with milliseconds.
pub fn format(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => format!("{ms}"),
    }
}

/// Now, in Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A half-open time range `[from, to)`; either end open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimeRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl TimeRange {
    /// Refuse `from` not before `to`.
    pub fn new(from: Option<i64>, to: Option<i64>) -> Result<Self, StoreError> {
        if let (Some(f), Some(t)) = (from, to)
            && f >= t
        {
            return Err(StoreError::Input(format!(
                "from {} is not before to {} (the range is [from, to))",
                format(f),
                format(t)
            )));
        }
        Ok(TimeRange { from, to })
    }

    pub fn is_all(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }

    #[inline]
    pub fn contains(&self, t: i64) -> bool {
        self.from.is_none_or(|f| t >= f) && self.to.is_none_or(|e| t < e)
    }

    /// Whether `[lo, hi]` (inclusive) overlaps the range.
    pub fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.from.is_none_or(|f| hi >= f) && self.to.is_none_or(|e| lo < e)
    }
}

/// A retention period: `30d`, `12h`, `90m`; returns milliseconds.
pub fn parse_period(what: &str, s: &str) -> Result<i64, StoreError> {
    let t = s.trim();
    // The unit is the last character (a multi-byte one is no unit).
    let (num, unit) = t.split_at(t.char_indices().last().map_or(0, |(i, _)| i));
    let mult = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        _ => 0,
    };
    match num.parse::<i64>() {
        Ok(n) if n > 0 && mult > 0 => Ok(n.saturating_mul(mult)),
        _ => Err(StoreError::Input(format!(
            "{what} {s:?}: give a whole number of days, hours or minutes, such as 30d, 12h or 90m"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `times` fuzz target: a period ending in a multi-byte character
    /// panicked (`split_at` inside the character) instead of being refused.
    #[test]
    fn a_period_ending_in_a_multibyte_character_is_refused() {
        for s in ["3ϛ", "ϛ", "30dé", "é"] {
            let e = parse_period("--retention", s).unwrap_err().to_string();
            assert!(e.contains("--retention") && e.contains("30d"), "{e}");
        }
        assert_eq!(parse_period("--retention", "30d").unwrap(), 30 * 86_400_000);
    }

    #[test]
    fn rfc3339_any_offset_and_milliseconds() {
        // 2026-11-29T14:03:22.120Z = 1795961002120 ms (date -d '2026-11-29T14:03:22.120Z' +%s%3N).
        let want = 1_795_961_002_120;
        assert_eq!(parse("t", "2026-11-29T14:03:22.120Z").unwrap(), want);
        assert_eq!(parse("t", "2026-11-29T16:03:22.120+02:00").unwrap(), want);
        assert_eq!(parse("t", "2026-11-29T09:03:22.12-05:00").unwrap(), want);
        assert_eq!(parse("t", "1795961002120").unwrap(), want);
        assert_eq!(format(want), "2026-11-29T14:03:22.120Z");
        assert_eq!(format(want - 120), "2026-11-29T14:03:22.000Z");
        assert_eq!(from_json("time", &serde_json::json!(want)).unwrap(), want);
        assert_eq!(
            from_json("time", &serde_json::json!("2026-11-29T14:03:22.120Z")).unwrap(),
            want
        );
    }

    #[test]
    fn seconds_and_garbage_are_refused_by_name() {
        let e = parse("--from", "1795961002").unwrap_err().to_string();
        assert!(
            e.contains("--from 1795961002") && e.contains("seconds"),
            "{e}"
        );
        let e = parse("--to", "yesterday").unwrap_err().to_string();
        assert!(
            e.contains("--to \"yesterday\"") && e.contains("RFC 3339"),
            "{e}"
        );
        let e = parse("time", "2026-13-40T00:00:00Z")
            .unwrap_err()
            .to_string();
        assert!(e.contains("time"), "{e}");
        let e = from_json("time", &serde_json::json!(1.5e12))
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole"), "{e}");
        let e = from_json("time", &serde_json::json!(true))
            .unwrap_err()
            .to_string();
        assert!(e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn ranges_are_half_open_and_ordered() {
        let r = TimeRange::new(Some(MIN_UNIX_MS), Some(MIN_UNIX_MS + 10)).unwrap();
        assert!(
            r.contains(MIN_UNIX_MS) && r.contains(MIN_UNIX_MS + 9) && !r.contains(MIN_UNIX_MS + 10)
        );
        assert!(
            r.overlaps(MIN_UNIX_MS - 5, MIN_UNIX_MS)
                && !r.overlaps(MIN_UNIX_MS + 10, MIN_UNIX_MS + 20)
        );
        let e = TimeRange::new(Some(5 * MIN_UNIX_MS), Some(5 * MIN_UNIX_MS))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not before"), "{e}");
        assert!(TimeRange::default().is_all());
    }

    #[test]
    fn retention_periods() {
        assert_eq!(parse_period("--retention", "30d").unwrap(), 30 * 86_400_000);
        assert_eq!(parse_period("--retention", "12h").unwrap(), 12 * 3_600_000);
        for bad in ["30", "0d", "-1h", "1.5d", "d", "30s"] {
            let e = parse_period("--retention", bad).unwrap_err().to_string();
            assert!(e.contains("--retention"), "{bad}: {e}");
        }
    }
}
