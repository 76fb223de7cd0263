//! The CLIP tokenizer against open_clip's `tokenize()`, on ids recorded from open_clip
//! itself by `scripts/reference/tokenizer_cases.py`. Needs the vocabulary from `make deps`.

use sen_core::tokenizer::{ClipTokenizer, EOT_ID};
use serde_json::Value;

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/tokenizer_open_clip.json")).unwrap()
}

fn tokenizer(ctx: usize) -> ClipTokenizer {
    let vocab = sen_core::deps::clip_vocab_path().unwrap_or_else(|e| panic!("{e}"));
    ClipTokenizer::from_vocab_gz(&vocab, ctx).unwrap()
}

fn check_cases(tok: &ClipTokenizer, cases: &[Value]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let got = tok.encode(text).unwrap();
        if got.ids != want {
            failures.push(format!("{text:?}\n  want {want:?}\n  got  {:?}", got.ids));
        }
        // The EOT position is the last non-zero id.
        let eot = want.iter().rposition(|&i| i != 0).unwrap();
        assert_eq!(want[eot], EOT_ID as i64);
        assert_eq!(got.eot_index, eot, "{text:?}");
    }
    failures
}

#[test]
fn ids_equal_open_clip() {
    let f = fixture();
    let tok = tokenizer(77);
    let cases = f["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let failures = check_cases(&tok, cases);
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn truncation_equals_open_clip() {
    let f = fixture();
    let short = &f["short_context"];
    let tok = tokenizer(short["context_length"].as_u64().unwrap() as usize);
    let failures = check_cases(&tok, short["cases"].as_array().unwrap());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let e = tok
        .encode("a man in a grey hoodie with a red backpack")
        .unwrap();
    assert!(e.truncated);
    assert_eq!(e.eot_index, 7);
}

#[test]
fn tokenizer_json_round_trip_gives_same_ids() {
    let tok = tokenizer(77);
    let json = tok.to_json().unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("tokenizer.json");
    std::fs::write(&p, &json).unwrap();
    let back = ClipTokenizer::from_file(&p, 77).unwrap();
    let f = fixture();
    let failures = check_cases(&back, f["cases"].as_array().unwrap());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        back.decode(&tok.encode("A man in a grey hoodie!").unwrap().ids)
            .unwrap(),
        "a man in a grey hoodie !"
    );
}

#[test]
fn damaged_vocabulary_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bpe_simple_vocab_16e6.txt.gz");
    let mut bytes = std::fs::read(sen_core::deps::clip_vocab_path().unwrap()).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&p, bytes).unwrap();
    let e = ClipTokenizer::from_vocab_gz(&p, 77)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("make deps") && e.contains("sha256"), "{e}");
}
