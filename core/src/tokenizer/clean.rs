//! open_clip's text cleaning (`_clean_lower`), ported:
//!
//! ```python
//! text = ftfy.fix_text(text)
//! text = html.unescape(html.unescape(text)).strip()
//! text = " ".join(text.split()).strip().lower()
//! ```
//!
//! `ftfy.fix_text` is reproduced for well-formed text: HTML entities (only when the
//! text has no `<`), C1 controls read as Windows-1252, Latin ligatures, character
//! width, curly quotes, line breaks, terminal escapes, control characters and NFC,
//! repeated until nothing changes, as ftfy does. Its mojibake repair
//! (`fix_encoding`: re-decoding text that was decoded with the wrong codec) is not:
//! captions are UTF-8 text, and that heuristic needs ftfy's whole charset model.
//! The character tables are generated from Python and ftfy (`tables.rs`).

use super::tables::*;
use unicode_normalization::UnicodeNormalization;

/// The full cleaning open_clip applies before BPE (`clean='lower'`).
pub fn clean_lower(text: &str) -> String {
    let t = fix_text(text);
    let t = html_unescape(&html_unescape(&t));
    let t = py_strip(&t);
    let joined = t
        .split(is_py_space)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    joined.to_lowercase()
}

/// Python's `str.isspace()` (the separators `str.split()` uses): Unicode White_Space
/// plus the ASCII information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

fn lookup<'a, K: Ord + Copy>(table: &'a [(K, &'a str)], key: K) -> Option<&'a str> {
    table
        .binary_search_by(|(k, _)| k.cmp(&key))
        .ok()
        .map(|i| table[i].1)
}

fn lookup_str<'a>(table: &'a [(&'a str, &'a str)], key: &str) -> Option<&'a str> {
    table
        .binary_search_by(|(k, _)| (*k).cmp(key))
        .ok()
        .map(|i| table[i].1)
}

/// `ftfy.fix_text` for one line-segmented text (see the module docs for the scope).
pub fn fix_text(text: &str) -> String {
    // ftfy fixes each line on its own; the '<' test that turns HTML unescaping off
    // is sticky from the first segment that contains '<'.
    let mut out = String::with_capacity(text.len());
    let mut unescape = true;
    for segment in text.split_inclusive('\n') {
        if segment.contains('<') {
            unescape = false;
        }
        out.push_str(&fix_segment(segment, unescape));
    }
    out
}

fn fix_segment(text: &str, unescape: bool) -> String {
    let mut text = text.to_string();
    loop {
        let orig = text.clone();
        if unescape {
            text = ftfy_unescape_html(&text);
        }
        text = map_chars(&text, |c| lookup(FTFY_C1, c));
        text = map_chars(&text, |c| lookup(FTFY_LIGATURES, c));
        text = map_chars(&text, |c| lookup(FTFY_WIDTH_MAP, c));
        text = map_chars(&text, |c| match c {
            '\u{2bc}' | '\u{2018}'..='\u{201b}' => Some("'"),
            '\u{201c}'..='\u{201f}' => Some("\""),
            _ => None,
        });
        text = text.replace("\r\n", "\n");
        text = map_chars(&text, |c| match c {
            '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => Some("\n"),
            _ => None,
        });
        text = remove_terminal_escapes(&text);
        text.retain(|c| FTFY_CONTROL_CHARS.binary_search(&(c as u32)).is_err());
        text = text.nfc().collect();
        if text == orig {
            return text;
        }
    }
}

fn map_chars<'a>(text: &str, f: impl Fn(char) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match f(c) {
            Some(r) => out.push_str(r),
            None => out.push(c),
        }
    }
    out
}

/// `ANSI_RE = "\033\[((?:\d|;)*)([a-zA-Z])"` removed.
fn remove_terminal_escapes(text: &str) -> String {
    if !text.contains('\u{1b}') {
        return text.to_string();
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == 0x1b && i + 1 < b.len() && b[i + 1] == b'[' {
            let mut j = i + 2;
            while j < b.len() && (b[j].is_ascii_digit() || b[j] == b';') {
                j += 1;
            }
            if j < b.len() && b[j].is_ascii_alphabetic() {
                out.push_str(&text[last..i]);
                i = j + 1;
                last = i;
                continue;
            }
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

/// ftfy's `unescape_html`: `&#?[0-9A-Za-z]{1,24};` replaced when ftfy knows it.
fn ftfy_unescape_html(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut last = 0;
    while i < b.len() {
        if b[i] == b'&' {
            let mut j = i + 1;
            if j < b.len() && b[j] == b'#' {
                j += 1;
            }
            let start = j;
            while j < b.len() && j - start < 24 && b[j].is_ascii_alphanumeric() {
                j += 1;
            }
            if j > start && j < b.len() && b[j] == b';' {
                let ent = &text[i..=j];
                let rep = if let Some(r) = lookup_str(FTFY_HTML_ENTITIES, &ent[1..]) {
                    Some(r.to_string())
                } else if ent.starts_with("&#") {
                    let u = html_unescape(ent);
                    if u.contains(';') { None } else { Some(u) }
                } else {
                    None
                };
                if let Some(r) = rep {
                    out.push_str(&text[last..i]);
                    out.push_str(&r);
                    i = j + 1;
                    last = i;
                    continue;
                }
            }
        }
        i += 1;
    }
    out.push_str(&text[last..]);
    out
}

/// Python's `html.unescape`: `&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)`.
pub fn html_unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('&') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match charref(after) {
            Some((consumed, rep)) => {
                out.push_str(&rep);
                rest = &after[consumed..];
            }
            None => {
                out.push('&');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// One match of Python's `_charref` after the '&': (bytes consumed, replacement).
fn charref(s: &str) -> Option<(usize, String)> {
    let b = s.as_bytes();
    if b.first() == Some(&b'#') {
        let hex = matches!(b.get(1), Some(b'x' | b'X'));
        let start = if hex { 2 } else { 1 };
        let mut j = start;
        while j < b.len()
            && (if hex {
                b[j].is_ascii_hexdigit()
            } else {
                b[j].is_ascii_digit()
            })
        {
            j += 1;
        }
        if j == start {
            return None;
        }
        let digits = &s[start..j];
        if b.get(j) == Some(&b';') {
            j += 1;
        }
        // Python's int() is unbounded; saturating is enough, anything past 0x10FFFF is U+FFFD.
        let radix = if hex { 16 } else { 10 };
        let num = digits.chars().fold(0u64, |acc, c| {
            acc.saturating_mul(radix)
                .saturating_add(c.to_digit(radix as u32).unwrap_or(0) as u64)
        });
        let rep = if let Some(r) = u32::try_from(num)
            .ok()
            .and_then(|n| lookup(PY_INVALID_CHARREFS, n))
        {
            r.to_string()
        } else if (0xD800..=0xDFFF).contains(&num) || num > 0x10FFFF {
            "\u{FFFD}".to_string()
        } else if PY_INVALID_CODEPOINTS.binary_search(&(num as u32)).is_ok() {
            String::new()
        } else {
            char::from_u32(num as u32)
                .map(String::from)
                .unwrap_or_else(|| "\u{FFFD}".into())
        };
        return Some((j, rep));
    }
    // Named: up to 32 chars not in "\t\n\f <&#;", then an optional ';'.
    let mut end = 0;
    for (n, (i, c)) in s.char_indices().enumerate() {
        if n == 32 || matches!(c, '\t' | '\n' | '\u{c}' | ' ' | '<' | '&' | '#' | ';') {
            break;
        }
        end = i + c.len_utf8();
    }
    if end == 0 {
        return None;
    }
    let with_semi = s.as_bytes().get(end) == Some(&b';');
    let name_len = if with_semi { end + 1 } else { end };
    let name = &s[..name_len];
    if let Some(r) = lookup_str(HTML5_ENTITIES, name) {
        return Some((name_len, r.to_string()));
    }
    // Longest prefix that is an entity (Python: `for x in range(len(s)-1, 1, -1)`).
    let bounds: Vec<usize> = name.char_indices().map(|(i, _)| i).skip(2).collect();
    for &x in bounds.iter().rev() {
        if let Some(r) = lookup_str(HTML5_ENTITIES, &name[..x]) {
            return Some((name_len, format!("{r}{}", &name[x..])));
        }
    }
    Some((name_len, format!("&{name}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_html_unescape_cases() {
        // Outputs of CPython 3.11 `html.unescape` on the same inputs.
        assert_eq!(html_unescape("a &amp; b"), "a & b");
        assert_eq!(html_unescape("&amp;amp;"), "&amp;");
        assert_eq!(html_unescape("&#39;&#x27;&#X27"), "'''");
        assert_eq!(html_unescape("&#128;"), "\u{20ac}");
        assert_eq!(html_unescape("&#0;"), "\u{fffd}");
        assert_eq!(html_unescape("&#xD800;"), "\u{fffd}");
        assert_eq!(html_unescape("&#1;"), "");
        assert_eq!(html_unescape("&notit;"), "\u{ac}it;");
        assert_eq!(html_unescape("&ampx"), "&x");
        assert_eq!(html_unescape("&zzzz;"), "&zzzz;");
        assert_eq!(html_unescape("& x"), "& x");
    }

    #[test]
    fn ftfy_cases() {
        // Outputs of ftfy 6.3.1 `fix_text` on the same inputs.
        assert_eq!(fix_text("\u{201c}hi\u{201d} it\u{2019}s"), "\"hi\" it's");
        assert_eq!(fix_text("\u{fb01}ne"), "fine");
        assert_eq!(fix_text("\u{ff21}\u{ff22}"), "AB");
        assert_eq!(fix_text("P&EACUTE;REZ"), "P\u{c9}REZ");
        assert_eq!(fix_text("<b>&amp;</b>"), "<b>&amp;</b>");
        assert_eq!(fix_text("e\u{301}"), "\u{e9}");
        assert_eq!(fix_text("\u{1b}[36mblue\u{1b}[0m"), "blue");
    }

    #[test]
    fn clean_collapses_and_lowercases() {
        assert_eq!(clean_lower("  A  Man\t\nIN  Red \u{3000} "), "a man in red");
        assert_eq!(clean_lower(""), "");
    }
}
