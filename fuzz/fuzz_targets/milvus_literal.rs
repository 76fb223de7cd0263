//! Milvus filter literals (camera and box names go into expressions): for any
//! string, the literal is one double-quoted token (no unescaped `"`, no raw line
//! break), and undoing its escapes (as Go's strconv.Unquote, which the server uses,
//! reads them) gives the string back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fn unquote(lit: &str) -> Option<String> {
    let inner = lit.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut it = inner.chars();
    while let Some(c) = it.next() {
        match c {
            '\\' => out.push(match it.next()? {
                '\\' => '\\',
                '"' => '"',
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                _ => return None,
            }),
            '"' | '\n' | '\r' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let lit = sen_milvus::expr::literal(s);
    assert_eq!(unquote(&lit).as_deref(), Some(s), "{lit}");
    let e = sen_milvus::expr::one_of("camera", &[s.to_string(), "b".into()]);
    assert!(e.starts_with("camera in [") && e.ends_with(']'));
});
