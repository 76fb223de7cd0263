//! What an ELF file needs from the system: the libraries it names (`DT_NEEDED`, for
//! the GPU preflight) and the glibc symbol versions it requires (`.gnu.version_r`, for
//! the release builds' glibc bound). Read with the `object` crate, for any
//! architecture (an x86-64 host checks aarch64 release binaries).

use object::read::elf::{Dyn, ElfFile64};
use std::path::Path;

/// The file mapped, not read: a CUDA provider library is about 280 MB and only its
/// headers, dynamic section and version tables are looked at.
fn map(path: &Path) -> Result<memmap2::Mmap, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the mapping is read-only and dropped before returning to the caller; a
    // library file replaced while it is read at worst fails to parse (an error).
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| format!("{}: {e}", path.display()))
}

fn parse<'a>(path: &Path, data: &'a [u8]) -> Result<ElfFile64<'a, object::Endianness>, String> {
    ElfFile64::<object::Endianness>::parse(data)
        .map_err(|e| format!("{}: not a 64-bit ELF file ({e})", path.display()))
}

/// The shared libraries an ELF file names (its `DT_NEEDED` entries), in order.
pub fn needed(path: &Path) -> Result<Vec<String>, String> {
    let data = map(path)?;
    let elf = parse(path, &data)?;
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let Some((dyns, link)) = sections
        .dynamic(endian, &*data)
        .map_err(|e| format!("{}: its dynamic section: {e}", path.display()))?
    else {
        return Ok(vec![]);
    };
    let strings = sections
        .strings(endian, &*data, link)
        .map_err(|e| format!("{}: its dynamic string table: {e}", path.display()))?;
    let mut out = vec![];
    for d in dyns {
        if d.tag32(endian) == Some(object::elf::DT_NEEDED) {
            let name = d
                .string(endian, strings)
                .map_err(|e| format!("{}: a DT_NEEDED entry: {e}", path.display()))?;
            out.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(out)
}

/// Every `GLIBC_x.y[.z]` version the file requires, as (major, minor, patch), highest
/// last (what `objdump -T` lists as `GLIBC_2.34` and so on).
pub fn glibc_versions(path: &Path) -> Result<Vec<(u32, u32, u32)>, String> {
    let data = map(path)?;
    let elf = parse(path, &data)?;
    let endian = elf.endian();
    let sections = elf.elf_section_table();
    let mut out = vec![];
    let Some((mut needs, link)) = sections
        .gnu_verneed(endian, &*data)
        .map_err(|e| format!("{}: its version needs: {e}", path.display()))?
    else {
        return Ok(out);
    };
    let strings = sections
        .strings(endian, &*data, link)
        .map_err(|e| format!("{}: its version strings: {e}", path.display()))?;
    let bad = |e: object::read::Error| format!("{}: its version needs: {e}", path.display());
    while let Some((_, mut aux)) = needs.next().map_err(bad)? {
        while let Some(a) = aux.next().map_err(bad)? {
            let name = a.name(endian, strings).map_err(bad)?;
            if let Some(v) = std::str::from_utf8(name)
                .ok()
                .and_then(|n| n.strip_prefix("GLIBC_"))
                .and_then(parse_version)
            {
                out.push(v);
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// `2.34` -> (2, 34, 0); `2.2.5` -> (2, 2, 5); anything else (`PRIVATE`) -> None.
pub fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split('.').map(|p| p.parse::<u32>());
    let major = it.next()?.ok()?;
    let minor = it.next()?.ok()?;
    let patch = match it.next() {
        Some(p) => p.ok()?,
        None => 0,
    };
    it.next().is_none().then_some((major, minor, patch))
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_parse() {
        assert_eq!(super::parse_version("2.34"), Some((2, 34, 0)));
        assert_eq!(super::parse_version("2.2.5"), Some((2, 2, 5)));
        assert_eq!(super::parse_version("PRIVATE"), None);
        assert_eq!(super::parse_version("2.3.4.5"), None);
    }

    #[test]
    fn this_test_binary_needs_a_glibc_and_libc() {
        let me = std::env::current_exe().unwrap();
        let v = super::glibc_versions(&me).unwrap();
        assert!(v.last().is_some_and(|v| v.0 == 2 && v.1 >= 2), "{v:?}");
        assert!(
            super::needed(&me)
                .unwrap()
                .iter()
                .any(|n| n.starts_with("libc.so"))
        );
    }
}
