//! A milvus-lite server for tests (`make test-milvus`): started from
//! `$SEN_MILVUS_LITE` on a free loopback port with its own data folder, stopped by
//! its pid (SIGTERM, then SIGKILL) when dropped, also when a test panics. Each pid is
//! also written to `$SEN_MILVUS_PIDS/` so the make target stops any server a killed
//! test process left behind.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MilvusLite {
    child: Option<Child>,
    pub port: u16,
    data: PathBuf,
    exe: PathBuf,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("address").port()
}

impl MilvusLite {
    /// Start a server keeping its data in `data`.
    pub fn start(data: &Path) -> MilvusLite {
        let exe = std::env::var_os("SEN_MILVUS_LITE").map(PathBuf::from).expect(
            "SEN_MILVUS_LITE is not set: run these tests with `make test-milvus` (it installs milvus-lite)",
        );
        let mut m = MilvusLite {
            child: None,
            port: free_port(),
            data: data.to_path_buf(),
            exe,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.exe)
            .args(["server", "--data-dir"])
            .arg(&self.data)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.exe.display()));
        if let Some(dir) = std::env::var_os("SEN_MILVUS_PIDS") {
            let _ = std::fs::write(Path::new(&dir).join(child.id().to_string()), "");
        }
        self.child = Some(child);
        // Accepting connections within 30 s (about 1 s here).
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "milvus-lite did not listen on 127.0.0.1:{} within 30 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `milvus://127.0.0.1:PORT/COLLECTION`.
    pub fn uri(&self, collection: &str) -> String {
        format!("milvus://127.0.0.1:{}/{collection}", self.port)
    }

    /// SIGTERM and wait (at most 10 s, then SIGKILL).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t = Instant::now();
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Some(dir) = std::env::var_os("SEN_MILVUS_PIDS") {
                let _ = std::fs::remove_file(Path::new(&dir).join(c.id().to_string()));
            }
        }
    }

    /// Start again on the same port and data (after [`stop`](Self::stop)).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for MilvusLite {
    fn drop(&mut self) {
        self.stop();
    }
}

/// SPEC §11 "same ranking": ids agree position by position, except items whose
/// scores differ by at most 1e-5 may swap. `(id, score)` lists; panics naming `what`.
pub fn assert_same_ranking(a: &[(u64, f64)], b: &[(u64, f64)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x.1 - y.1).abs() <= 1e-5,
            "{what}: rank {}: score {} vs {}",
            i + 1,
            x.1,
            y.1
        );
        assert!(
            x.0 == y.0 || a.iter().any(|z| z.0 == y.0 && (z.1 - y.1).abs() <= 1e-5),
            "{what}: rank {}: id {} vs {} (not a tie)",
            i + 1,
            x.0,
            y.0
        );
    }
}
