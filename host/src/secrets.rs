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
    fn debug_redacts() {
        let v = SecretValue::new(b"hunter2".to_vec());
        assert!(!format!("{v:?}").contains("hunter2"));
    }
}
