//! TLS interception: the proxy's own certificate authority and the leaf certificates
//! it mints for the hosts an agent CONNECTs to.
//!
//! - [`ca`]: [`CertificateAuthority`]: generate a CA (ECDSA P-256, 10 years), save it
//!   as `ca.crt` + `ca.key` (mode 0600) and load it back, refusing files that are not
//!   a usable CA (file handling in `files`: create-new, mode 0600, atomic replace).
//! - [`leaf`]: [`LeafHost`] (a normalised DNS name or IP address) and [`mint`]: a
//!   30-day leaf for one host, signed by the CA, as a rustls `CertifiedKey` whose chain
//!   is leaf + CA.
//! - [`cache`]: [`LeafCache`]: a bounded LRU of minted leaves (with their server
//!   configs), shared across threads; concurrent requests for one host mint once.
//! - [`resolver`]: [`MintingResolver`]: the data plane's entry point.
//!   [`MintingResolver::server_config_for`] gives the rustls `ServerConfig` for a
//!   CONNECT target (ALPN `h2`, `http/1.1`), whose certificate resolver refuses a
//!   ClientHello whose SNI names another host ([`sni_matches`]).
//!
//! Only the `ring` crypto provider is used (never aws-lc-rs: its C build is too slow
//! for CI), and it is passed explicitly rather than installed process-wide.

pub mod ca;
pub mod cache;
mod files;
pub mod leaf;
pub mod resolver;

use std::path::PathBuf;
use std::sync::Arc;

pub use ca::{CA_CERT_FILE, CA_COMMON_NAME, CA_KEY_FILE, CA_VALIDITY, CertificateAuthority};
pub use cache::{DEFAULT_LEAF_CACHE_CAPACITY, LeafCache};
pub use leaf::{LEAF_BACKDATE, LEAF_RENEW_BEFORE, LEAF_VALIDITY, Leaf, LeafHost, mint};
pub use resolver::{ALPN_PROTOCOLS, MintingResolver, sni_matches};

/// Why a CA could not be created, saved or loaded, or a leaf could not be minted.
/// Display is a message an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A CA file does not exist.
    #[error("{} does not exist; create a CA with `egress-proxy ca create --dir DIR`", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `create` without overwrite found CA files already there.
    #[error(
        "{} already exists; refusing to overwrite it (use `--force` to replace the CA; agents that trust the old one must then be given the new certificate)",
        path.display()
    )]
    Exists {
        /// The first file found.
        path: PathBuf,
    },
    /// A file holds no PEM block of the expected kind.
    #[error("{} is not a PEM {expected}: {reason}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What it should hold, e.g. `CERTIFICATE`.
        expected: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The private key is PEM but not a key this proxy can sign with.
    #[error("{} is not a usable private key: {reason}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The certificate is PEM but not a parsable X.509 certificate.
    #[error("{} is not a valid X.509 certificate: {reason}", path.display())]
    BadCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("{} is not the private key of {}: the public keys differ", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// The certificate cannot issue certificates.
    #[error("{} is not a CA certificate: {reason}", path.display())]
    NotCa {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// The CA certificate has expired.
    #[error("the CA certificate {} expired at {not_after}; create a new CA", path.display())]
    Expired {
        /// The file.
        path: PathBuf,
        /// Its notAfter, as text.
        not_after: String,
    },
    /// Generating or signing a certificate failed.
    #[error("certificate generation failed: {0}")]
    Generate(String),
    /// A host name or address cannot have a certificate.
    #[error("cannot mint a certificate for `{host}`: {reason}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// Why.
        reason: String,
    },
    /// Minting a leaf failed (shared by every request that waited for that mint).
    #[error("minting a certificate for {host} failed: {reason}")]
    Mint {
        /// The normalised host.
        host: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration (a bug or an unusable crypto provider).
    #[error("TLS configuration: {0}")]
    Config(String),
}

impl TlsError {
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    fn generate(err: impl std::fmt::Display) -> Self {
        Self::Generate(err.to_string())
    }
}

/// The crypto provider every TLS object here is built with: rustls' `ring` provider.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
