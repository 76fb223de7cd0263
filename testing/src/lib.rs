//! `sen-testing`: what every test (and the load generator) that starts `sen` shares,
//! so there is one copy of each:
//!
//! - [`Serve`]: `sen serve` on an ephemeral loopback port, started through
//!   `sen_core::process::command` (so `SEN_TEST_RUNNER`, e.g. qemu, applies), its
//!   address read from its first stdout line ([`listening_url`]), readiness polled
//!   with a bound, its log kept to say why it failed, killed on drop;
//! - [`tiny_bundle`]: a seeded random-weight tiny-preset bundle;
//! - [`synth_crops`]: JPEG crops of a small synthetic benchmark;
//! - [`client`]: a blocking HTTP client with a timeout (and TLS through ring).
//!
//! The `sen` binary's path is the caller's: `env!("CARGO_BIN_EXE_sen")` in the
//! `sen-cli` package's tests, a flag in the load generator.

pub mod frigate;
pub mod mqtt;

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What `sen serve` prints first on stdout once bound, before its URL
/// (`sen_serve::LISTENING`; `sen-serve`'s tests check the two agree).
pub const LISTENING: &str = "listening on ";

/// Read a child `sen serve`'s first stdout line and return the URL it serves, then
/// drain the rest of stdout on a thread so the child never blocks on a full pipe.
pub fn listening_url(child: &mut Child) -> Result<String, String> {
    let out = child
        .stdout
        .take()
        .ok_or("sen serve was started without a piped stdout")?;
    let mut out = BufReader::new(out);
    let mut line = String::new();
    out.read_line(&mut line)
        .map_err(|e| format!("reading sen serve's stdout: {e}"))?;
    let url = line
        .trim()
        .strip_prefix(LISTENING)
        .ok_or_else(|| format!("sen serve printed {line:?}, not \"{LISTENING}URL\""))?
        .to_string();
    std::thread::spawn(move || for _ in out.lines() {});
    Ok(url)
}

/// A tiny-preset checkpoint with weights seeded by `seed`, exported to
/// `dir/bundle{seed}` (fp32, the default export).
pub fn tiny_bundle(dir: &Path, seed: u64) -> PathBuf {
    let ckpt = dir.join(format!("ckpt{seed}"));
    sen_export::fixtures::random_checkpoint(&sen_core::ModelConfig::tiny(), &ckpt, seed)
        .expect("a random-weight tiny checkpoint");
    let out = dir.join(format!("bundle{seed}"));
    sen_export::export(&ckpt, &out, &sen_export::ExportOptions::default())
        .expect("exporting the tiny bundle");
    out
}

/// The checkpoint of [`tiny_bundle`] (`seed`; made first) exported again after its
/// `train.json` says it was trained with bilinear resizing, to
/// `dir/bundle{seed}-bilinear`: the same image encoder file, another encoder identity
/// (SPEC §10).
pub fn tiny_bundle_bilinear(dir: &Path, seed: u64) -> PathBuf {
    let ckpt = dir.join(format!("ckpt{seed}"));
    let train = ckpt.join(sen_core::fsutil::CHECKPOINT_TRAIN_FILE);
    let mut json: serde_json::Value = std::fs::read_to_string(&train)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_else(|| serde_json::json!({}));
    json["preprocess"] = serde_json::to_value(sen_core::PreprocessSpec::for_model_with(
        &sen_core::ModelConfig::tiny(),
        sen_core::preprocess::ResizeFilter::Bilinear,
    ))
    .unwrap();
    std::fs::write(&train, json.to_string()).expect("writing train.json");
    let out = dir.join(format!("bundle{seed}-bilinear"));
    sen_export::export(&ckpt, &out, &sen_export::ExportOptions::default())
        .expect("exporting the bilinear bundle");
    out
}

/// The first `n` JPEG crops, by file name, of a synthetic benchmark of 13 identities
/// x 4 images rendered with `seed` into `dir/synth{seed}` (made once per folder):
/// `(file name, bytes)`.
pub fn synth_crops(dir: &Path, seed: u64, n: usize) -> Vec<(String, Vec<u8>)> {
    let root = dir.join(format!("synth{seed}"));
    if !root.join("reid_raw.json").is_file() {
        sen_core::synth::generate(
            &root,
            &sen_core::synth::SynthConfig {
                ids: 13,
                images_per_id: 4,
                seed,
            },
        )
        .expect("rendering the synthetic benchmark");
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("imgs/synth"))
        .expect("the synthetic images")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .take(n)
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// The ids of a SPEC §11 result object, in rank order.
pub fn result_ids(v: &serde_json::Value) -> Vec<u64> {
    v["results"]
        .as_array()
        .unwrap_or_else(|| panic!("not a result object: {v}"))
        .iter()
        .map(|r| r["id"].as_u64().expect("an id"))
        .collect()
}

/// Send raw bytes to an `http://` server and read what comes back until it closes
/// the connection or `within` passes: the status code (0 when none arrived) and the
/// response's text. For requests a client library would not send.
pub fn raw_http(url: &str, request: &[u8], within: Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).expect("connecting to the server");
    s.set_read_timeout(Some(within)).expect("a read timeout");
    let _ = s.write_all(request);
    let mut out = vec![];
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    while t.elapsed() < within {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
        if response_complete(&out) {
            break;
        }
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Whether `b` holds a whole HTTP/1 response with a `Content-Length` body.
fn response_complete(b: &[u8]) -> bool {
    let t = String::from_utf8_lossy(b);
    let Some((head, body)) = t.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .is_some_and(|n| body.len() >= n)
}

/// A tmpfs mounted for a test of a full disk, unmounted on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mount a tmpfs of `size` (`16m`) at `dir` (created). `None` where mounting is
    /// not allowed (it needs root): the test says it is skipped and returns, except
    /// under CI (`CI` set), where that is a failure.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).expect("a mount point");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(Tmpfs {
                dir: dir.to_path_buf(),
            });
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "cannot mount a tmpfs (needs root): a disk-full test must run under CI"
        );
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.dir).status();
    }
}

/// Install ring as rustls's provider (reqwest is built without a default one).
pub fn tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A blocking client with a 30 s timeout.
pub fn client() -> reqwest::blocking::Client {
    tls_provider();
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a reqwest client")
}

/// A running `sen serve` (killed and reaped on drop).
pub struct Serve {
    pub child: Child,
    /// `http://127.0.0.1:PORT` (or https).
    pub url: String,
    log: Arc<Mutex<String>>,
    log_thread: Option<std::thread::JoinHandle<()>>,
}

/// How to start `sen serve`: [`Serve::launch`], then flags, then [`Launch::start`].
pub struct Launch {
    sen: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    probe: Option<reqwest::blocking::Client>,
    within: Duration,
    nofile: Option<u64>,
}

impl Launch {
    /// `--store DIR`.
    pub fn store(mut self, dir: &Path) -> Self {
        self.args.push("--store".into());
        self.args.push(dir.into());
        self
    }

    /// More arguments, as given.
    pub fn args<S: AsRef<std::ffi::OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// An environment variable of the server.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// The client that polls `/readyz` (e.g. one that trusts a test certificate).
    pub fn probe(mut self, c: reqwest::blocking::Client) -> Self {
        self.probe = Some(c);
        self
    }

    /// Start it with this open-file limit (`ulimit -n`).
    pub fn nofile(mut self, n: u64) -> Self {
        self.nofile = Some(n);
        self
    }

    /// How long start-up may take (default a minute).
    pub fn ready_within(mut self, d: Duration) -> Self {
        self.within = d;
        self
    }

    /// Start it and return once it is listening (not yet ready).
    pub fn spawn(self) -> Result<(Serve, Launch), String> {
        let mut cmd = sen_core::process::command(&self.sen);
        cmd.args(["serve", "--listen", "127.0.0.1:0"])
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(n) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let r = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &r) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.sen.display()))?;
        // The server's log, kept to say why it failed.
        let log = Arc::new(Mutex::new(String::new()));
        let mut err = BufReader::new(child.stderr.take().expect("piped stderr"));
        let l2 = log.clone();
        let log_thread = std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                l2.lock().unwrap_or_else(|e| e.into_inner()).push_str(&line);
                line.clear();
            }
        });
        let url = match listening_url(&mut child) {
            Ok(u) => u,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                // The log thread ends with the child's stderr.
                std::thread::sleep(Duration::from_millis(100));
                return Err(format!(
                    "{e}\n{}",
                    log.lock().unwrap_or_else(|e| e.into_inner())
                ));
            }
        };
        Ok((
            Serve {
                child,
                url,
                log,
                log_thread: Some(log_thread),
            },
            self,
        ))
    }

    /// Start it and wait (bounded) until `/readyz` answers 200.
    pub fn try_start(self) -> Result<Serve, String> {
        let (mut s, how) = self.spawn()?;
        let probe = how.probe.unwrap_or_else(client);
        let t = Instant::now();
        loop {
            if let Ok(r) = probe.get(s.at("/readyz")).send()
                && r.status() == 200
            {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(format!("sen serve exited ({st}):\n{}", s.log()));
            }
            if t.elapsed() > how.within {
                return Err(format!(
                    "sen serve not ready within {:?}:\n{}",
                    how.within,
                    s.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Launch::try_start`], panicking with the server's log when it fails.
    pub fn start(self) -> Serve {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Serve {
    /// `sen serve --listen 127.0.0.1:0 --bundle BUNDLE` with the binary at `sen`.
    pub fn launch(sen: impl AsRef<Path>, bundle: &Path) -> Launch {
        Launch {
            sen: sen.as_ref().to_path_buf(),
            args: vec!["--bundle".into(), bundle.into()],
            env: vec![],
            probe: None,
            within: Duration::from_secs(60),
            nofile: None,
        }
    }

    /// The URL of path `p` on this server.
    pub fn at(&self, p: &str) -> String {
        format!("{}{p}", self.url)
    }

    /// Send a signal (`-TERM`, `-KILL`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
    }

    /// Wait (bounded) for the server to exit; panics past `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("waiting for sen serve") {
                return st;
            }
            assert!(
                t.elapsed() < within,
                "sen serve did not exit within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What the server has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Once the server has exited: everything it wrote to stderr.
    pub fn final_log(&mut self) -> String {
        if let Some(t) = self.log_thread.take() {
            let _ = t.join();
        }
        self.log()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `d` for a native test, four times `d` when the binaries run through
/// `SEN_TEST_RUNNER` (qemu-user runs `sen` several times slower): the bound of a
/// wait that depends on how fast `sen` works, not on what it must do.
pub fn scaled(d: Duration) -> Duration {
    if std::env::var_os(sen_core::process::RUNNER_VAR).is_some_and(|v| !v.is_empty()) {
        d * 4
    } else {
        d
    }
}
