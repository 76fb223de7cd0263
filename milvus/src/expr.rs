//! Filters as Milvus boolean expressions. Every string is a double-quoted literal
//! escaped for Milvus's expression grammar: `\` and `"` are escaped with a
//! backslash, line feed, carriage return and tab are written `\n`, `\r`, `\t`, and
//! everything else (quotes of the other kind, `<`, non-ASCII, other control
//! characters) stays as it is. The grammar knows no other escape (no `\uXXXX`), and
//! a raw line break ends a literal in error, so a JSON serializer is not a safe
//! escaper (measured on milvus-lite; the same rule is Go's `strconv.Unquote`, which
//! a Milvus server uses).

use sen_store::time::TimeRange;

/// `s` as a Milvus string literal.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `field in ["a", "b"]`.
pub fn one_of(field: &str, values: &[String]) -> String {
    let vs: Vec<String> = values.iter().map(|v| literal(v)).collect();
    format!("{field} in [{}]", vs.join(", "))
}

/// What a search through Milvus is filtered by (the store's filters, plus boxes).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub cameras: Option<Vec<String>>,
    pub time: TimeRange,
    pub boxes: Option<Vec<String>>,
    /// Leave out this row of this box ("more like this").
    pub exclude: Option<(String, u64)>,
}

impl Filter {
    /// The expression, or an empty string for no filter.
    pub fn expression(&self) -> String {
        let mut parts = vec![];
        if let Some(c) = &self.cameras {
            parts.push(one_of("camera", c));
        }
        if let Some(f) = self.time.from {
            parts.push(format!("time >= {f}"));
        }
        if let Some(t) = self.time.to {
            parts.push(format!("time < {t}"));
        }
        if let Some(b) = &self.boxes {
            parts.push(one_of("box", b));
        }
        if let Some((b, id)) = &self.exclude {
            parts.push(format!("not (box == {} and id == {id})", literal(b)));
        }
        parts.join(" and ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_exactly_what_the_grammar_needs() {
        assert_eq!(literal("cam-1"), r#""cam-1""#);
        assert_eq!(literal(r#"a"b"#), r#""a\"b""#);
        assert_eq!(literal(r"a\b"), r#""a\\b""#);
        // A backslash followed by n stays two characters, never a line feed.
        assert_eq!(literal(r"cam\nq"), r#""cam\\nq""#);
        assert_eq!(literal("cam\nq"), r#""cam\nq""#);
        assert_eq!(literal("a\r\tb"), r#""a\r\tb""#);
        assert_eq!(literal("it's"), r#""it's""#);
        assert_eq!(
            literal("<img src=x onerror=alert(1)>"),
            r#""<img src=x onerror=alert(1)>""#
        );
        assert_eq!(literal("cam-ü-日本\u{1}"), "\"cam-ü-日本\u{1}\"");
        assert_eq!(literal(r"cam\"), r#""cam\\""#);
    }

    #[test]
    fn filters_join_every_condition() {
        let f = Filter {
            cameras: Some(vec!["a\"b".into(), "c".into()]),
            time: TimeRange {
                from: Some(1_700_000_000_000),
                to: Some(1_800_000_000_000),
            },
            boxes: Some(vec!["gate".into()]),
            exclude: Some(("gate".into(), 7)),
        };
        assert_eq!(
            f.expression(),
            r#"camera in ["a\"b", "c"] and time >= 1700000000000 and time < 1800000000000 and box in ["gate"] and not (box == "gate" and id == 7)"#
        );
        assert_eq!(Filter::default().expression(), "");
    }
}
