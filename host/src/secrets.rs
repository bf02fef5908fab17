//! Where credential values come from. The policy only ever names a secret; the host
//! looks the name up here, and only for names the policy declared in `configure`.

use std::fmt;
use std::ops::Deref;

/// A secret's value. Its `Debug` never prints the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Vec<u8>);

impl SecretValue {
    /// Wrap raw bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl Deref for SecretValue {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValue(<{} bytes redacted>)", self.0.len())
    }
}

/// A source of secret values, looked up by name at request time.
pub trait SecretSource: Send + Sync + fmt::Debug {
    /// The value of `name`, or `None` if it is not set.
    fn get(&self, name: &str) -> Option<SecretValue>;
}

/// Secrets from the proxy's own environment: secret `GH_PAT` is `$GH_PAT`.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnvSecrets;

impl SecretSource for EnvSecrets {
    fn get(&self, name: &str) -> Option<SecretValue> {
        if !is_valid_name(name) {
            return None;
        }
        std::env::var_os(name).map(|v| SecretValue(v.into_encoded_bytes()))
    }
}

/// Longest secret file read; a larger file is treated as unset (the request is
/// denied "credential unavailable").
pub const MAX_SECRET_FILE: u64 = 64 * 1024;
/// How long a value read from a file is reused before the file is read again.
pub const DEFAULT_FILE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Secrets from a directory of files, one per name (`DIR/GH_PAT`), as a Kubernetes
/// Secret volume mounts them; names without a file fall back to the environment. One
/// trailing newline is dropped. Files are re-read at most every [`DEFAULT_FILE_TTL`],
/// so a rotated secret is used within a second, without a restart.
#[derive(Debug)]
pub struct FileSecrets {
    dir: std::path::PathBuf,
    ttl: std::time::Duration,
    cache: std::sync::Mutex<
        std::collections::HashMap<String, (std::time::Instant, Option<SecretValue>)>,
    >,
}

impl FileSecrets {
    /// Secrets from files in `dir`, then the environment.
    pub fn new(dir: impl Into<std::path::PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            ttl: DEFAULT_FILE_TTL,
            cache: Default::default(),
        }
    }

    /// Re-read files at most every `ttl` (zero: on every lookup).
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.ttl = ttl;
        self
    }

    fn read(&self, name: &str) -> Option<SecretValue> {
        use std::io::Read;
        let path = self.dir.join(name);
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return EnvSecrets.get(name),
            Err(err) => {
                tracing::warn!(path = %path.display(), %err, "cannot read secret file");
                return None;
            }
        };
        let mut bytes = Vec::new();
        if let Err(err) = file.take(MAX_SECRET_FILE + 1).read_to_end(&mut bytes) {
            tracing::warn!(path = %path.display(), %err, "cannot read secret file");
            return None;
        }
        if bytes.len() as u64 > MAX_SECRET_FILE {
            tracing::warn!(path = %path.display(), "secret file larger than 64 KiB; ignored");
            return None;
        }
        if bytes.ends_with(b"\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n") {
            bytes.truncate(bytes.len() - 1);
        }
        Some(SecretValue(bytes))
    }
}

impl SecretSource for FileSecrets {
    fn get(&self, name: &str) -> Option<SecretValue> {
        if !is_valid_name(name) {
            return None;
        }
        let now = std::time::Instant::now();
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((read_at, value)) = cache.get(name)
            && now.duration_since(*read_at) < self.ttl
        {
            return value.clone();
        }
        let value = self.read(name);
        cache.insert(name.to_owned(), (now, value.clone()));
        value
    }
}

/// A secret name: an environment-variable-style identifier, `[A-Za-z_][A-Za-z0-9_]*`,
/// at most 128 bytes.
pub fn is_valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && name.len() <= 128
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_valid_name("GH_PAT"));
        assert!(is_valid_name("_x1"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("1X"));
        assert!(!is_valid_name("A-B"));
        assert!(!is_valid_name("A=B"));
    }

    #[test]
    fn files_first_then_environment_and_rotation_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("GH_PAT"), "ghp_one\n").unwrap();
        let secrets = FileSecrets::new(dir.path()).with_ttl(std::time::Duration::ZERO);
        assert_eq!(&*secrets.get("GH_PAT").unwrap(), b"ghp_one");
        std::fs::write(dir.path().join("GH_PAT"), "ghp_two").unwrap();
        assert_eq!(&*secrets.get("GH_PAT").unwrap(), b"ghp_two");
        // No file: the environment (PATH is always set).
        assert!(secrets.get("PATH").is_some());
        assert!(secrets.get("EGRESS_PROXY_TEST_SURELY_UNSET").is_none());
        assert!(secrets.get("../etc/passwd").is_none());
        std::fs::write(dir.path().join("BIG"), vec![b'x'; 70_000]).unwrap();
        assert!(secrets.get("BIG").is_none());
        // Within the TTL the cached value is used.
        let cached = FileSecrets::new(dir.path());
        assert_eq!(&*cached.get("GH_PAT").unwrap(), b"ghp_two");
        std::fs::write(dir.path().join("GH_PAT"), "ghp_three").unwrap();
        assert_eq!(&*cached.get("GH_PAT").unwrap(), b"ghp_two");
    }

    #[test]
    fn debug_redacts() {
        let v = SecretValue::new(b"hunter2".to_vec());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
