//! `sen-milvus`: beyond one box. A store replicates its rows into a Milvus
//! collection ([`replicate`]), and searches run there ([`collection`]), through the
//! official Rust SDK (`milvus-sdk-rust`, gRPC). No ONNX Runtime, no HTTP server.
//!
//! - [`Target`]: a `milvus://HOST:PORT/COLLECTION` URI (`milvus+tls://` for TLS);
//! - [`Settings`]: how to connect (credentials from a file or the environment only,
//!   TLS, timeouts, retries), read from `SEN_MILVUS_*` variables;
//! - [`expr`]: filters as Milvus boolean expressions, every string escaped;
//! - [`collection`]: the collection sen writes (schema, index, identity properties)
//!   and the calls on it;
//! - [`replicate`]: store-and-forward replication from a store's change sequence.

pub mod collection;
pub mod expr;
pub mod replicate;
pub mod testing;

pub use collection::{BoxHit, Collection, Encoder, IndexSpec, SearchFilter};
pub use replicate::{Replication, Status};

use std::path::PathBuf;
use std::time::Duration;

/// The URI scheme of a Milvus target (plain gRPC), and its TLS variant.
pub const SCHEME: &str = "milvus://";
pub const SCHEME_TLS: &str = "milvus+tls://";

#[derive(Debug, thiserror::Error)]
pub enum MilvusError {
    /// A bad URI, setting or flag (names it and says what would fix it).
    #[error("{0}")]
    Input(String),
    /// The server could not be reached, or a call failed (names the endpoint).
    #[error("{target}: {what}: {error}")]
    Call {
        target: String,
        what: String,
        kind: CallKind,
        error: String,
    },
    /// The collection was made for another encoder, dimension or schema.
    #[error("{0}")]
    Mismatch(String),
    /// The server rejected a filter expression.
    #[error("{target}: the filter expression `{expr}` was rejected: {error}")]
    Expr {
        target: String,
        expr: String,
        error: String,
    },
    #[error(transparent)]
    Store(#[from] sen_store::StoreError),
}

/// What a failed Milvus call met, read from the SDK's error type and the server's
/// status codes (Milvus's `merr` codes and the legacy `ErrorCode`s, which milvus-lite
/// sets too), never from message text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// No connection (transport failure, or no answer in time).
    Unreachable,
    /// The server holds the collection released (code 101): load it and retry.
    NotLoaded,
    /// The server refused an argument (legacy IllegalArgument 6, merr
    /// ParameterInvalid 1100 / ParameterMissing 1101): with a filter, its expression.
    BadArgument,
    /// Any other server status code.
    Server(i32),
    /// What the SDK refused or could not read (conversion, validation, a malformed
    /// response).
    Client,
}

impl CallKind {
    /// The kind of an SDK error.
    pub fn of(e: &milvus::v2::error::Error) -> CallKind {
        use milvus::v2::error::Error as E;
        match e {
            E::Server(s) => match (s.code(), s.legacy_code()) {
                (101, _) | (_, 101) => CallKind::NotLoaded,
                (6 | 1100 | 1101, _) | (_, 6) => CallKind::BadArgument,
                (c, _) => CallKind::Server(c),
            },
            E::Grpc(_) | E::Timeout(_) | E::Cancelled(_) | E::RetryExhausted { .. } => {
                CallKind::Unreachable
            }
            _ => CallKind::Client,
        }
    }
}

/// A Milvus collection to write to or search: `milvus://HOST:PORT/COLLECTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub collection: String,
    pub tls: bool,
}

impl Target {
    /// Whether a string names a Milvus target rather than a store directory.
    pub fn is_uri(s: &str) -> bool {
        s.starts_with(SCHEME) || s.starts_with(SCHEME_TLS)
    }

    /// Parse `milvus://HOST:PORT/COLLECTION` (or `milvus+tls://...`).
    pub fn parse(s: &str) -> Result<Target, MilvusError> {
        let bad = |why: &str| {
            MilvusError::Input(format!(
                "{s:?}: {why}; write milvus://HOST:PORT/COLLECTION (milvus+tls:// for TLS)"
            ))
        };
        let (tls, rest) = if let Some(r) = s.strip_prefix(SCHEME_TLS) {
            (true, r)
        } else if let Some(r) = s.strip_prefix(SCHEME) {
            (false, r)
        } else {
            return Err(bad("not a Milvus URI"));
        };
        let (authority, collection) = rest
            .split_once('/')
            .ok_or_else(|| bad("no collection name"))?;
        if authority.contains('@') {
            return Err(MilvusError::Input(format!(
                "{s:?}: credentials do not go in the URI (it is logged); set SEN_MILVUS_TOKEN_FILE, or SEN_MILVUS_USER with SEN_MILVUS_PASSWORD_FILE"
            )));
        }
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, p) = r.split_once("]:").ok_or_else(|| bad("no port"))?;
            (format!("[{h}]"), p)
        } else {
            let (h, p) = authority.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            (h.to_string(), p)
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad("no host"));
        }
        let port: u16 = port
            .parse()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| bad(&format!("port {port:?} is not 1-65535")))?;
        check_collection_name(collection).map_err(|why| bad(&why))?;
        Ok(Target {
            host,
            port,
            collection: collection.to_string(),
            tls,
        })
    }

    /// The gRPC endpoint the SDK connects to.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { SCHEME_TLS } else { SCHEME };
        write!(f, "{scheme}{}:{}/{}", self.host, self.port, self.collection)
    }
}

/// Milvus's rule for collection names: a letter or `_` first, then letters, digits
/// and `_`, at most 255.
fn check_collection_name(c: &str) -> Result<(), String> {
    let ok = !c.is_empty()
        && c.len() <= 255
        && c.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
        && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "collection name {c:?} must start with a letter or _ and hold only letters, digits and _ (at most 255)"
        ))
    }
}

/// Secret material, never printed (Debug says it is there, not what it is).
#[derive(Clone, PartialEq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// How to connect: from `SEN_MILVUS_*` environment variables, never from flags (a
/// command line is visible to every user of the machine, and logged).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// An API key or `user:password` token (`SEN_MILVUS_TOKEN`, or the first line of
    /// the file `SEN_MILVUS_TOKEN_FILE`).
    pub token: Option<Secret>,
    /// `SEN_MILVUS_USER` with `SEN_MILVUS_PASSWORD` or `SEN_MILVUS_PASSWORD_FILE`.
    pub user: Option<(String, Secret)>,
    /// A PEM CA certificate to verify the server with (`SEN_MILVUS_CA_CERT`).
    pub ca_cert: Option<PathBuf>,
    /// The name the server's certificate carries, when not the host (`SEN_MILVUS_TLS_SERVER_NAME`).
    pub tls_server_name: Option<String>,
    /// `SEN_MILVUS_DATABASE` (default: the server's default database).
    pub database: Option<String>,
    /// `SEN_MILVUS_CONNECT_TIMEOUT` seconds (default 10).
    pub connect_timeout: Duration,
    /// `SEN_MILVUS_TIMEOUT` seconds per call (default 30).
    pub rpc_timeout: Duration,
    /// `SEN_MILVUS_RETRIES`: attempts per call, with exponential backoff (default 3).
    pub attempts: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token: None,
            user: None,
            ca_cert: None,
            tls_server_name: None,
            database: None,
            connect_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(30),
            attempts: 3,
        }
    }
}

impl Settings {
    /// Read the settings from the process environment.
    pub fn from_env() -> Result<Settings, MilvusError> {
        Settings::from_vars(|k| std::env::var(k).ok())
    }

    /// Read the settings through `var` (the environment, or a test's map).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, MilvusError> {
        let get = |k: &str| var(k).filter(|v| !v.is_empty());
        let secret = |value: &str, file: &str| -> Result<Option<Secret>, MilvusError> {
            match (get(value), get(file)) {
                (Some(_), Some(_)) => Err(MilvusError::Input(format!(
                    "both {value} and {file} are set; keep one"
                ))),
                (Some(v), None) => Ok(Some(Secret(v))),
                (None, Some(f)) => {
                    let text = std::fs::read_to_string(&f).map_err(|e| {
                        MilvusError::Input(format!("{file}={f}: cannot read it: {e}"))
                    })?;
                    let line = text.lines().next().unwrap_or("").trim().to_string();
                    if line.is_empty() {
                        return Err(MilvusError::Input(format!(
                            "{file}={f}: the file is empty; its first line is the secret"
                        )));
                    }
                    Ok(Some(Secret(line)))
                }
                (None, None) => Ok(None),
            }
        };
        let secs = |k: &str, default: u64| -> Result<Duration, MilvusError> {
            match get(k) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| MilvusError::Input(format!("{k}={v:?}: give seconds, above 0"))),
            }
        };
        let token = secret("SEN_MILVUS_TOKEN", "SEN_MILVUS_TOKEN_FILE")?;
        let password = secret("SEN_MILVUS_PASSWORD", "SEN_MILVUS_PASSWORD_FILE")?;
        let user = match (get("SEN_MILVUS_USER"), password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(MilvusError::Input(
                    "SEN_MILVUS_USER is set without SEN_MILVUS_PASSWORD_FILE (or SEN_MILVUS_PASSWORD)"
                        .into(),
                ));
            }
            (None, Some(_)) => {
                return Err(MilvusError::Input(
                    "a Milvus password is set without SEN_MILVUS_USER".into(),
                ));
            }
        };
        if token.is_some() && user.is_some() {
            return Err(MilvusError::Input(
                "both a Milvus token and SEN_MILVUS_USER are set; keep one".into(),
            ));
        }
        let ca_cert = get("SEN_MILVUS_CA_CERT").map(PathBuf::from);
        if let Some(p) = &ca_cert
            && !p.is_file()
        {
            return Err(MilvusError::Input(format!(
                "SEN_MILVUS_CA_CERT={}: no such file",
                p.display()
            )));
        }
        let attempts = match get("SEN_MILVUS_RETRIES") {
            None => 3,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=100).contains(n))
                .ok_or_else(|| {
                    MilvusError::Input(format!("SEN_MILVUS_RETRIES={v:?}: give 1 to 100 attempts"))
                })?,
        };
        Ok(Settings {
            token,
            user,
            ca_cert,
            tls_server_name: get("SEN_MILVUS_TLS_SERVER_NAME"),
            database: get("SEN_MILVUS_DATABASE"),
            connect_timeout: secs("SEN_MILVUS_CONNECT_TIMEOUT", 10)?,
            rpc_timeout: secs("SEN_MILVUS_TIMEOUT", 30)?,
            attempts,
        })
    }
}

/// This machine's host name (the default box name).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "box".into())
}

/// A box name: 1-128 bytes, no control characters.
pub fn check_box_name(b: &str) -> Result<(), MilvusError> {
    if b.is_empty() || b.len() > 128 || b.chars().any(char::is_control) {
        return Err(MilvusError::Input(format!(
            "box name {b:?}: give 1-128 bytes without control characters (--box-name)"
        )));
    }
    Ok(())
}

/// The SPEC §11 result object of a query through a replicated collection: each
/// result also names its `box`.
pub fn boxed_result_json(
    query: Option<&str>,
    like: Option<u64>,
    took_ms: f64,
    hits: &[BoxHit],
) -> serde_json::Value {
    sen_store::results::results_object(
        query,
        like,
        took_ms,
        hits.iter().map(|h| (&h.found, Some(h.box_name.as_str()))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_and_print_back() {
        let t = Target::parse("milvus://127.0.0.1:19530/sen_gallery").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.collection.as_str(), t.tls),
            ("127.0.0.1", 19530, "sen_gallery", false)
        );
        assert_eq!(t.endpoint(), "http://127.0.0.1:19530");
        assert_eq!(t.to_string(), "milvus://127.0.0.1:19530/sen_gallery");
        let t = Target::parse("milvus+tls://[::1]:443/_c2").unwrap();
        assert_eq!(t.endpoint(), "https://[::1]:443");
        assert!(Target::is_uri("milvus://x:1/c") && !Target::is_uri("/var/lib/sen"));
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        for (uri, says) in [
            ("milvus://host/c", "no port"),
            ("milvus://host:0/c", "port \"0\""),
            ("milvus://host:19530", "no collection"),
            ("milvus://host:19530/1abc", "must start with a letter"),
            ("milvus://host:19530/a-b", "must start with a letter"),
            (
                "milvus://root:pw@host:19530/c",
                "credentials do not go in the URI",
            ),
            ("http://host:19530/c", "not a Milvus URI"),
        ] {
            let e = Target::parse(uri).unwrap_err().to_string();
            assert!(e.contains(says), "{uri}: {e}");
        }
    }

    #[test]
    fn settings_come_from_files_or_the_environment_and_are_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "root:s3cret\n").unwrap();
        let fp = f.display().to_string();
        let vars = |pairs: Vec<(&'static str, String)>| {
            move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let s = Settings::from_vars(vars(vec![("SEN_MILVUS_TOKEN_FILE", fp.clone())])).unwrap();
        assert_eq!(s.token, Some(Secret("root:s3cret".into())));
        assert!(!format!("{s:?}").contains("s3cret"));
        let s = Settings::from_vars(vars(vec![
            ("SEN_MILVUS_USER", "reader".into()),
            ("SEN_MILVUS_PASSWORD_FILE", fp.clone()),
            ("SEN_MILVUS_TIMEOUT", "2.5".into()),
            ("SEN_MILVUS_RETRIES", "5".into()),
        ]))
        .unwrap();
        assert_eq!(s.rpc_timeout, Duration::from_millis(2500));
        assert_eq!(s.attempts, 5);
        assert!(!format!("{s:?}").contains("s3cret"));
        for (pairs, says) in [
            (
                vec![
                    ("SEN_MILVUS_TOKEN", "a".to_string()),
                    ("SEN_MILVUS_TOKEN_FILE", fp.clone()),
                ],
                "keep one",
            ),
            (
                vec![("SEN_MILVUS_USER", "u".to_string())],
                "without SEN_MILVUS_PASSWORD_FILE",
            ),
            (
                vec![("SEN_MILVUS_TOKEN_FILE", "/nonexistent/t".to_string())],
                "cannot read it",
            ),
            (
                vec![("SEN_MILVUS_TIMEOUT", "0".to_string())],
                "SEN_MILVUS_TIMEOUT=\"0\"",
            ),
            (
                vec![("SEN_MILVUS_RETRIES", "x".to_string())],
                "SEN_MILVUS_RETRIES",
            ),
            (
                vec![("SEN_MILVUS_CA_CERT", "/nonexistent/ca.pem".to_string())],
                "no such file",
            ),
        ] {
            let e = Settings::from_vars(vars(pairs)).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn box_names_are_checked() {
        assert!(check_box_name("entrance-2").is_ok());
        assert!(check_box_name("").is_err());
        assert!(check_box_name("a\nb").is_err());
        assert!(check_box_name(&"x".repeat(129)).is_err());
    }
}
