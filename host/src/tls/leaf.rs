//! Leaf certificates for the hosts an agent CONNECTs to.
//!
//! A leaf names exactly one host in its subjectAltName (a DNS name, or an IP address
//! for an IP target), has its own ECDSA P-256 key, EKU serverAuth, and is valid from
//! [`LEAF_BACKDATE`] before minting for [`LEAF_VALIDITY`] (never past the CA's own
//! expiry). Its chain is leaf + CA, so a client that trusts the CA can verify it.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;

use super::{CertificateAuthority, TlsError};

/// A leaf is valid from this long before it was minted, for clients whose clock is
/// behind the proxy's.
pub const LEAF_BACKDATE: Duration = Duration::from_secs(60 * 60);
/// How long a leaf is valid after it was minted: 30 days.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// A cached leaf is replaced by a fresh one when it has less than this left.
pub const LEAF_RENEW_BEFORE: Duration = Duration::from_secs(24 * 60 * 60);
/// Longest subject common name X.509 allows (`ub-common-name`); longer DNS names get
/// an empty subject (the SAN is what clients check).
const MAX_COMMON_NAME: usize = 64;

/// A host a leaf can be minted for, normalised: a DNS name (ASCII, lower-case, no
/// trailing dot) or an IP address. Display gives the normalised text (IPv6 without
/// brackets), which is also the cache key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LeafHost {
    /// A DNS name.
    Dns(String),
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
}

impl LeafHost {
    /// Normalise a host as it appears in a CONNECT target or an SNI: IP literals
    /// (IPv6 with or without brackets) become [`LeafHost::Ip`]; names are lower-cased
    /// and lose one trailing dot, and must be valid DNS names (no wildcards, no
    /// empty labels, labels of at most 63 characters, at most 253 in all).
    pub fn parse(host: &str) -> Result<Self, TlsError> {
        let invalid = |reason: String| TlsError::InvalidHost {
            host: host.into(),
            reason,
        };
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Self::Ip(ip));
        }
        let name = crate::target::normalize_host(host).map_err(invalid)?;
        match ServerName::try_from(name.as_str()) {
            Ok(ServerName::DnsName(_)) => Ok(Self::Dns(name)),
            Ok(ServerName::IpAddress(ip)) => Ok(Self::Ip(ip.into())),
            Ok(_) | Err(_) => Err(invalid("not a valid DNS name".into())),
        }
    }

    fn subject_alt_name(&self) -> Result<SanType, TlsError> {
        Ok(match self {
            Self::Dns(name) => {
                SanType::DnsName(name.as_str().try_into().map_err(TlsError::generate)?)
            }
            Self::Ip(ip) => SanType::IpAddress(*ip),
        })
    }
}

impl fmt::Display for LeafHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dns(name) => f.write_str(name),
            Self::Ip(ip) => ip.fmt(f),
        }
    }
}

/// Mint a leaf for `host`, signed by `ca`. The chain is leaf + CA certificate.
pub fn mint(ca: &CertificateAuthority, host: &LeafHost) -> Result<Arc<CertifiedKey>, TlsError> {
    let now = SystemTime::now();
    let not_before = now.checked_sub(LEAF_BACKDATE).unwrap_or(now);
    let not_after = (now + LEAF_VALIDITY).min(ca.not_after());

    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(TlsError::generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let name = host.to_string();
    if name.len() <= MAX_COMMON_NAME {
        params.distinguished_name.push(DnType::CommonName, name);
    }
    params.subject_alt_names = vec![host.subject_alt_name()?];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let cert = params
        .signed_by(&key, ca.issuer())
        .map_err(TlsError::generate)?;

    let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing_key =
        rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(TlsError::generate)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone(), ca.cert_der().clone()],
        signing_key,
    )))
}

/// A minted leaf, as the cache holds it: the certified key and the rustls server
/// configuration that presents it (built once, so TLS session resumption works across
/// connections to the same host).
#[derive(Debug)]
pub struct Leaf {
    host: LeafHost,
    certified_key: Arc<CertifiedKey>,
    server_config: Arc<ServerConfig>,
    renew_at: SystemTime,
}

impl Leaf {
    /// Mint a leaf for `host` and build its server configuration.
    pub(crate) fn new(
        ca: &CertificateAuthority,
        host: LeafHost,
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let certified_key = mint(ca, &host)?;
        let server_config =
            super::resolver::target_server_config(&host, certified_key.clone(), provider)?;
        Ok(Self {
            host,
            certified_key,
            server_config,
            renew_at: SystemTime::now() + (LEAF_VALIDITY - LEAF_RENEW_BEFORE),
        })
    }

    /// The host the leaf is for.
    pub fn host(&self) -> &LeafHost {
        &self.host
    }

    /// The leaf's certificate chain (leaf + CA) and key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// A server configuration that presents this leaf; see
    /// [`MintingResolver::server_config_for`](super::MintingResolver::server_config_for).
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server_config
    }

    /// Whether the leaf is close enough to expiry to be replaced.
    pub(crate) fn needs_renewal(&self, now: SystemTime) -> bool {
        now >= self.renew_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn parse(host: &str) -> Result<String, String> {
        LeafHost::parse(host)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(parse("API.Example.COM.").unwrap(), "api.example.com");
        assert_eq!(parse("127.0.0.1").unwrap(), "127.0.0.1");
        assert_eq!(parse("[::1]").unwrap(), "::1");
        assert_eq!(parse("::1").unwrap(), "::1");
        assert_eq!(parse("[2001:DB8::1]").unwrap(), "2001:db8::1");
        assert_eq!(
            LeafHost::parse("10.1.2.3").unwrap(),
            LeafHost::Ip("10.1.2.3".parse().unwrap())
        );
        assert!(matches!(
            LeafHost::parse("localhost").unwrap(),
            LeafHost::Dns(_)
        ));
    }

    #[test]
    fn invalid_hosts_are_errors() {
        let long_label = format!("{}.example.com", "a".repeat(64));
        let too_long = vec!["abcdefghi"; 30].join(".");
        for host in [
            "",
            ".",
            "*.example.com",
            "a..b",
            "exa mple.com",
            "bücher.example",
            "[::1",
            "[fe80::1%eth0]",
            "host:443",
            long_label.as_str(),
            too_long.as_str(),
        ] {
            let err = LeafHost::parse(host).unwrap_err();
            assert!(matches!(err, TlsError::InvalidHost { .. }), "{host}: {err}");
        }
    }

    /// Mint a leaf, check what every leaf must be, and return it with its SANs.
    fn mint_checked(ca: &CertificateAuthority, host: &str) -> (Arc<CertifiedKey>, Vec<String>) {
        let key = mint(ca, &LeafHost::parse(host).unwrap()).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        assert!(!x509.is_ca());
        assert_eq!(
            x509.issuer().to_string(),
            format!("CN={}", super::super::CA_COMMON_NAME)
        );
        let eku = x509.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        let validity = x509.validity();
        let lifetime = validity.not_after.timestamp() - validity.not_before.timestamp();
        let expected = (LEAF_BACKDATE + LEAF_VALIDITY).as_secs() as i64;
        assert!((lifetime - expected).abs() <= 2, "{lifetime} vs {expected}");
        let san = x509.subject_alternative_name().unwrap().unwrap().value;
        let sans = san
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::DNSName(dns) => format!("dns:{dns}"),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => format!("ip:{}", IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap())),
                    _ => format!("ip:{}", IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap())),
                },
                other => panic!("unexpected SAN {other:?}"),
            })
            .collect();
        (key, sans)
    }

    #[test]
    fn leaves_name_one_host_and_chain_to_the_ca() {
        let ca = CertificateAuthority::generate().unwrap();
        let (key, sans) = mint_checked(&ca, "API.example.com.");
        assert_eq!(sans, ["dns:api.example.com"]);
        assert_eq!(key.cert.len(), 2);
        assert_eq!(&key.cert[1], ca.cert_der());
        key.keys_match().unwrap();
        assert_eq!(mint_checked(&ca, "127.0.0.1").1, ["ip:127.0.0.1"]);
        assert_eq!(mint_checked(&ca, "[::1]").1, ["ip:::1"]);
    }

    #[test]
    fn leaves_never_outlive_the_ca() {
        let now = SystemTime::now();
        let ca = CertificateAuthority::generate_valid(
            now - Duration::from_secs(60),
            now + Duration::from_secs(3600),
        )
        .unwrap();
        let key = mint(&ca, &LeafHost::parse("example.com").unwrap()).unwrap();
        let (_, x509) = x509_parser::parse_x509_certificate(&key.cert[0]).unwrap();
        let ca_expiry = ca
            .not_after()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(x509.validity().not_after.timestamp(), ca_expiry);
    }

    #[test]
    fn renewal_is_due_a_day_before_expiry() {
        let ca = CertificateAuthority::generate().unwrap();
        let leaf = Leaf::new(
            &ca,
            LeafHost::parse("example.com").unwrap(),
            &super::super::crypto_provider(),
        )
        .unwrap();
        let now = SystemTime::now();
        assert!(!leaf.needs_renewal(now));
        assert!(!leaf.needs_renewal(now + LEAF_VALIDITY - LEAF_RENEW_BEFORE * 2));
        assert!(leaf.needs_renewal(now + LEAF_VALIDITY - LEAF_RENEW_BEFORE / 2));
    }
}
