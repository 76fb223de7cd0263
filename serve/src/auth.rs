//! API keys: a file of `SCOPE KEY` or `SCOPE sha256:HEX` lines (`#` comments; scopes
//! `read` and `write`, write including read). Only SHA-256 digests are kept; a request's
//! `Authorization: Bearer KEY` is hashed and compared with every known digest in
//! constant time.

use crate::error::ApiError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The shortest key accepted, in a keys file and in a request.
pub const MIN_KEY_CHARS: usize = 16;

/// The key of an `Authorization: Bearer KEY` header (the scheme in any case, as
/// RFC 9110 has it).
fn bearer(header: Option<&str>) -> Option<&str> {
    let (scheme, key) = header?.trim().split_once(' ')?;
    let key = key.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !key.is_empty()).then_some(key)
}

/// Who presented a key, for what is scoped per caller: the first 16 hex digits of
/// the key's SHA-256 (the key itself is never kept or logged).
pub fn caller_id(header: Option<&str>) -> String {
    match bearer(header) {
        Some(k) => hex::encode(&Sha256::digest(k.as_bytes())[..8]),
        None => "anonymous".into(),
    }
}

/// Warn about a keys file others may read (`--api-keys`): anyone who can read it can
/// read, add and delete.
pub fn check_key_file_mode(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o004 != 0
    {
        tracing::warn!(
            "--api-keys {}: the file is readable by every user of this machine (mode {:o}); \
             keep it private: chmod 600 {}",
            path.display(),
            m.permissions().mode() & 0o777,
            path.display()
        );
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// No key needed (`/healthz`, `/readyz`, `/metrics`, `/` unless `--auth-all`).
    Open,
    /// Search, images, embeddings, stats, cameras.
    Read,
    /// Everything read allows, plus ingest and delete.
    Write,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Open => "open",
            Scope::Read => "read",
            Scope::Write => "write",
        }
    }
}

/// The keys' digests with their scopes.
#[derive(Debug, Clone)]
pub struct Keys {
    keys: Vec<([u8; 32], Scope)>,
}

impl Keys {
    /// Parse a keys file; errors name the file and line.
    pub fn parse(text: &str, origin: &str) -> Result<Keys, String> {
        let mut keys = vec![];
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{origin} line {}", n + 1);
            let mut parts = line.split_whitespace();
            let (Some(scope), Some(key), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(format!("{at}: expected `SCOPE KEY` or `SCOPE sha256:HEX`"));
            };
            let scope = match scope {
                "read" => Scope::Read,
                "write" => Scope::Write,
                s => return Err(format!("{at}: scope {s:?} is not read or write")),
            };
            let digest = match key.strip_prefix("sha256:") {
                Some(h) => {
                    let b = hex::decode(h)
                        .map_err(|_| format!("{at}: sha256:{h} is not 64 hex digits"))?;
                    b.try_into()
                        .map_err(|_| format!("{at}: a sha256 digest is 64 hex digits"))?
                }
                None => {
                    if key.len() < MIN_KEY_CHARS {
                        return Err(format!(
                            "{at}: a key of {} characters is too easy to guess; use at least {MIN_KEY_CHARS}",
                            key.len()
                        ));
                    }
                    Sha256::digest(key.as_bytes()).into()
                }
            };
            keys.push((digest, scope));
        }
        if keys.is_empty() {
            return Err(format!(
                "{origin}: no keys (lines `read KEY` or `write KEY`)"
            ));
        }
        Ok(Keys { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The scope of `key`, comparing its digest with every known one (no early exit).
    /// A key shorter than [`MIN_KEY_CHARS`] is nobody's, whatever its digest (a
    /// `sha256:` line may be the digest of a short key).
    fn scope_of(&self, key: &str) -> Option<Scope> {
        if key.len() < MIN_KEY_CHARS {
            return None;
        }
        let d: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for (k, s) in &self.keys {
            if bool::from(k.ct_eq(&d)) {
                found = found.max(Some(*s));
            }
        }
        found
    }

    /// The scope of an `Authorization` header's key, if it is a known one.
    pub fn scope(&self, header: Option<&str>) -> Option<Scope> {
        bearer(header).and_then(|k| self.scope_of(k))
    }

    /// Check an `Authorization` header value against the scope a route needs.
    pub fn check(&self, header: Option<&str>, need: Scope) -> Result<(), ApiError> {
        if need == Scope::Open {
            return Ok(());
        }
        let key = bearer(header).ok_or_else(|| {
            ApiError::Unauthenticated(
                "this server needs an API key: send `Authorization: Bearer KEY`".into(),
            )
        })?;
        match self.scope_of(key) {
            None => Err(ApiError::Unauthenticated("the API key is not known".into())),
            Some(s) if s < need => Err(ApiError::Forbidden(format!(
                "this key's scope is {}; the route needs {}",
                s.name(),
                need.name()
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_short_keys_are_nobodys() {
        let short = hex::encode(Sha256::digest(b"short"));
        let k = Keys::parse(
            &format!("read sha256:{short}\nread reader-key-0123456789\n"),
            "keys",
        )
        .unwrap();
        for h in [
            "bearer reader-key-0123456789",
            "BEARER  reader-key-0123456789 ",
        ] {
            assert!(k.check(Some(h), Scope::Read).is_ok(), "{h}");
        }
        assert_eq!(
            k.check(Some("Bearer short"), Scope::Read)
                .unwrap_err()
                .code(),
            "unauthenticated"
        );
        assert_eq!(k.scope(Some("Bearer short")), None);
        // Callers are told apart by a digest of their key, never the key.
        let a = caller_id(Some("Bearer reader-key-0123456789"));
        assert_eq!(a, caller_id(Some("bearer reader-key-0123456789")));
        assert_ne!(a, caller_id(Some("Bearer writer-key-0123456789")));
        assert!(!a.contains("reader") && a.len() == 16);
    }

    #[test]
    fn keys_parse_hash_and_check_scopes() {
        let hashed = hex::encode(Sha256::digest(b"reader-key-0123456789"));
        let text = format!("# comment\nwrite writer-key-0123456789\n\nread sha256:{hashed}\n");
        let k = Keys::parse(&text, "keys.txt").unwrap();
        assert_eq!(k.len(), 2);
        let bearer = |s: &str| format!("Bearer {s}");
        assert!(
            k.check(Some(&bearer("writer-key-0123456789")), Scope::Write)
                .is_ok()
        );
        assert!(
            k.check(Some(&bearer("writer-key-0123456789")), Scope::Read)
                .is_ok()
        );
        assert!(
            k.check(Some(&bearer("reader-key-0123456789")), Scope::Read)
                .is_ok()
        );
        assert_eq!(
            k.check(Some(&bearer("reader-key-0123456789")), Scope::Write)
                .unwrap_err()
                .code(),
            "forbidden"
        );
        for h in [
            None,
            Some("Bearer "),
            Some("Basic abc"),
            Some("Bearer nope-nope-nope-nope"),
        ] {
            assert_eq!(
                k.check(h, Scope::Read).unwrap_err().code(),
                "unauthenticated",
                "{h:?}"
            );
        }
        assert!(k.check(None, Scope::Open).is_ok());
    }

    #[test]
    fn bad_key_files_name_the_line() {
        for (text, want) in [
            ("admin key-0123456789abcdef", "line 1: scope \"admin\""),
            ("read", "line 1: expected"),
            ("read a b", "line 1: expected"),
            ("\nread sha256:zz", "line 2: sha256:zz"),
            ("read short", "too easy to guess"),
            ("# only a comment", "no keys"),
        ] {
            let e = Keys::parse(text, "k.txt").unwrap_err();
            assert!(e.contains("k.txt") && e.contains(want), "{text:?}: {e}");
        }
    }
}
