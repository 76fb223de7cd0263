//! Minimal `.npy` (NumPy format 1.0) writer and reader for little-endian f32/i64 arrays.

use crate::error::CoreError;
use std::path::Path;

/// Element types this module writes.
pub trait NpyElement: Copy {
    const DESCR: &'static str;
    fn write_le(self, out: &mut Vec<u8>);
}
impl NpyElement for f32 {
    const DESCR: &'static str = "<f4";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}
impl NpyElement for i64 {
    const DESCR: &'static str = "<i8";
    fn write_le(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
}

/// Serialise a C-order array of `shape` to `.npy` bytes.
pub fn to_npy_bytes<T: NpyElement>(shape: &[usize], data: &[T]) -> Result<Vec<u8>, CoreError> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(CoreError::Invalid(format!(
            "npy: shape {shape:?} holds {n} elements, got {}",
            data.len()
        )));
    }
    let dims = match shape.len() {
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {dims}, }}",
        T::DESCR
    );
    // Pad so that magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + std::mem::size_of_val(data));
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &x in data {
        x.write_le(&mut out);
    }
    Ok(out)
}

/// Write an `.npy` file atomically.
pub fn write_npy<T: NpyElement>(path: &Path, shape: &[usize], data: &[T]) -> Result<(), CoreError> {
    crate::fsutil::write_atomic(path, &to_npy_bytes(shape, data)?)
}

/// Read a little-endian float32 C-order `.npy` file: (shape, data).
pub fn read_npy_f32(path: &Path) -> Result<(Vec<usize>, Vec<f32>), CoreError> {
    let b = std::fs::read(path).map_err(|e| CoreError::io(path, e))?;
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err(CoreError::format(path, "not a .npy file"));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => {
            return Err(CoreError::format(
                path,
                format!("unsupported .npy version {v}"),
            ));
        }
    };
    let header = std::str::from_utf8(
        b.get(start..start + hlen)
            .ok_or_else(|| CoreError::format(path, "truncated header"))?,
    )
    .map_err(|_| CoreError::format(path, "header is not text"))?;
    if !header.contains("'descr': '<f4'") || header.contains("'fortran_order': True") {
        return Err(CoreError::format(
            path,
            format!("expected little-endian float32 in C order, header {header:?}"),
        ));
    }
    let shape_txt = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .ok_or_else(|| CoreError::format(path, "no shape in header"))?;
    let shape: Vec<usize> = shape_txt
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| CoreError::format(path, format!("bad shape {shape_txt:?}")))
        })
        .collect::<Result<_, _>>()?;
    let body = &b[start + hlen..];
    let n: usize = shape.iter().product();
    if body.len() != n * 4 {
        return Err(CoreError::format(
            path,
            format!(
                "shape {shape:?} needs {} bytes of data, file has {}",
                n * 4,
                body.len()
            ),
        ));
    }
    Ok((
        shape,
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_aligned_and_round_trips() {
        let bytes = to_npy_bytes(&[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, -6.5]).unwrap();
        let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + hlen) % 64, 0);
        assert!(
            std::str::from_utf8(&bytes[10..10 + hlen])
                .unwrap()
                .contains("'shape': (2, 3)")
        );
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.npy");
        write_npy(&p, &[2, 3], &[1.0f32, 2.0, 3.0, 4.0, 5.0, -6.5]).unwrap();
        let (shape, data) = read_npy_f32(&p).unwrap();
        assert_eq!(shape, vec![2, 3]);
        assert_eq!(data[5], -6.5);
        assert!(to_npy_bytes(&[4], &[1i64, 2, 3]).is_err());
    }
}
