//! The rustls side: which certificate a client is shown.
//!
//! The data plane intercepts a CONNECT like this:
//!
//! 1. the policy allows the CONNECT target (`host:port`);
//! 2. [`MintingResolver::server_config_for`]`(host)` gives the `ServerConfig` for that
//!    host (minted once, then cached): it offers ALPN `h2` and `http/1.1`, and its
//!    certificate resolver presents the leaf for the CONNECT host only if the
//!    ClientHello's SNI agrees ([`sni_matches`]). A ClientHello whose SNI names another
//!    host gets no certificate, so rustls aborts the handshake before any request is
//!    read. An absent SNI is accepted: clients send none for IP targets (and rustls
//!    ignores an IP-literal SNI), and the certificate is for the CONNECT host anyway;
//! 3. after the handshake the data plane still checks each inner request's
//!    `Host`/`:authority` against the CONNECT target (not done here).
//!
//! [`MintingResolver`] is also a `ResolvesServerCert` that mints by SNI, for a listener
//! with no CONNECT target to go by ([`MintingResolver::sni_server_config`]).

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{CertificateAuthority, DEFAULT_LEAF_CACHE_CAPACITY, LeafCache, LeafHost, TlsError};

/// ALPN protocols offered to intercepted clients, in order of preference.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Whether a ClientHello's SNI agrees with the CONNECT target. Both are normalised
/// (case, trailing dot, IPv6 brackets). `None` (no SNI) agrees with any target; an SNI
/// that is not a valid host name never agrees.
pub fn sni_matches(sni: Option<&str>, connect_host: &str) -> bool {
    match LeafHost::parse(connect_host) {
        Ok(host) => sni_names(sni, &host),
        Err(_) => false,
    }
}

fn sni_names(sni: Option<&str>, host: &LeafHost) -> bool {
    match sni {
        None => true,
        Some(sni) => LeafHost::parse(sni).is_ok_and(|sni| sni == *host),
    }
}

/// Mints leaves on demand and hands out the rustls configuration that presents them.
/// `Send + Sync`: share one per proxy behind an `Arc`.
#[derive(Debug)]
pub struct MintingResolver {
    cache: LeafCache,
}

impl MintingResolver {
    /// A resolver whose cache keeps [`DEFAULT_LEAF_CACHE_CAPACITY`] hosts.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self::with_capacity(ca, DEFAULT_LEAF_CACHE_CAPACITY)
    }

    /// A resolver whose cache keeps at most `capacity` hosts.
    pub fn with_capacity(ca: Arc<CertificateAuthority>, capacity: usize) -> Self {
        Self {
            cache: LeafCache::new(ca, capacity),
        }
    }

    /// The server configuration for intercepting a CONNECT to `host`: the leaf for
    /// `host`, ALPN `h2` + `http/1.1`, and a ClientHello with another SNI refused.
    /// The same `Arc` is returned for a host while it stays cached.
    pub fn server_config_for(&self, host: &str) -> Result<Arc<ServerConfig>, TlsError> {
        Ok(self.cache.get(host)?.server_config().clone())
    }

    /// The certificate chain and key for `host`.
    pub fn certified_key_for(&self, host: &str) -> Result<Arc<CertifiedKey>, TlsError> {
        Ok(self.cache.get(host)?.certified_key().clone())
    }

    /// A server configuration that mints by SNI (a ClientHello without SNI is refused).
    pub fn sni_server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, TlsError> {
        build_config(self.cache.provider(), self.clone())
    }

    /// The leaf cache (for its counters).
    pub fn cache(&self) -> &LeafCache {
        &self.cache
    }
}

impl ResolvesServerCert for MintingResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name()?;
        match self.cache.get(sni) {
            Ok(leaf) => Some(leaf.certified_key().clone()),
            Err(err) => {
                tracing::debug!(%err, "no certificate for the requested SNI");
                None
            }
        }
    }
}

/// Presents one host's leaf, to ClientHellos whose SNI agrees with that host.
#[derive(Debug)]
struct TargetResolver {
    host: LeafHost,
    certified_key: Arc<CertifiedKey>,
}

impl ResolvesServerCert for TargetResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        if sni_names(sni, &self.host) {
            Some(self.certified_key.clone())
        } else {
            tracing::debug!(sni, connect = %self.host, "TLS SNI disagrees with the CONNECT target");
            None
        }
    }
}

/// The server configuration presenting `certified_key` for a CONNECT to `host`.
pub(crate) fn target_server_config(
    host: &LeafHost,
    certified_key: Arc<CertifiedKey>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let resolver = TargetResolver {
        host: host.clone(),
        certified_key,
    };
    build_config(provider, Arc::new(resolver))
}

fn build_config(
    provider: &Arc<CryptoProvider>,
    resolver: Arc<dyn ResolvesServerCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sni_agreement_is_normalised() {
        assert!(sni_matches(Some("api.example.com"), "api.example.com"));
        assert!(sni_matches(Some("API.Example.com."), "api.example.COM"));
        assert!(sni_matches(Some("[::1]"), "::1"));
        assert!(sni_matches(None, "api.example.com"));
        assert!(sni_matches(None, "127.0.0.1"));
        assert!(!sni_matches(Some("evil.example.com"), "api.example.com"));
        assert!(!sni_matches(
            Some("api.example.com.evil"),
            "api.example.com"
        ));
        assert!(!sni_matches(Some("sub.api.example.com"), "api.example.com"));
        assert!(!sni_matches(Some("*.example.com"), "api.example.com"));
        assert!(!sni_matches(Some(""), "api.example.com"));
        assert!(!sni_matches(None, "not a host"));
        assert!(!sni_matches(Some("a.example"), "a..example"));
    }

    #[test]
    fn configs_offer_h2_then_http1_and_are_cached_per_host() {
        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        let resolver = MintingResolver::with_capacity(ca, 4);
        let config = resolver.server_config_for("api.example.com").unwrap();
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        let again = resolver.server_config_for("API.example.com.").unwrap();
        assert!(Arc::ptr_eq(&config, &again));
        let key = resolver.certified_key_for("api.example.com").unwrap();
        assert_eq!(key.cert.len(), 2);
        assert_eq!(resolver.cache().minted(), 1);
        assert!(resolver.server_config_for("bad host").is_err());
    }
}
