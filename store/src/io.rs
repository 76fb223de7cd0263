//! The files sen writes itself (segments) go through [`Durable`], so a test can run
//! the store over a layer that drops everything not yet synced ([`testing::FaultFs`])
//! or fails writes on demand. SQLite does its own I/O (WAL, `synchronous=FULL`).
//!
//! Contract (SQLite's "Atomic Commit" page, applied to our own files): a segment is
//! written to a temporary name and fsynced, renamed to its final name, and the
//! directory fsynced, all before the database commit that refers to it.

use std::io::Write;
use std::path::Path;

/// Whether `dir` is missing or an empty folder: where a new store or a snapshot may go.
pub fn missing_or_empty(dir: &Path) -> Result<bool, crate::StoreError> {
    if !dir.exists() {
        return Ok(true);
    }
    Ok(std::fs::read_dir(dir)
        .map_err(|e| crate::StoreError::io(dir, e))?
        .next()
        .is_none())
}

/// Give `f` `len` bytes of allocated space (`posix_fallocate`; written zeros where
/// the file system cannot allocate), so they are really taken from the disk.
pub fn allocate(f: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: posix_fallocate on an open descriptor of ours.
    let r = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
    match r {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => {
            let mut w = std::io::BufWriter::new(f);
            let zeros = vec![0u8; 1 << 20];
            let mut left = len;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..n])?;
                left -= n as u64;
            }
            w.flush()
        }
        e => Err(std::io::Error::from_raw_os_error(e)),
    }
}

/// Bytes free to an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we pass for a NUL-terminated path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0)
        .then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

/// File operations with explicit durability.
pub trait Durable: Send + Sync + std::fmt::Debug {
    /// Create (or truncate) `path`, write the slices in order and fsync the file.
    fn write_synced(&self, path: &Path, parts: &[&[u8]]) -> std::io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// fsync a directory, making renames and removals in it durable.
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    fn remove(&self, path: &Path) -> std::io::Result<()>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

impl Durable for RealFs {
    fn write_synced(&self, path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
        for p in parts {
            f.write_all(p)?;
        }
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }
}

/// Test layers (public so integration tests and benches can use them).
pub mod testing {
    use super::{Durable, RealFs};
    use std::collections::HashMap;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Writes through to the real files, and remembers what a power cut would leave:
    /// a file's content as of its last fsync, and a directory entry as of the
    /// directory's last fsync. [`FaultFs::power_cut`] puts the directories it saw back
    /// to that state (unsynced files vanish, unsynced renames and removals are
    /// undone). [`FaultFs::fail_writes_after`] makes writes fail with ENOSPC once a
    /// byte budget is spent (a full disk).
    #[derive(Debug, Default)]
    pub struct FaultFs {
        state: Mutex<State>,
        budget: AtomicU64,
    }

    #[derive(Debug, Default)]
    struct State {
        /// Content of each path as of its fsync.
        synced: HashMap<PathBuf, Vec<u8>>,
        /// Directory entries a power cut keeps: path -> content.
        durable: HashMap<PathBuf, Vec<u8>>,
        /// Renames and removals not yet made durable by a directory fsync.
        pending: Vec<Op>,
        dirs: Vec<PathBuf>,
    }

    #[derive(Debug)]
    enum Op {
        Create(PathBuf),
        Rename(PathBuf, PathBuf),
        Remove(PathBuf),
    }

    impl FaultFs {
        pub fn new() -> Self {
            FaultFs {
                state: Mutex::default(),
                budget: AtomicU64::new(u64::MAX),
            }
        }

        /// Writes fail with "No space left on device" once `bytes` more have been written.
        pub fn fail_writes_after(&self, bytes: u64) {
            self.budget.store(bytes, Ordering::SeqCst);
        }

        /// Record files already durable in `dir` (a store opened over this layer).
        pub fn adopt_dir(&self, dir: &Path) -> std::io::Result<()> {
            let mut st = self.state.lock().unwrap();
            for e in std::fs::read_dir(dir)? {
                let p = e?.path();
                if p.is_file() {
                    let bytes = std::fs::read(&p)?;
                    st.durable.insert(p, bytes);
                }
            }
            if !st.dirs.iter().any(|d| d == dir) {
                st.dirs.push(dir.to_path_buf());
            }
            Ok(())
        }

        /// Put every directory this layer wrote into back to its durable state.
        pub fn power_cut(&self) -> std::io::Result<()> {
            let mut st = self.state.lock().unwrap();
            st.pending.clear();
            let dirs = st.dirs.clone();
            for dir in dirs {
                for e in std::fs::read_dir(&dir)? {
                    let p = e?.path();
                    if p.is_file() && !st.durable.contains_key(&p) {
                        std::fs::remove_file(&p)?;
                    }
                }
            }
            for (p, bytes) in &st.durable {
                std::fs::write(p, bytes)?;
            }
            st.synced.clear();
            Ok(())
        }
    }

    impl Durable for FaultFs {
        fn write_synced(&self, path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
            let n: u64 = parts.iter().map(|p| p.len() as u64).sum();
            let left = self.budget.load(Ordering::SeqCst);
            if n > left {
                self.budget.store(0, Ordering::SeqCst);
                // A full disk: part of the file may be written, then the write fails.
                let _ = std::fs::write(path, &parts.concat()[..left as usize]);
                return Err(std::io::Error::from_raw_os_error(28));
            }
            if left != u64::MAX {
                self.budget.fetch_sub(n, Ordering::SeqCst);
            }
            RealFs.write_synced(path, parts)?;
            let mut st = self.state.lock().unwrap();
            st.synced.insert(path.to_path_buf(), parts.concat());
            if st.durable.contains_key(path) {
                // An existing entry: its fsynced content is durable at once.
                st.durable.insert(path.to_path_buf(), parts.concat());
            } else {
                st.pending.push(Op::Create(path.to_path_buf()));
            }
            if let Some(d) = path.parent()
                && !st.dirs.iter().any(|x| x == d)
            {
                st.dirs.push(d.to_path_buf());
            }
            Ok(())
        }

        fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
            RealFs.rename(from, to)?;
            let mut st = self.state.lock().unwrap();
            if let Some(c) = st.synced.remove(from) {
                st.synced.insert(to.to_path_buf(), c);
            }
            st.pending
                .push(Op::Rename(from.to_path_buf(), to.to_path_buf()));
            Ok(())
        }

        fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
            RealFs.sync_dir(dir)?;
            let mut st = self.state.lock().unwrap();
            let ops: Vec<Op> = std::mem::take(&mut st.pending);
            let mut keep = vec![];
            for op in ops {
                let here = match &op {
                    Op::Create(p) | Op::Rename(_, p) | Op::Remove(p) => p.parent() == Some(dir),
                };
                if !here {
                    keep.push(op);
                    continue;
                }
                match op {
                    Op::Create(p) => {
                        if let Some(c) = st.synced.get(&p).cloned() {
                            st.durable.insert(p, c);
                        }
                    }
                    Op::Rename(from, to) => {
                        st.durable.remove(&from);
                        // The content is what the file had at its last fsync.
                        let c = st.synced.get(&to).cloned().unwrap_or_default();
                        st.durable.insert(to, c);
                    }
                    Op::Remove(p) => {
                        st.durable.remove(&p);
                    }
                }
            }
            st.pending = keep;
            Ok(())
        }

        fn remove(&self, path: &Path) -> std::io::Result<()> {
            RealFs.remove(path)?;
            let mut st = self.state.lock().unwrap();
            st.synced.remove(path);
            st.pending.push(Op::Remove(path.to_path_buf()));
            Ok(())
        }
    }
}
