//! Atomic file output: write to a temporary file in the same folder, then rename.

use crate::error::CoreError;
use std::io::Write;
use std::path::Path;

/// Write `bytes` to `path` atomically (a reader sees the old file or the new one, never half).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CoreError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Like [`write_atomic`], with a writer callback for streamed output.
pub fn write_atomic_with(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<(), CoreError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("out")
        ))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| CoreError::io(dir, e))?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file_mut());
        f(&mut w).map_err(|e| CoreError::io(path, e))?;
        w.flush().map_err(|e| CoreError::io(path, e))?;
    }
    tmp.as_file()
        .sync_all()
        .map_err(|e| CoreError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| CoreError::io(path, e.error))?;
    Ok(())
}

/// The weights file of a checkpoint directory (SPEC §10).
pub const CHECKPOINT_MODEL_FILE: &str = "model.safetensors";

/// A checkpoint directory, or a training run directory meaning its `best/` (SPEC §10:
/// every command that takes a checkpoint accepts either).
pub fn resolve_checkpoint(path: &Path) -> Result<std::path::PathBuf, CoreError> {
    for dir in [path.to_path_buf(), path.join("best")] {
        if dir.join(CHECKPOINT_MODEL_FILE).is_file() {
            return Ok(dir);
        }
    }
    Err(CoreError::Invalid(format!(
        "{}: neither a checkpoint directory (no {CHECKPOINT_MODEL_FILE}) nor a training run (no best/{CHECKPOINT_MODEL_FILE})",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.txt");
        super::write_atomic(&p, b"first").unwrap();
        super::write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left behind"
        );
    }
}
