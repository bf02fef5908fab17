//! Where a request is going: a URL or a CONNECT authority turned into the normalised
//! scheme, host, port and path the policy decides on.
//!
//! Host normalisation: ASCII only (internationalised names must be sent as punycode),
//! lower-cased, one trailing dot removed, IPv6 literals without brackets. The path is
//! passed as sent; the policy normalises it for matching.

use std::net::Ipv6Addr;

use crate::policy::Scheme;

/// The destination of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Normalised host.
    pub host: String,
    /// Port, defaulted from the scheme.
    pub port: u16,
    /// Path and query as sent (`/` if the URL had none); empty for CONNECT.
    pub path: String,
}

/// Why a URL or authority was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a URL at all.
    #[error("`{0}` is not a valid URL: {1}")]
    Invalid(String, String),
    /// A scheme other than http/https.
    #[error("`{0}`: only http:// and https:// URLs can be proxied")]
    Scheme(String),
    /// No host, or a host that cannot be normalised.
    #[error("`{0}`: {1}")]
    Host(String, String),
}

impl Target {
    /// An absolute `http://` or `https://` URL.
    pub fn from_url(url: &str) -> Result<Self, TargetError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| TargetError::Invalid(url.into(), e.to_string()))?;
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            _ => return Err(TargetError::Scheme(url.into())),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| TargetError::Host(url.into(), "no host".into()))?;
        if authority.as_str().contains('@') {
            return Err(TargetError::Host(
                url.into(),
                "user information in URLs is not allowed".into(),
            ));
        }
        let host =
            normalize_host(authority.host()).map_err(|e| TargetError::Host(url.into(), e))?;
        let port = authority.port_u16().unwrap_or(scheme.default_port());
        let path = uri
            .path_and_query()
            .map(|pq| pq.as_str())
            .filter(|pq| !pq.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Self {
            scheme,
            host,
            port,
            path,
        })
    }

    /// A CONNECT target, `host:port` (the port is required, as in RFC 9110).
    pub fn from_authority(authority: &str) -> Result<Self, TargetError> {
        let parsed: http::uri::Authority =
            authority.parse().map_err(|e: http::uri::InvalidUri| {
                TargetError::Invalid(authority.into(), e.to_string())
            })?;
        if parsed.as_str().contains('@') {
            return Err(TargetError::Host(
                authority.into(),
                "user information is not allowed".into(),
            ));
        }
        let port = parsed.port_u16().ok_or_else(|| {
            TargetError::Host(authority.into(), "a CONNECT target needs a port".into())
        })?;
        let host =
            normalize_host(parsed.host()).map_err(|e| TargetError::Host(authority.into(), e))?;
        Ok(Self {
            scheme: Scheme::Https,
            host,
            port,
            path: String::new(),
        })
    }
}

impl Target {
    /// Whether `authority` (a `Host` header or URI authority, `host[:port]`) names
    /// this target's host and port, after normalisation (case, trailing dot, IPv6
    /// brackets, the scheme's default port).
    pub fn same_authority(&self, authority: &str) -> bool {
        let Ok(parsed) = authority.parse::<http::uri::Authority>() else {
            return false;
        };
        if parsed.as_str().contains('@') {
            return false;
        }
        let port = parsed.port_u16().unwrap_or(self.scheme.default_port());
        normalize_host(parsed.host()).is_ok_and(|host| host == self.host) && port == self.port
    }
}

/// Normalise a host as it appears in a URL: ASCII, lower-case, no trailing dot, IPv6
/// without brackets (zone identifiers are refused).
pub fn normalize_host(host: &str) -> Result<String, String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| "unbalanced `[` in host".to_owned())?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("`{inner}` is not an IPv6 address"))?;
        return Ok(ip.to_string());
    }
    if !host.is_ascii() {
        return Err("hosts must be ASCII; send internationalised names as punycode".into());
    }
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() {
        return Err("empty host".into());
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!("`{host}` is not a valid host name"));
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_defaults() {
        let t = Target::from_url("https://API.GitHub.com./repos/acme?x=1").unwrap();
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!(t.host, "api.github.com");
        assert_eq!(t.port, 443);
        assert_eq!(t.path, "/repos/acme?x=1");
        let t = Target::from_url("http://example.com").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/"));
    }

    #[test]
    fn url_ipv6_and_port() {
        let t = Target::from_url("http://[::1]:8080/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
    }

    #[test]
    fn url_refusals() {
        assert!(matches!(
            Target::from_url("ftp://x/"),
            Err(TargetError::Scheme(_))
        ));
        assert!(Target::from_url("/relative").is_err());
        assert!(Target::from_url("http://user:pw@x.example/").is_err());
    }

    #[test]
    fn authority_agreement() {
        let t = Target::from_authority("api.example.com:443").unwrap();
        assert!(t.same_authority("api.example.com"));
        assert!(t.same_authority("API.Example.com.:443"));
        assert!(!t.same_authority("api.example.com:8443"));
        assert!(!t.same_authority("evil.example.com"));
        assert!(!t.same_authority("user@api.example.com"));
        assert!(!t.same_authority(""));
        let t = Target::from_authority("[::1]:8443").unwrap();
        assert!(t.same_authority("[::1]:8443"));
        assert!(!t.same_authority("[::1]"));
    }

    #[test]
    fn authority() {
        let t = Target::from_authority("Example.COM:443").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("example.com", 443, "")
        );
        assert!(Target::from_authority("example.com").is_err());
    }
}
