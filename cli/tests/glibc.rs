//! The highest glibc symbol version each shipped binary needs (what `objdump -T`
//! lists as GLIBC_2.xx), read with `sen_runtime::elf` so an x86-64 host can check
//! aarch64 release binaries. By default it reports on this build's `sen`;
//! `make dist-aarch64` points it at the release binaries (`SEN_GLIBC_BINARIES`, paths
//! separated by `:`) and sets the bound (`SEN_GLIBC_MAX`, e.g. `2.31` for JetPack 5).

use sen_runtime::elf::{glibc_versions, parse_version};
use std::path::PathBuf;

#[test]
fn each_shipped_binary_needs_at_most_the_glibc_bound() {
    let bins: Vec<PathBuf> = match std::env::var("SEN_GLIBC_BINARIES") {
        Ok(v) if !v.is_empty() => v.split(':').map(PathBuf::from).collect(),
        _ => vec![PathBuf::from(env!("CARGO_BIN_EXE_sen"))],
    };
    let max = std::env::var("SEN_GLIBC_MAX").ok().map(|m| {
        parse_version(&m)
            .unwrap_or_else(|| panic!("SEN_GLIBC_MAX={m}: expected a version like 2.31"))
    });
    for b in &bins {
        let v = glibc_versions(b).unwrap_or_else(|e| panic!("{e}"));
        let top = *v
            .last()
            .unwrap_or_else(|| panic!("{}: needs no GLIBC version at all", b.display()));
        println!(
            "{}: needs GLIBC_{}.{}{}",
            b.display(),
            top.0,
            top.1,
            if top.2 > 0 {
                format!(".{}", top.2)
            } else {
                String::new()
            }
        );
        if let Some(m) = max {
            assert!(
                top <= m,
                "{} needs GLIBC_{}.{} (above the bound {}.{}); the box's glibc would refuse it",
                b.display(),
                top.0,
                top.1,
                m.0,
                m.1
            );
        }
    }
}
