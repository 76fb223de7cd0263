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

/// A directory written in a temporary sibling of its destination and moved into place
/// only when complete ([`StagedDir::commit`]): a failure (dropping it) leaves nothing,
/// and an existing destination stays until the new one is whole.
pub struct StagedDir {
    tmp: tempfile::TempDir,
    out: std::path::PathBuf,
    tool: String,
}

impl StagedDir {
    /// Stage `out`; `tool` names the temporary folders (`.<tool>-…`).
    pub fn new(out: &Path, tool: &str) -> Result<Self, CoreError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(parent).map_err(|e| CoreError::io(parent, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{tool}-"))
            .tempdir_in(parent)
            .map_err(|e| CoreError::io(parent, e))?;
        Ok(StagedDir {
            tmp,
            out: out.to_path_buf(),
            tool: tool.to_string(),
        })
    }

    /// Where to write.
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// Move the staged directory to its destination, replacing what was there.
    pub fn commit(self) -> Result<(), CoreError> {
        let out = &self.out;
        let tmp = self.tmp.keep();
        if out.exists() {
            let old = out.with_file_name(format!(
                ".{}-old-{}",
                self.tool,
                out.file_name()
                    .map(|s| s.to_string_lossy())
                    .unwrap_or_default()
            ));
            let _ = std::fs::remove_dir_all(&old);
            std::fs::rename(out, &old).map_err(|e| CoreError::io(out, e))?;
            std::fs::rename(&tmp, out).map_err(|e| CoreError::io(out, e))?;
            let _ = std::fs::remove_dir_all(&old);
        } else {
            std::fs::rename(&tmp, out).map_err(|e| CoreError::io(out, e))?;
        }
        Ok(())
    }
}

/// The weights file of a checkpoint directory (SPEC §10).
pub const CHECKPOINT_MODEL_FILE: &str = "model.safetensors";
/// A checkpoint's training record (SPEC §10), with the `preprocess` block it was trained with.
pub const CHECKPOINT_TRAIN_FILE: &str = "train.json";

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
    use super::StagedDir;

    #[test]
    fn staged_dir_appears_only_when_committed_and_replaces_whole() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("bundle");
        // Dropped (a failure): nothing at the destination, no temporary left.
        let s = StagedDir::new(&out, "t").unwrap();
        std::fs::write(s.path().join("a"), b"1").unwrap();
        drop(s);
        assert!(!out.exists());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
        // Committed.
        let s = StagedDir::new(&out, "t").unwrap();
        std::fs::write(s.path().join("a"), b"1").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"1");
        // Replacing: the old contents go, the new arrive, nothing else is left over.
        let s = StagedDir::new(&out, "t").unwrap();
        std::fs::write(s.path().join("b"), b"2").unwrap();
        s.commit().unwrap();
        assert!(!out.join("a").exists());
        assert_eq!(std::fs::read(out.join("b")).unwrap(), b"2");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

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
