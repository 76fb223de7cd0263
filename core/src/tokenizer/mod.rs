//! CLIP byte-level BPE tokenizer (SPEC §2), on the `tokenizers` crate.
//!
//! Built once from `bpe_simple_vocab_16e6.txt.gz` (sha256-checked), serialisable to
//! `tokenizer.json` so a deployed runtime needs no vocabulary file. Ids equal
//! open_clip's `tokenize()`: `[SOT] + bpe(clean(text)) + [EOT]`, zero-padded to the
//! context length; when truncated, the last slot is EOT.

mod clean;
mod tables;

pub use clean::{clean_lower, fix_text, html_unescape};

use crate::error::CoreError;
use serde_json::{Value, json};
use std::io::Read;
use std::path::Path;

/// `<start_of_text>` id.
pub const SOT_ID: u32 = 49406;
/// `<end_of_text>` id; the largest id, which IRRA finds with argmax.
pub const EOT_ID: u32 = 49407;
/// Vocabulary size: 256 bytes + 256 bytes with `</w>` + 48894 merges + 2 specials.
pub const VOCAB_SIZE: usize = 49408;
/// Padding id after EOT (open_clip pads with zeros).
pub const PAD_ID: u32 = 0;
/// Number of merge lines used (lines 1..=48894 of the file).
pub const NUM_MERGES: usize = 49152 - 256 - 2;
/// sha256 of `bpe_simple_vocab_16e6.txt.gz` as shipped in open_clip_torch 3.3.0.
pub const VOCAB_SHA256: &str = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a";
/// Size in bytes of that file.
pub const VOCAB_BYTES: u64 = 1_356_917;
/// The pre-tokenisation regex of open_clip (special tokens are added tokens here).
pub const CLIP_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// One tokenised text: `ids` has exactly `context_length` entries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Encoded {
    pub ids: Vec<i64>,
    /// Position of EOT in `ids` (what the text encoder pools).
    pub eot_index: usize,
    /// True when the text was longer than the context and was cut.
    pub truncated: bool,
}

/// The CLIP tokenizer.
#[derive(Clone)]
pub struct ClipTokenizer {
    inner: tokenizers::Tokenizer,
    context_length: usize,
}

/// GPT-2/CLIP `bytes_to_unicode`: printable bytes map to themselves, the rest to 256+n.
pub fn bytes_to_unicode() -> Vec<(u8, char)> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    bs.into_iter()
        .zip(cs)
        .map(|(b, c)| (b as u8, char::from_u32(c).expect("valid")))
        .collect()
}

impl ClipTokenizer {
    /// Build from the gzipped merges file, verifying its size and sha256.
    pub fn from_vocab_gz(path: &Path, context_length: usize) -> Result<Self, CoreError> {
        let bytes = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
        let digest = crate::hash::sha256_hex(&bytes);
        if bytes.len() as u64 != VOCAB_BYTES || digest != VOCAB_SHA256 {
            return Err(CoreError::Dependency(format!(
                "{}: {} bytes with sha256 {digest}, expected {VOCAB_BYTES} bytes with sha256 {VOCAB_SHA256} \
                 (the CLIP vocabulary is damaged; run `make deps`)",
                path.display(),
                bytes.len()
            )));
        }
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .map_err(|e| {
                CoreError::Dependency(format!("{}: not a gzip text file: {e}", path.display()))
            })?;
        let json = tokenizer_json_from_merges(&text)
            .map_err(|m| CoreError::Dependency(format!("{}: {m}", path.display())))?;
        Self::from_json_str(&json.to_string(), context_length, path)
    }

    /// Load a `tokenizer.json` written by [`ClipTokenizer::to_json`].
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, CoreError> {
        let s = std::fs::read_to_string(path).map_err(|e| CoreError::io(path, e))?;
        Self::from_json_str(&s, context_length, path)
    }

    fn from_json_str(s: &str, context_length: usize, origin: &Path) -> Result<Self, CoreError> {
        if context_length < 2 {
            return Err(CoreError::Invalid(format!(
                "context_length {context_length} must be at least 2 (SOT and EOT)"
            )));
        }
        let inner: tokenizers::Tokenizer = s.parse().map_err(|e| {
            CoreError::Invalid(format!(
                "{}: not a valid tokenizer.json: {e}",
                origin.display()
            ))
        })?;
        let vocab = inner.get_vocab_size(true);
        let sot = inner.token_to_id("<start_of_text>");
        let eot = inner.token_to_id("<end_of_text>");
        if vocab != VOCAB_SIZE || sot != Some(SOT_ID) || eot != Some(EOT_ID) {
            return Err(CoreError::Invalid(format!(
                "{}: not the CLIP vocabulary (size {vocab}, <start_of_text> {sot:?}, <end_of_text> {eot:?}; \
                 expected {VOCAB_SIZE}, {SOT_ID}, {EOT_ID})",
                origin.display()
            )));
        }
        Ok(Self {
            inner,
            context_length,
        })
    }

    /// Serialise to the `tokenizer.json` format (pretty-printed).
    pub fn to_json(&self) -> Result<String, CoreError> {
        self.inner
            .to_string(true)
            .map_err(|e| CoreError::Invalid(format!("cannot serialise tokenizer: {e}")))
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// BPE ids of the cleaned text, without SOT/EOT or padding.
    pub fn encode_ids(&self, text: &str) -> Result<Vec<u32>, CoreError> {
        let cleaned = clean_lower(text);
        let enc = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| CoreError::Invalid(format!("cannot tokenise {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// open_clip `tokenize()` for one text.
    pub fn encode(&self, text: &str) -> Result<Encoded, CoreError> {
        let bpe = self.encode_ids(text)?;
        let n = self.context_length;
        let mut ids = Vec::with_capacity(n);
        ids.push(SOT_ID as i64);
        ids.extend(bpe.iter().take(n - 2).map(|&i| i as i64));
        let truncated = bpe.len() > n - 2;
        ids.push(EOT_ID as i64);
        let eot_index = ids.len() - 1;
        ids.resize(n, 0);
        Ok(Encoded {
            ids,
            eot_index,
            truncated,
        })
    }

    /// Tokenise many texts in parallel, in order.
    pub fn encode_batch<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<Vec<Encoded>, CoreError> {
        use rayon::prelude::*;
        texts.par_iter().map(|t| self.encode(t.as_ref())).collect()
    }

    /// Tokenise many texts into what the text encoder takes: `input_ids` `[B, context]`
    /// and `eot_index` `[B]`.
    pub fn encode_arrays<S: AsRef<str> + Sync>(
        &self,
        texts: &[S],
    ) -> Result<(ndarray::Array2<i64>, ndarray::Array1<i64>), CoreError> {
        let enc = self.encode_batch(texts)?;
        let ids: Vec<i64> = enc.iter().flat_map(|e| e.ids.iter().copied()).collect();
        let ids = ndarray::Array2::from_shape_vec((enc.len(), self.context_length()), ids)
            .expect("every encoding has context_length ids");
        let eot = enc.iter().map(|e| e.eot_index as i64).collect();
        Ok((ids, eot))
    }

    /// Decode ids back to text (`</w>` becomes a space; SOT, EOT and padding dropped).
    pub fn decode(&self, ids: &[i64]) -> Result<String, CoreError> {
        let ids: Vec<u32> = ids
            .iter()
            .filter(|&&i| i > 0 && i < SOT_ID as i64)
            .map(|&i| i as u32)
            .collect();
        let s = self
            .inner
            .decode(&ids, false)
            .map_err(|e| CoreError::Invalid(format!("cannot decode: {e}")))?;
        Ok(s.replace("</w>", " ").trim_end().to_string())
    }
}

/// The `tokenizer.json` document for the CLIP vocabulary, from the merges file text.
fn tokenizer_json_from_merges(text: &str) -> Result<Value, String> {
    let lines: Vec<&str> = text.split('\n').collect();
    if lines.len() < NUM_MERGES + 1 {
        return Err(format!(
            "{} lines, expected at least {}",
            lines.len(),
            NUM_MERGES + 1
        ));
    }
    let b2u = bytes_to_unicode();
    let mut vocab: Vec<String> = b2u.iter().map(|(_, c)| c.to_string()).collect();
    vocab.extend(b2u.iter().map(|(_, c)| format!("{c}</w>")));
    let mut merges = Vec::with_capacity(NUM_MERGES);
    for (i, line) in lines[1..=NUM_MERGES].iter().enumerate() {
        let mut parts = line.split(' ');
        let (Some(a), Some(b), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("merge line {} is not two symbols: {line:?}", i + 2));
        };
        vocab.push(format!("{a}{b}"));
        merges.push(json!([a, b]));
    }
    vocab.push("<start_of_text>".into());
    vocab.push("<end_of_text>".into());
    debug_assert_eq!(vocab.len(), VOCAB_SIZE);
    let vocab_map: serde_json::Map<String, Value> = vocab
        .into_iter()
        .enumerate()
        .map(|(i, t)| (t, json!(i)))
        .collect();
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": true, "special": true})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(SOT_ID, "<start_of_text>"), special(EOT_ID, "<end_of_text>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"},
            {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
            {"type": "Lowercase"}
        ]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_PATTERN}, "behavior": "Removed", "invert": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}
        ]},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": "", "end_of_word_suffix": "</w>",
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_map, "merges": merges
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_arrays_stacks_what_encode_gives() {
        let tok =
            ClipTokenizer::from_vocab_gz(&crate::deps::clip_vocab_path().unwrap(), 77).unwrap();
        let texts = [
            "a man in a grey hoodie",
            "the woman with a red bag and black boots",
        ];
        let (ids, eot) = tok.encode_arrays(&texts).unwrap();
        assert_eq!(ids.dim(), (2, 77));
        for (i, t) in texts.iter().enumerate() {
            let e = tok.encode(t).unwrap();
            assert_eq!(ids.row(i).to_vec(), e.ids);
            assert_eq!(eot[i], e.eot_index as i64);
        }
    }

    #[test]
    fn bytes_to_unicode_matches_gpt2_table() {
        let t = bytes_to_unicode();
        assert_eq!(t.len(), 256);
        // First printable byte maps to itself, byte 0 to U+0100, space (0x20) to U+0120 'Ġ'.
        assert_eq!(t[0], (b'!', '!'));
        assert!(t.contains(&(0u8, '\u{100}')));
        assert!(t.contains(&(b' ', '\u{120}')));
        let mut bytes: Vec<u8> = t.iter().map(|p| p.0).collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
    }
}
