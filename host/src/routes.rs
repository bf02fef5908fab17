//! Reading a routes file. The file is YAML (JSON is valid YAML); the policy is
//! configured with the same document as JSON text. The host does not interpret the
//! routes: a custom policy may define its own document shape.

use std::path::{Path, PathBuf};

/// Largest routes file accepted, in bytes (4 MiB).
pub const MAX_ROUTES_BYTES: u64 = 4 << 20;

/// A routes document, read and converted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutesDocument {
    /// The document as compact JSON text.
    pub json: String,
    /// Hex SHA-256 of the file's bytes as read.
    pub sha256: String,
    /// Where it was read from.
    pub path: PathBuf,
}

/// Why a routes file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    /// The file could not be read.
    #[error("cannot read routes file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_ROUTES_BYTES`].
    #[error("routes file {path} is {size} bytes; the limit is {MAX_ROUTES_BYTES}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// The file is not valid YAML/JSON.
    #[error("routes file {path} is not valid YAML or JSON: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the location.
        message: String,
    },
}

impl RoutesDocument {
    /// Read and convert a routes file.
    pub fn load(path: &Path) -> Result<Self, RoutesError> {
        let read_error = |source| RoutesError::Read {
            path: path.to_owned(),
            source,
        };
        let size = std::fs::metadata(path).map_err(read_error)?.len();
        if size > MAX_ROUTES_BYTES {
            return Err(RoutesError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let bytes = std::fs::read(path).map_err(read_error)?;
        Self::from_bytes(&bytes, path)
    }

    /// Convert bytes already read; `path` is only used in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, RoutesError> {
        let parse_error = |message: String| RoutesError::Parse {
            path: path.to_owned(),
            message,
        };
        let text =
            std::str::from_utf8(bytes).map_err(|e| parse_error(format!("not UTF-8 text ({e})")))?;
        if text.trim().is_empty() {
            return Err(parse_error("the file is empty".into()));
        }
        let value: serde_json::Value =
            serde_saphyr::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        Ok(Self {
            json: value.to_string(),
            sha256: crate::policy::sha256_hex(bytes),
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RoutesDocument, RoutesError> {
        RoutesDocument::from_bytes(text.as_bytes(), Path::new("routes.yaml"))
    }

    #[test]
    fn yaml_becomes_json() {
        let doc = parse("routes:\n  - host: api.github.com\n").unwrap();
        assert_eq!(doc.json, r#"{"routes":[{"host":"api.github.com"}]}"#);
        assert_eq!(doc.sha256.len(), 64);
    }

    #[test]
    fn json_is_accepted() {
        let doc = parse(r#"{"routes": [{"host": "x.example"}]}"#).unwrap();
        assert_eq!(doc.json, r#"{"routes":[{"host":"x.example"}]}"#);
    }

    #[test]
    fn bad_yaml_is_an_error_with_location() {
        let err = parse("routes: [\n  - host: x\n").unwrap_err().to_string();
        assert!(err.contains("routes.yaml"), "{err}");
    }

    #[test]
    fn empty_and_duplicate_keys_are_errors() {
        assert!(parse("  \n").is_err());
        assert!(parse("routes: []\nroutes: []\n").is_err());
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut doc = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..12 {
            let prev = if i == 0 {
                "a".to_owned()
            } else {
                format!("a{}", i - 1)
            };
            doc.push_str(&format!(
                "a{i}: &a{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            ));
        }
        assert!(parse(&doc).is_err());
    }
}
