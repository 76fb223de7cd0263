//! Files the fuzzer's bytes become. Mode 0: the bytes as they are (magic, preamble
//! and checksums must survive mutation). Mode 1: `HEADER \0 DATA` framed as the file
//! format says (SENINDEX preamble, 64-aligned data, the header's CRC and the data
//! CRCs the reader checks), so mutations reach what lies past the checksums.

use std::io::Write;

fn up(n: usize) -> usize {
    n.div_ceil(64) * 64
}

/// The file for `data` (its first byte picks the mode) in a format of `version`:
/// 1 (index: CRC A over the data) or 2 (segment: CRC A over the metadata columns of
/// `count` rows, CRC B over the rest).
pub fn file(data: &[u8], version: u32) -> Option<tempfile::NamedTempFile> {
    let (&mode, rest) = data.split_first()?;
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        let (header, body) = (&rest[..split], rest.get(split + 1..).unwrap_or(&[]));
        let (a, b) = if version == 1 {
            (crc(body), 0)
        } else {
            let count = serde_json::from_slice::<serde_json::Value>(header)
                .ok()
                .and_then(|v| v["count"].as_u64())
                .unwrap_or(0)
                .min(1 << 20) as usize;
            let meta = up(up(up(count * 8) + count * 8) + count * 4).min(body.len());
            (crc(&body[..meta]), crc(&body[meta..]))
        };
        let offset = up(64 + header.len());
        let mut f = Vec::with_capacity(offset + body.len());
        f.extend_from_slice(b"SENINDEX");
        f.extend_from_slice(&version.to_le_bytes());
        f.extend_from_slice(&crc(header).to_le_bytes());
        f.extend_from_slice(&(header.len() as u64).to_le_bytes());
        f.extend_from_slice(&(offset as u64).to_le_bytes());
        f.extend_from_slice(&(body.len() as u64).to_le_bytes());
        f.extend_from_slice(&a.to_le_bytes());
        f.extend_from_slice(&b.to_le_bytes());
        f.resize(64, 0);
        f.extend_from_slice(header);
        f.resize(offset, 0);
        f.extend_from_slice(body);
        f
    };
    let mut t = tempfile::NamedTempFile::new().ok()?;
    t.write_all(&bytes).ok()?;
    Some(t)
}

fn crc(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}
