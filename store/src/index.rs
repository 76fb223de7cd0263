//! The gallery index: image embeddings, their paths and pids, in one versioned,
//! checksummed, memory-mappable file.
//!
//! Layout (little-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `SENINDEX` |
//! | 8..12 | format version (u32, 1) |
//! | 12..16 | CRC-32 of the JSON header |
//! | 16..24 | header length in bytes (u64) |
//! | 24..32 | data offset (u64, a multiple of 64) |
//! | 32..40 | data length in bytes (u64) |
//! | 40..44 | CRC-32 of the data |
//! | 44..64 | zero |
//! | 64.. | JSON header ([`IndexHeader`]: dim, count, dtype, encoder sha256, paths, pids) |
//! | data offset.. | `count x dim` embeddings, row-major, f32 or f16 |
//!
//! The file is written to a temporary sibling and renamed. Opening checks the
//! magic, version, sizes and both checksums before any search, so a truncated or
//! damaged file is an error naming it, never a wrong answer. CRC-32 (not sha256)
//! because it runs at memory speed: the rows of a 100k x 512 f32 index (205 MB) check
//! in 6.2 ms here (`cargo bench -p sen-benches --bench search -- crc32`).

pub use crate::Storage;
use crate::error::StoreError;
use crate::format::{self, Preamble, bad};
use crate::search::{Hit, Rows};
use half::f16;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

pub use crate::format::MAGIC;
pub const VERSION: u32 = 1;
const REBUILD: &str = "rebuild it with `sen index`";

/// The JSON header of an index file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexHeader {
    pub dim: usize,
    pub count: usize,
    pub dtype: Storage,
    /// [`sen_core::Manifest::encoder_digest`] of the image encoder that made the rows.
    pub image_encoder_sha256: String,
    /// The bundle's `preprocess` block (with the sha256, the encoder identity; SPEC
    /// §10). Absent in files written before sen recorded it: read as CLIP's bicubic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<sen_core::PreprocessSpec>,
    /// Precision of that bundle (`fp32`, `fp16`, `int8`).
    pub bundle_precision: String,
    /// Tool and version that last wrote the file.
    pub written_by: String,
    /// Image path of every row (as given when indexing).
    pub paths: Vec<String>,
    /// Person id of every row, when known (from a dataset's annotations).
    pub pids: Vec<Option<i64>>,
}

impl IndexHeader {
    /// The preprocessing the rows were made with (legacy files: CLIP's bicubic).
    pub fn recorded_preprocess(&self) -> sen_core::preprocess::RecordedPreprocess {
        match &self.preprocess {
            Some(p) => sen_core::preprocess::RecordedPreprocess::Block(p.clone()),
            None => sen_core::preprocess::RecordedPreprocess::LegacyBicubic,
        }
    }
}

/// An open, verified index, mapped read-only.
pub struct Index {
    pub path: PathBuf,
    pub header: IndexHeader,
    map: memmap2::Mmap,
    data_offset: usize,
}

impl Index {
    /// Map `path` and verify it (magic, version, sizes, checksums, header consistency).
    pub fn open(path: &Path) -> Result<Index, StoreError> {
        let map = format::map(path)?;
        let (pre, hbytes) = Preamble::parse(path, &map, VERSION, "index", REBUILD)?;
        let (data_offset, data_len, data_crc) = (pre.data_offset, pre.data_len, pre.crc_a);
        let data_end = data_offset + data_len;
        let b = &map[..];
        let header: IndexHeader =
            serde_json::from_slice(hbytes).map_err(|e| bad(path, format!("header: {e}")))?;
        if header.paths.len() != header.count || header.pids.len() != header.count {
            return Err(bad(
                path,
                format!(
                    "header lists {} paths and {} pids for {} rows",
                    header.paths.len(),
                    header.pids.len(),
                    header.count
                ),
            ));
        }
        let want = header
            .count
            .checked_mul(header.dim)
            .and_then(|v| v.checked_mul(header.dtype.bytes()));
        if want != Some(data_len) || header.dim == 0 {
            return Err(bad(
                path,
                format!(
                    "{} rows x {} dims of {:?} need {want:?} bytes, the data is {data_len}",
                    header.count, header.dim, header.dtype
                ),
            ));
        }
        if crc32fast::hash(&b[data_offset..data_end]) != data_crc {
            return Err(bad(
                path,
                "embedding data checksum mismatch: the file is damaged; rebuild it with `sen index`",
            ));
        }
        Ok(Index {
            path: path.to_path_buf(),
            header,
            map,
            data_offset,
        })
    }

    pub fn len(&self) -> usize {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    /// The embedding rows, in place in the mapped file.
    pub fn rows(&self) -> Rows<'_> {
        let n = self.header.count * self.header.dim;
        let bytes = &self.map[self.data_offset..self.data_offset + n * self.header.dtype.bytes()];
        // The map is page-aligned and the data offset a multiple of 64, so the cast is aligned.
        match self.header.dtype {
            Storage::F32 => {
                // SAFETY: aligned (above), length n * 4 bytes, every bit pattern is an f32.
                let (pre, v, post) = unsafe { bytes.align_to::<f32>() };
                assert!(pre.is_empty() && post.is_empty());
                Rows::F32(v)
            }
            Storage::F16 => {
                // SAFETY: as above for 2-byte f16.
                let (pre, v, post) = unsafe { bytes.align_to::<f16>() };
                assert!(pre.is_empty() && post.is_empty());
                Rows::F16(v)
            }
        }
    }

    /// Row `i` as f32.
    pub fn row(&self, i: usize) -> Vec<f32> {
        let d = self.header.dim;
        match self.rows() {
            Rows::F32(v) => v[i * d..(i + 1) * d].to_vec(),
            Rows::F16(v) => v[i * d..(i + 1) * d].iter().map(|h| h.to_f32()).collect(),
        }
    }

    /// Refuse a bundle whose image encoder did not produce this index.
    pub fn check_bundle(
        &self,
        manifest: &sen_core::Manifest,
        bundle: &Path,
    ) -> Result<(), StoreError> {
        let digest = manifest.encoder_digest(&manifest.io.image)?;
        if manifest.model.embed_dim != self.header.dim {
            return Err(bad(
                &self.path,
                format!(
                    "holds {}-dim embeddings but the bundle {} embeds into {} dims; index the gallery with this bundle",
                    self.header.dim,
                    bundle.display(),
                    manifest.model.embed_dim
                ),
            ));
        }
        if digest != self.header.image_encoder_sha256 {
            return Err(bad(
                &self.path,
                format!(
                    "was built by image encoder {} but the bundle {} has image encoder {digest}; \
                     embeddings of different encoders are not comparable: re-index with `sen index {}`",
                    self.header.image_encoder_sha256,
                    bundle.display(),
                    bundle.display()
                ),
            ));
        }
        let recorded = self.header.recorded_preprocess();
        if !recorded.matches(&manifest.preprocess) {
            return Err(bad(
                &self.path,
                format!(
                    "was built with preprocessing {} but the bundle {} preprocesses with {}; \
                     the same encoder fed other pixels makes embeddings that are not \
                     comparable: re-index with `sen index {}`",
                    recorded.describe(),
                    bundle.display(),
                    manifest.preprocess.canonical_json(),
                    bundle.display()
                ),
            ));
        }
        Ok(())
    }

    /// Exact top-`k` rows for a query embedding (`dim` values).
    pub fn search(&self, query: &[f32], k: usize, threads: usize) -> Result<Vec<Hit>, StoreError> {
        Ok(self
            .search_many(&[query], k, threads)?
            .pop()
            .expect("one query"))
    }

    /// Exact top-`k` rows for each of `queries`, through the batched kernel
    /// ([`crate::search::search_batch`]; one at a time below a few queries).
    pub fn search_many(
        &self,
        queries: &[&[f32]],
        k: usize,
        threads: usize,
    ) -> Result<Vec<Vec<Hit>>, StoreError> {
        if k == 0 {
            return Err(StoreError::Input("-k must be at least 1".into()));
        }
        for (n, query) in queries.iter().enumerate() {
            if query.len() != self.header.dim {
                return Err(StoreError::Input(format!(
                    "query {} has {} values, the index {} holds {}-dim rows",
                    n + 1,
                    query.len(),
                    self.path.display(),
                    self.header.dim
                )));
            }
            if let Some(i) = query.iter().position(|v| !v.is_finite()) {
                return Err(StoreError::Input(format!(
                    "query {} value {i} is not finite",
                    n + 1
                )));
            }
        }
        let kernel =
            crate::search::Kernel::active().map_err(|e| StoreError::Input(e.to_string()))?;
        let all = crate::search::RowFilter::All;
        let batch: Vec<crate::search::BatchQuery> = queries
            .iter()
            .map(|q| crate::search::BatchQuery {
                vector: q,
                k,
                filter: &all,
            })
            .collect();
        let hits = crate::search::search_batch(
            kernel,
            &batch,
            self.rows(),
            crate::search::threads_for(self.len(), threads),
        );
        // A row that scores NaN holds a non-finite value: the file is damaged.
        if let Some(h) = hits.iter().flatten().find(|h| h.score.is_nan()) {
            return Err(StoreError::Damaged(format!(
                "{}: row {} holds a value that is not finite: the index is damaged; \
                 rebuild it with `sen index`",
                self.path.display(),
                h.row
            )));
        }
        Ok(hits)
    }
}

/// Builds an index in memory, then writes it atomically.
pub struct IndexBuilder {
    pub header: IndexHeader,
    data: Vec<f32>,
}

impl IndexBuilder {
    pub fn new(manifest: &sen_core::Manifest, dtype: Storage) -> Result<Self, StoreError> {
        Ok(IndexBuilder {
            header: IndexHeader {
                dim: manifest.model.embed_dim,
                count: 0,
                dtype,
                image_encoder_sha256: manifest.encoder_digest(&manifest.io.image)?,
                preprocess: Some(manifest.preprocess.clone()),
                bundle_precision: manifest.precision.to_string(),
                written_by: format!("sen {}", env!("CARGO_PKG_VERSION")),
                paths: vec![],
                pids: vec![],
            },
            data: vec![],
        })
    }

    /// Start from an existing index (for `--append`); the storage type stays the index's.
    pub fn from_index(index: &Index) -> Self {
        let mut data = Vec::with_capacity(index.len() * index.header.dim);
        match index.rows() {
            Rows::F32(v) => data.extend_from_slice(v),
            Rows::F16(v) => data.extend(v.iter().map(|h| h.to_f32())),
        }
        let mut header = index.header.clone();
        header.written_by = format!("sen {}", env!("CARGO_PKG_VERSION"));
        IndexBuilder { header, data }
    }

    pub fn len(&self) -> usize {
        self.header.count
    }

    pub fn is_empty(&self) -> bool {
        self.header.count == 0
    }

    pub fn contains_path(&self, path: &str) -> bool {
        self.header.paths.iter().any(|p| p == path)
    }

    /// Add one row. Refuses a wrong length or a non-finite value, naming the image.
    pub fn push(
        &mut self,
        path: String,
        pid: Option<i64>,
        embedding: &[f32],
    ) -> Result<(), StoreError> {
        if embedding.len() != self.header.dim {
            return Err(StoreError::Input(format!(
                "{path}: embedding has {} values, the index holds {}",
                embedding.len(),
                self.header.dim
            )));
        }
        if embedding.iter().any(|v| !v.is_finite()) {
            return Err(StoreError::Input(format!(
                "{path}: the image encoder returned a non-finite embedding"
            )));
        }
        self.data.extend_from_slice(embedding);
        self.header.paths.push(path);
        self.header.pids.push(pid);
        self.header.count += 1;
        Ok(())
    }

    /// Write to `path` atomically (temporary sibling, then rename). Rows are encoded
    /// in chunks twice (once for the CRC the preamble needs, once to write), so
    /// writing needs no second copy of the gallery in memory.
    pub fn write(&self, path: &Path) -> Result<(), StoreError> {
        let header = serde_json::to_vec(&self.header).expect("header serialises");
        let dtype = self.header.dtype;
        let data_len = self.data.len() * dtype.bytes();
        let for_each_chunk =
            |f: &mut dyn FnMut(&[u8]) -> std::io::Result<()>| -> std::io::Result<()> {
                let mut buf = Vec::with_capacity(64 << 10);
                for rows in self.data.chunks(16 << 10) {
                    buf.clear();
                    match dtype {
                        Storage::F32 => rows
                            .iter()
                            .for_each(|v| buf.extend_from_slice(&v.to_le_bytes())),
                        Storage::F16 => rows
                            .iter()
                            .for_each(|v| buf.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
                    }
                    f(&buf)?;
                }
                Ok(())
            };
        let mut crc = crc32fast::Hasher::new();
        for_each_chunk(&mut |b| {
            crc.update(b);
            Ok(())
        })
        .expect("hashing cannot fail");
        let pre = Preamble::new(VERSION, &header, data_len, crc.finalize(), 0);
        let pad = pre.padding();
        sen_core::fsutil::write_atomic_with(path, |w| {
            w.write_all(&pre.to_bytes())?;
            w.write_all(&header)?;
            w.write_all(&pad)?;
            for_each_chunk(&mut |b| w.write_all(b))
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le_u64(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
    }

    fn manifest(dim: usize) -> sen_core::Manifest {
        let d = tempfile::tempdir().unwrap();
        let mut m = sen_core::Manifest::example(d.path());
        m.model.embed_dim = dim;
        m
    }

    fn small(dtype: Storage) -> (tempfile::TempDir, PathBuf, sen_core::Manifest) {
        let d = tempfile::tempdir().unwrap();
        let m = manifest(4);
        let mut b = IndexBuilder::new(&m, dtype).unwrap();
        b.push("a.jpg".into(), Some(1), &[1.0, 0.0, 0.0, 0.0])
            .unwrap();
        b.push("b.jpg".into(), None, &[0.0, 1.0, 0.0, 0.0]).unwrap();
        b.push("c.jpg".into(), Some(2), &[0.6, 0.8, 0.0, 0.0])
            .unwrap();
        let p = d.path().join("g.senidx");
        b.write(&p).unwrap();
        (d, p, m)
    }

    #[test]
    fn round_trip_and_search_f32_and_f16() {
        for dtype in [Storage::F32, Storage::F16] {
            let (_d, p, m) = small(dtype);
            let idx = Index::open(&p).unwrap();
            assert_eq!(idx.len(), 3);
            assert_eq!(idx.header.pids, vec![Some(1), None, Some(2)]);
            idx.check_bundle(&m, Path::new("bundle")).unwrap();
            let hits = idx.search(&[0.0, 1.0, 0.0, 0.0], 2, 2).unwrap();
            assert_eq!(hits.iter().map(|h| h.row).collect::<Vec<_>>(), vec![1, 2]);
            assert!((hits[1].score - 0.8).abs() < 1e-3);
            assert!((idx.row(2)[1] - 0.8).abs() < 1e-3);
            // Data starts 64-byte aligned.
            assert_eq!(le_u64(&std::fs::read(&p).unwrap(), 24) % 64, 0);
        }
    }

    #[test]
    fn any_flipped_byte_or_truncation_is_refused() {
        let (_d, p, _) = small(Storage::F32);
        let good = std::fs::read(&p).unwrap();
        // A byte in the header, one in the data, the last byte.
        let data_at = le_u64(&good, 24) as usize;
        for at in [70, data_at + 5, good.len() - 1] {
            let mut b = good.clone();
            b[at] ^= 0x40;
            std::fs::write(&p, &b).unwrap();
            let e = Index::open(&p)
                .err()
                .expect("damaged index opened")
                .to_string();
            assert!(
                e.contains("checksum mismatch") && e.contains("g.senidx"),
                "{e}"
            );
        }
        std::fs::write(&p, &good[..good.len() - 4]).unwrap();
        let e = Index::open(&p).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(
            &p,
            b"not an index at all, just text that is long enough to pass the preamble size.",
        )
        .unwrap();
        let e = Index::open(&p).err().unwrap().to_string();
        assert!(e.contains("not a sen index"), "{e}");
    }

    #[test]
    fn another_encoder_or_size_is_refused() {
        let (_d, p, mut m) = small(Storage::F32);
        let idx = Index::open(&p).unwrap();
        let f = m.io.image.file.clone();
        m.files.get_mut(&f).unwrap().sha256 = "ab".repeat(32);
        let e = idx
            .check_bundle(&m, Path::new("other"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("re-index") && e.contains(&"ab".repeat(32)),
            "{e}"
        );
        let e = idx
            .check_bundle(&manifest(8), Path::new("wide"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("4-dim") && e.contains("8 dims"), "{e}");
        assert!(idx.search(&[1.0; 3], 1, 1).is_err());
        assert!(idx.search(&[1.0, 0.0, f32::NAN, 0.0], 1, 1).is_err());
        assert!(idx.search(&[1.0; 4], 0, 1).is_err());
    }

    #[test]
    fn non_finite_rows_are_refused_at_build_time() {
        let mut b = IndexBuilder::new(&manifest(2), Storage::F32).unwrap();
        let e = b
            .push("x.jpg".into(), None, &[f32::INFINITY, 0.0])
            .unwrap_err();
        assert!(e.to_string().contains("x.jpg"));
        assert!(b.push("y.jpg".into(), None, &[1.0]).is_err());
    }

    #[test]
    fn rows_spanning_several_write_chunks_round_trip() {
        // 3000 x 8 = 24000 values: two of write()'s 16384-value chunks, both dtypes.
        for dtype in [Storage::F32, Storage::F16] {
            let d = tempfile::tempdir().unwrap();
            let mut b = IndexBuilder::new(&manifest(8), dtype).unwrap();
            for i in 0..3000 {
                let row: Vec<f32> = (0..8).map(|j| ((i * 8 + j) % 97) as f32 / 97.0).collect();
                b.push(format!("{i}.jpg"), Some(i as i64), &row).unwrap();
            }
            let p = d.path().join("big.senidx");
            b.write(&p).unwrap();
            let idx = Index::open(&p).unwrap();
            assert_eq!(idx.len(), 3000);
            for i in [0, 2047, 2048, 2999] {
                let want: Vec<f32> = (0..8).map(|j| ((i * 8 + j) % 97) as f32 / 97.0).collect();
                for (g, w) in idx.row(i).iter().zip(&want) {
                    assert!((g - w).abs() < 1e-3, "{dtype:?} row {i}: {g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn append_keeps_rows_and_storage() {
        let (_d, p, _) = small(Storage::F16);
        let idx = Index::open(&p).unwrap();
        let mut b = IndexBuilder::from_index(&idx);
        assert!(b.contains_path("b.jpg"));
        b.push("d.jpg".into(), Some(3), &[0.0, 0.0, 1.0, 0.0])
            .unwrap();
        drop(idx);
        b.write(&p).unwrap();
        let idx = Index::open(&p).unwrap();
        assert_eq!(idx.len(), 4);
        assert_eq!(idx.header.dtype, Storage::F16);
        assert_eq!(idx.header.paths[3], "d.jpg");
        assert_eq!(idx.row(0), vec![1.0, 0.0, 0.0, 0.0]);
    }
}
