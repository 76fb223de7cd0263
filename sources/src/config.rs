//! What a source is told: the broker (`--mqtt`, `--mqtt-ca`), which product it reads
//! (Frigate or DeepStream) and how; credentials come from files or the environment,
//! never from the command line, and are never printed.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A credential: kept out of `Debug` output and logs.
#[derive(Clone, PartialEq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A secret from `NAME_FILE` (a file whose content, trimmed, is the value) or `NAME`;
/// None when neither is set.
pub fn secret_from_env(name: &str) -> Result<Option<Secret>> {
    let file_var = format!("{name}_FILE");
    if let Some(p) = std::env::var_os(&file_var) {
        let p = PathBuf::from(p);
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("{file_var}={}: cannot read the file", p.display()))?;
        let v = text.trim_end_matches(['\r', '\n']).to_string();
        if v.is_empty() {
            bail!("{file_var}={}: the file is empty", p.display());
        }
        return Ok(Some(Secret(v)));
    }
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(Some(Secret(v))),
        Ok(_) => bail!("{name} is set but empty"),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not valid UTF-8"),
    }
}

/// The broker connection.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// `mqtts://`: TLS, checked against `ca` (PEM) or the system's roots.
    pub tls: bool,
    pub ca: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Fixed across restarts: the broker keeps the session (and the QoS-1 messages
    /// sent while sen was away) under it.
    pub client_id: String,
    pub keep_alive: Duration,
}

impl MqttConfig {
    /// `mqtt://HOST[:PORT]` or `mqtts://HOST[:PORT]` (1883 and 8883 by default); user
    /// and password from `SEN_MQTT_USER` and `SEN_MQTT_PASSWORD` (or `_FILE`).
    pub fn parse(url: &str, ca: Option<&Path>, client_id: String) -> Result<MqttConfig> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else {
            bail!("--mqtt {url:?}: give mqtt://HOST:PORT or mqtts://HOST:PORT");
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('@') {
            bail!(
                "--mqtt: credentials do not go on the command line (other users can read it); \
                 set SEN_MQTT_USER and SEN_MQTT_PASSWORD (or SEN_MQTT_PASSWORD_FILE)"
            );
        }
        if rest.contains('/') {
            bail!("--mqtt {url:?}: no path after HOST:PORT (topics have their own flags)");
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p > 0)
                    .with_context(|| format!("--mqtt {url:?}: the port must be 1 to 65535"))?,
            ),
            _ => (rest.to_string(), if tls { 8883 } else { 1883 }),
        };
        if host.is_empty() {
            bail!("--mqtt {url:?}: no host");
        }
        if ca.is_some() && !tls {
            bail!("--mqtt-ca is for mqtts:// brokers; --mqtt {url:?} is plain mqtt://");
        }
        if let Some(ca) = ca {
            std::fs::metadata(ca).with_context(|| format!("--mqtt-ca {}", ca.display()))?;
        }
        let user = secret_from_env("SEN_MQTT_USER")?.map(|s| s.0);
        let password = secret_from_env("SEN_MQTT_PASSWORD")?;
        if password.is_some() && user.is_none() {
            bail!("SEN_MQTT_PASSWORD is set without SEN_MQTT_USER");
        }
        Ok(MqttConfig {
            host,
            port,
            tls,
            ca: ca.map(Path::to_path_buf),
            user,
            password,
            client_id,
            keep_alive: Duration::from_secs(30),
        })
    }

    /// The broker for messages: `mqtt://host:port`, no credentials.
    pub fn describe(&self) -> String {
        format!(
            "{}://{}:{}",
            if self.tls { "mqtts" } else { "mqtt" },
            self.host,
            self.port
        )
    }
}

/// How sen signs in to Frigate's API.
#[derive(Debug, Clone, PartialEq)]
pub enum FrigateAuth {
    /// The unauthenticated port (5000).
    None,
    /// A JWT, sent as `Authorization: Bearer` (`SEN_FRIGATE_TOKEN`).
    Token(Secret),
    /// `POST /api/login`, again whenever the API answers 401 (`SEN_FRIGATE_USER`,
    /// `SEN_FRIGATE_PASSWORD`).
    Login { user: String, password: Secret },
}

impl FrigateAuth {
    pub fn from_env() -> Result<FrigateAuth> {
        let token = secret_from_env("SEN_FRIGATE_TOKEN")?;
        let user = secret_from_env("SEN_FRIGATE_USER")?;
        let password = secret_from_env("SEN_FRIGATE_PASSWORD")?;
        match (token, user, password) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => bail!(
                "give either SEN_FRIGATE_TOKEN or SEN_FRIGATE_USER and SEN_FRIGATE_PASSWORD, not both"
            ),
            (Some(t), None, None) => Ok(FrigateAuth::Token(t)),
            (None, Some(u), Some(p)) => Ok(FrigateAuth::Login {
                user: u.0,
                password: p,
            }),
            (None, Some(_), None) => bail!("SEN_FRIGATE_USER is set without SEN_FRIGATE_PASSWORD"),
            (None, None, Some(_)) => bail!("SEN_FRIGATE_PASSWORD is set without SEN_FRIGATE_USER"),
            (None, None, None) => Ok(FrigateAuth::None),
        }
    }
}

/// `--source frigate`.
#[derive(Debug, Clone)]
pub struct FrigateConfig {
    /// `--frigate-api`, without a trailing slash.
    pub api: String,
    /// Labels ingested (`--frigate-labels`, default `person`).
    pub labels: Vec<String>,
    /// Cameras ingested (`--frigate-cameras`; None: all).
    pub cameras: Option<Vec<String>>,
    /// `--frigate-topic-prefix` (default `frigate`).
    pub prefix: String,
    /// A backfill asks for events that started this long before the cursor (an event
    /// that ended after the cursor may have started before it).
    pub backfill_window: Duration,
    pub auth: FrigateAuth,
}

/// `--source deepstream`.
#[derive(Debug, Clone)]
pub struct DeepStreamConfig {
    /// `--deepstream-topic`.
    pub topic: String,
    /// Object classes ingested (`--deepstream-labels`, default `person`), compared
    /// without case.
    pub labels: Vec<String>,
    /// `--crops-dir`: where `crop_file` names are read (confined there).
    pub crops_dir: Option<PathBuf>,
    /// `--crops-dir-delete`: remove a crop file once its row is durable.
    pub delete: bool,
}

#[derive(Debug, Clone)]
pub enum Kind {
    Frigate(FrigateConfig),
    DeepStream(DeepStreamConfig),
}

impl Kind {
    /// The `source` of the rows it adds.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Frigate(_) => "frigate",
            Kind::DeepStream(_) => "deepstream",
        }
    }
}

/// Everything a running source needs.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub kind: Kind,
    pub mqtt: MqttConfig,
    /// Inbox entries processed at once.
    pub concurrency: usize,
    /// One Frigate request's limit.
    pub fetch_timeout: Duration,
    /// An entry that still fails this long after it arrived is skipped
    /// (`fetch_failed`), its reason recorded.
    pub give_up: Duration,
    /// Largest message payload (SPEC §11's body limit); larger ones are counted and
    /// dropped.
    pub max_payload: usize,
}

/// A client id that stays the same across restarts of this box's service and differs
/// between boxes: the host name and the store's directory, hashed.
pub fn default_client_id(source: &str, store_dir: &Path) -> String {
    use sha2::Digest;
    let dir = std::fs::canonicalize(store_dir).unwrap_or_else(|_| store_dir.to_path_buf());
    let mut h = sha2::Sha256::new();
    h.update(hostname().as_bytes());
    h.update([0]);
    h.update(dir.as_os_str().as_encoded_bytes());
    format!("sen-{source}-{}", &hex::encode(h.finalize())[..8])
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let c = MqttConfig::parse("mqtt://10.0.0.2:1884", None, "x".into()).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls), ("10.0.0.2", 1884, false));
        let c = MqttConfig::parse("mqtts://broker.lan", None, "x".into()).unwrap();
        assert_eq!((c.host.as_str(), c.port, c.tls), ("broker.lan", 8883, true));
        let c = MqttConfig::parse("mqtt://[::1]:1883", None, "x".into()).unwrap();
        assert_eq!((c.host.as_str(), c.port), ("::1", 1883));
        for (bad, says) in [
            ("http://h:1883", "mqtt://HOST:PORT"),
            ("mqtt://u:p@h:1883", "SEN_MQTT_USER"),
            ("mqtt://h:0", "port"),
            ("mqtt://h:99999", "port"),
            ("mqtt://:1883", "no host"),
            ("mqtt://h:1883/t", "no path"),
        ] {
            let e = MqttConfig::parse(bad, None, "x".into())
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = MqttConfig::parse("mqtt://h", Some(Path::new("/nonexistent")), "x".into())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mqtt-ca is for mqtts"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
        let a = FrigateAuth::Login {
            user: "u".into(),
            password: s,
        };
        assert!(!format!("{a:?}").contains("hunter2"));
    }

    #[test]
    fn client_ids_are_stable_and_distinct() {
        let d = tempfile::tempdir().unwrap();
        let a = default_client_id("frigate", d.path());
        assert_eq!(a, default_client_id("frigate", d.path()));
        assert_ne!(a, default_client_id("frigate", &d.path().join("other")));
        assert!(a.starts_with("sen-frigate-") && a.len() <= 23, "{a}");
    }
}
