//! Store segments: immutable, checksummed, memory-mapped files of rows (version 2 of
//! the index file, [`crate::format`]), written once and never modified.
//!
//! After the preamble and a small JSON header ([`SegmentHeader`]: dimension, count,
//! storage, encoder digest, store UUID, id and time range, the camera names) come
//! four 64-aligned columns: ids (u64), capture times (i64 Unix ms), camera numbers
//! (u32, into the header's names) and the embeddings (`count x dim`, f32 or f16).
//! CRC A covers the three metadata columns (checked on every open: 20 bytes a row);
//! CRC B the embeddings (checked by [`Segment::verify`]; each returned row is also
//! checked against its row checksum in the database). Paths, pids, attributes and
//! crops live in the database.

use crate::Storage;
use crate::error::StoreError;
use crate::format::{self, ALIGN, Preamble, bad};
use crate::io::Durable;
use crate::search::Rows;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const SEGMENT_VERSION: u32 = 2;
const REBUILD: &str =
    "run `sen store verify` on the store; restore it from a snapshot if the file is damaged";

/// The JSON header of a segment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentHeader {
    pub dim: usize,
    pub count: usize,
    pub dtype: Storage,
    pub image_encoder_sha256: String,
    pub store_uuid: String,
    pub written_by: String,
    pub first_id: u64,
    pub last_id: u64,
    pub min_time_ms: i64,
    pub max_time_ms: i64,
    /// Capture times never decrease along the rows (a time range is then a row range).
    pub time_sorted: bool,
    /// Camera names; the camera column holds indices into this list.
    pub cameras: Vec<String>,
}

/// Byte offsets (from the data offset) of the four columns for `count` rows.
#[derive(Debug, Clone, Copy)]
struct Layout {
    ids: usize,
    times: usize,
    cameras: usize,
    embeddings: usize,
    /// End of the metadata columns (CRC A covers `..meta_end`).
    meta_end: usize,
    end: usize,
}

impl Layout {
    /// The columns of `count` rows; None when the sizes overflow (a damaged header).
    fn new(count: usize, dim: usize, dtype: Storage) -> Option<Layout> {
        let col = |start: usize, width: usize| {
            count
                .checked_mul(width)
                .and_then(|n| n.checked_add(start))
                .and_then(|e| e.checked_next_multiple_of(ALIGN))
        };
        let ids = 0;
        let times = col(ids, 8)?;
        let cameras = col(times, 8)?;
        let embeddings = col(cameras, 4)?;
        let end = count
            .checked_mul(dim)?
            .checked_mul(dtype.bytes())?
            .checked_add(embeddings)?;
        Some(Layout {
            ids,
            times,
            cameras,
            embeddings,
            meta_end: embeddings,
            end,
        })
    }
}

/// The columns of a segment to write.
pub struct SegmentColumns<'a> {
    pub ids: &'a [u64],
    pub times: &'a [i64],
    pub cameras: &'a [u32],
    /// `count x dim` values in the header's storage, little-endian.
    pub embeddings: &'a [u8],
}

fn bytes_of<T: format::bytemuck_free::Pod>(v: &[T]) -> &[u8] {
    // SAFETY: plain numbers, read as bytes.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}

/// Write a segment durably: a temporary sibling written and fsynced, renamed to
/// `path`, the directory fsynced. Returns (file bytes, CRC A, CRC B).
pub fn write(
    fs: &dyn Durable,
    path: &Path,
    header: &SegmentHeader,
    cols: &SegmentColumns<'_>,
) -> Result<(u64, u32, u32), StoreError> {
    let n = header.count;
    let l = Layout::new(n, header.dim, header.dtype)
        .expect("the columns of rows held in memory fit in usize");
    assert!(
        cols.ids.len() == n
            && cols.times.len() == n
            && cols.cameras.len() == n
            && cols.embeddings.len() == n * header.dim * header.dtype.bytes(),
        "segment columns do not match the header"
    );
    // The data region, in order, with padding between the columns.
    let pad = |from: usize, to: usize| vec![0u8; to - from];
    let (p1, p2, p3) = (
        pad(l.ids + n * 8, l.times),
        pad(l.times + n * 8, l.cameras),
        pad(l.cameras + n * 4, l.embeddings),
    );
    let meta: [&[u8]; 6] = [
        bytes_of(cols.ids),
        &p1,
        bytes_of(cols.times),
        &p2,
        bytes_of(cols.cameras),
        &p3,
    ];
    let mut crc_a = crc32fast::Hasher::new();
    meta.iter().for_each(|b| crc_a.update(b));
    let crc_a = crc_a.finalize();
    let crc_b = crc32fast::hash(cols.embeddings);
    let header_bytes = serde_json::to_vec(header).expect("header serialises");
    let pre = Preamble::new(SEGMENT_VERSION, &header_bytes, l.end, crc_a, crc_b);
    let pre_bytes = pre.to_bytes();
    let hpad = pre.padding();
    let mut parts: Vec<&[u8]> = vec![&pre_bytes, &header_bytes, &hpad];
    parts.extend_from_slice(&meta);
    parts.push(cols.embeddings);
    let dir = path.parent().expect("segment path has a folder");
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().expect("file name").to_string_lossy()
    ));
    fs.write_synced(&tmp, &parts)
        .map_err(|e| StoreError::io(&tmp, e))?;
    fs.rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    fs.sync_dir(dir).map_err(|e| StoreError::io(dir, e))?;
    Ok(((pre.data_offset + l.end) as u64, crc_a, crc_b))
}

/// An open segment, mapped read-only.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    pub header: SegmentHeader,
    pub crc_b: u32,
    map: memmap2::Mmap,
    data: usize,
    layout: Layout,
}

impl Segment {
    /// Map `path` and check it: preamble, header, sizes, and CRC A over the metadata
    /// columns (cheap: 20 bytes a row). The embeddings' CRC B is [`Segment::verify`]'s.
    pub fn open(path: &Path) -> Result<Segment, StoreError> {
        let map = format::map(path)?;
        let (pre, hbytes) = Preamble::parse(path, &map, SEGMENT_VERSION, "store segment", REBUILD)?;
        let header: SegmentHeader =
            serde_json::from_slice(hbytes).map_err(|e| bad(path, format!("header: {e}")))?;
        if header.dim == 0 {
            return Err(bad(path, "header says 0 dimensions"));
        }
        let layout = Layout::new(header.count, header.dim, header.dtype).ok_or_else(|| {
            bad(
                path,
                format!(
                    "header says {} rows of {} dims: sizes past any file; the file is damaged",
                    header.count, header.dim
                ),
            )
        })?;
        if layout.end != pre.data_len {
            return Err(bad(
                path,
                format!(
                    "{} rows x {} dims of {:?} need {} data bytes, the file has {}; the file is damaged",
                    header.count, header.dim, header.dtype, layout.end, pre.data_len
                ),
            ));
        }
        let data = pre.data_offset;
        if crc32fast::hash(&map[data..data + layout.meta_end]) != pre.crc_a {
            return Err(bad(
                path,
                format!("metadata columns checksum mismatch: the file is damaged; {REBUILD}"),
            ));
        }
        let s = Segment {
            path: path.to_path_buf(),
            header,
            crc_b: pre.crc_b,
            map,
            data,
            layout,
        };
        let ids = s.ids();
        if ids.windows(2).any(|w| w[0] >= w[1])
            || ids.first().is_some_and(|&f| f != s.header.first_id)
            || ids.last().is_some_and(|&l| l != s.header.last_id)
        {
            return Err(bad(
                path,
                "ids are not increasing or disagree with the header",
            ));
        }
        if s.cameras()
            .iter()
            .any(|&c| c as usize >= s.header.cameras.len())
        {
            return Err(bad(path, "a camera number is outside the header's list"));
        }
        Ok(s)
    }

    /// Check the embeddings' CRC (reads every byte).
    pub fn verify(&self) -> Result<(), StoreError> {
        if crc32fast::hash(self.embedding_bytes()) != self.crc_b {
            return Err(bad(
                &self.path,
                format!("embedding checksum mismatch: the file is damaged; {REBUILD}"),
            ));
        }
        Ok(())
    }

    fn column(&self, off: usize, len: usize) -> &[u8] {
        &self.map[self.data + off..self.data + off + len]
    }

    pub fn len(&self) -> usize {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    pub fn ids(&self) -> &[u64] {
        format::cast(self.column(self.layout.ids, self.len() * 8))
    }

    pub fn times(&self) -> &[i64] {
        format::cast(self.column(self.layout.times, self.len() * 8))
    }

    pub fn cameras(&self) -> &[u32] {
        format::cast(self.column(self.layout.cameras, self.len() * 4))
    }

    pub fn embedding_bytes(&self) -> &[u8] {
        self.column(
            self.layout.embeddings,
            self.len() * self.header.dim * self.header.dtype.bytes(),
        )
    }

    /// The embeddings, in place in the map.
    pub fn rows(&self) -> Rows<'_> {
        let b = self.embedding_bytes();
        match self.header.dtype {
            Storage::F32 => Rows::F32(format::cast(b)),
            Storage::F16 => Rows::F16(format::cast(b)),
        }
    }

    /// The row holding `id`, if this segment has it.
    pub fn find(&self, id: u64) -> Option<usize> {
        self.ids().binary_search(&id).ok()
    }

    /// Row `i`'s embedding bytes (storage dtype).
    pub fn row_bytes(&self, i: usize) -> &[u8] {
        let w = self.header.dim * self.header.dtype.bytes();
        &self.embedding_bytes()[i * w..(i + 1) * w]
    }

    pub fn file_bytes(&self) -> u64 {
        self.map.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::RealFs;

    fn header(n: usize, dim: usize, dtype: Storage) -> SegmentHeader {
        SegmentHeader {
            dim,
            count: n,
            dtype,
            image_encoder_sha256: "e".repeat(64),
            store_uuid: "u".into(),
            written_by: "test".into(),
            first_id: 10,
            last_id: 10 + n as u64 - 1,
            min_time_ms: 0,
            max_time_ms: n as i64,
            time_sorted: true,
            cameras: vec!["a".into(), "b".into()],
        }
    }

    #[test]
    fn round_trip_and_every_flipped_byte_is_caught() {
        let d = tempfile::tempdir().unwrap();
        let (n, dim) = (5, 3);
        let ids: Vec<u64> = (10..15).collect();
        let times: Vec<i64> = (0..5).collect();
        let cams = vec![0u32, 1, 0, 1, 1];
        let emb: Vec<f32> = (0..n * dim).map(|i| i as f32 * 0.5).collect();
        let h = header(n, dim, Storage::F32);
        let path = d.path().join("s.seg");
        let cols = SegmentColumns {
            ids: &ids,
            times: &times,
            cameras: &cams,
            embeddings: bytes_of(&emb),
        };
        write(&RealFs, &path, &h, &cols).unwrap();
        let s = Segment::open(&path).unwrap();
        s.verify().unwrap();
        assert_eq!(
            (s.ids(), s.times(), s.cameras()),
            (&ids[..], &times[..], &cams[..])
        );
        match s.rows() {
            Rows::F32(v) => assert_eq!(v, &emb[..]),
            Rows::F16(_) => panic!("f32 rows"),
        }
        assert_eq!(s.find(12), Some(2));
        assert_eq!(s.find(9), None);
        assert!(!d.path().join(".s.seg.tmp").exists());
        // Any flipped byte is refused by open (preamble, header, metadata columns) or
        // by verify (embeddings), naming the file.
        let good = std::fs::read(&path).unwrap();
        // Bytes no checksum covers: the preamble's reserved zeros and the padding
        // between the header and the data (they carry nothing).
        let hdr_end = 64 + u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
        let data_off = u64::from_le_bytes(good[24..32].try_into().unwrap()) as usize;
        let inert = |i: usize| (48..64).contains(&i) || (hdr_end..data_off).contains(&i);
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            std::fs::write(&path, &b).unwrap();
            let caught = match Segment::open(&path) {
                Err(e) => {
                    assert!(e.to_string().contains("s.seg"), "{e}");
                    true
                }
                Ok(s) => s.verify().is_err() || inert(i),
            };
            assert!(caught, "byte {i} flipped and not caught");
        }
        // Truncation.
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(Segment::open(&path).is_err());
    }
}
