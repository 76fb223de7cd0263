//! The 64-byte preamble shared by the index file (version 1) and store segments
//! (version 2): magic, version, the JSON header's length and CRC-32, the data's
//! offset (64-aligned) and length, and two CRC-32 slots (v1: the rows; v2: the
//! metadata columns and the embeddings).
//!
//! Layout (little-endian): 0..8 magic `SENINDEX`; 8..12 version; 12..16 header CRC;
//! 16..24 header length; 24..32 data offset; 32..40 data length; 40..44 CRC A;
//! 44..48 CRC B (v2); 48..64 zero; 64.. the JSON header; data offset.. the data.

use crate::error::StoreError;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"SENINDEX";
pub const PREAMBLE: usize = 64;
pub const ALIGN: usize = 64;

#[cfg(not(target_endian = "little"))]
compile_error!(
    "index and segment files are little-endian and mapped in place: big-endian targets are not supported"
);

/// The fixed fields of a file's first 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preamble {
    pub version: u32,
    pub header_crc: u32,
    pub header_len: usize,
    pub data_offset: usize,
    pub data_len: usize,
    pub crc_a: u32,
    pub crc_b: u32,
}

pub(crate) fn bad(path: &Path, msg: impl std::fmt::Display) -> StoreError {
    StoreError::Damaged(format!("{}: {msg}", path.display()))
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Preamble {
    /// A preamble for `header_len` header bytes and `data_len` data bytes.
    pub fn new(version: u32, header: &[u8], data_len: usize, crc_a: u32, crc_b: u32) -> Self {
        Preamble {
            version,
            header_crc: crc32fast::hash(header),
            header_len: header.len(),
            data_offset: (PREAMBLE + header.len()).div_ceil(ALIGN) * ALIGN,
            data_len,
            crc_a,
            crc_b,
        }
    }

    pub fn to_bytes(&self) -> [u8; PREAMBLE] {
        let mut pre = [0u8; PREAMBLE];
        pre[..8].copy_from_slice(MAGIC);
        pre[8..12].copy_from_slice(&self.version.to_le_bytes());
        pre[12..16].copy_from_slice(&self.header_crc.to_le_bytes());
        pre[16..24].copy_from_slice(&(self.header_len as u64).to_le_bytes());
        pre[24..32].copy_from_slice(&(self.data_offset as u64).to_le_bytes());
        pre[32..40].copy_from_slice(&(self.data_len as u64).to_le_bytes());
        pre[40..44].copy_from_slice(&self.crc_a.to_le_bytes());
        pre[44..48].copy_from_slice(&self.crc_b.to_le_bytes());
        pre
    }

    /// Zero bytes between the header and the data.
    pub fn padding(&self) -> Vec<u8> {
        vec![0u8; self.data_offset - PREAMBLE - self.header_len]
    }

    /// Parse and check `b` (a whole mapped file): magic, `version`, sizes, the header
    /// CRC. Returns the preamble and the header bytes. `kind` names the file kind and
    /// `rebuild` says how to rebuild it, in errors.
    pub fn parse<'a>(
        path: &Path,
        b: &'a [u8],
        version: u32,
        kind: &str,
        rebuild: &str,
    ) -> Result<(Preamble, &'a [u8]), StoreError> {
        if b.len() < PREAMBLE || &b[..8] != MAGIC {
            return Err(bad(
                path,
                format!("not a sen {kind} (no SENINDEX magic); {rebuild}"),
            ));
        }
        let p = Preamble {
            version: le_u32(b, 8),
            header_crc: le_u32(b, 12),
            header_len: le_u64(b, 16) as usize,
            data_offset: le_u64(b, 24) as usize,
            data_len: le_u64(b, 32) as usize,
            crc_a: le_u32(b, 40),
            crc_b: le_u32(b, 44),
        };
        if p.version != version {
            return Err(bad(
                path,
                format!(
                    "format version {}, but this reader takes version {version}; {rebuild}",
                    p.version
                ),
            ));
        }
        let truncated = |what: &str| {
            bad(
                path,
                format!(
                    "truncated: the {what} ends past the end of the file ({} bytes); {rebuild}",
                    b.len()
                ),
            )
        };
        let header_end = PREAMBLE
            .checked_add(p.header_len)
            .ok_or_else(|| truncated("header"))?;
        if header_end > b.len() {
            return Err(truncated("header"));
        }
        if !p.data_offset.is_multiple_of(ALIGN) || p.data_offset < header_end {
            return Err(bad(
                path,
                format!(
                    "data offset {} is invalid; the file is damaged",
                    p.data_offset
                ),
            ));
        }
        let data_end = p
            .data_offset
            .checked_add(p.data_len)
            .ok_or_else(|| truncated("data"))?;
        if data_end > b.len() {
            return Err(truncated("data"));
        }
        if data_end != b.len() {
            return Err(bad(
                path,
                format!(
                    "{} bytes after the data; the file is damaged",
                    b.len() - data_end
                ),
            ));
        }
        let header = &b[PREAMBLE..header_end];
        if crc32fast::hash(header) != p.header_crc {
            return Err(bad(
                path,
                format!("header checksum mismatch: the file is damaged; {rebuild}"),
            ));
        }
        Ok((p, header))
    }
}

/// Map `path` read-only. sen replaces these files by rename, never in place, so a
/// concurrent writer replaces the directory entry, not these pages.
pub fn map(path: &Path) -> Result<memmap2::Mmap, StoreError> {
    let file = std::fs::File::open(path).map_err(|e| bad(path, format!("cannot open: {e}")))?;
    // SAFETY: read-only map of a file sen never modifies in place (see above).
    unsafe { memmap2::Mmap::map(&file) }.map_err(|e| bad(path, format!("cannot map: {e}")))
}

/// `bytes` (from a map at a 64-aligned offset) as a slice of `T`.
pub fn cast<T: bytemuck_free::Pod>(bytes: &[u8]) -> &[T] {
    // SAFETY: callers pass 64-aligned ranges of a page-aligned map whose length is a
    // multiple of size_of::<T>; every bit pattern is a valid T (plain numbers).
    let (pre, v, post) = unsafe { bytes.align_to::<T>() };
    assert!(pre.is_empty() && post.is_empty(), "misaligned column");
    v
}

/// Plain-number types a column may hold (every bit pattern valid).
pub mod bytemuck_free {
    /// # Safety
    /// Every bit pattern of the type is a valid value.
    pub unsafe trait Pod: Copy {}
    unsafe impl Pod for u64 {}
    unsafe impl Pod for i64 {}
    unsafe impl Pod for u32 {}
    unsafe impl Pod for f32 {}
    unsafe impl Pod for half::f16 {}
}
