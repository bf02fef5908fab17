//! Where a request is going: a URL or a CONNECT authority turned into the normalised
//! scheme, host, port and path the policy decides on.
//!
//! Both are normalised here, before the policy or the address guard sees them, and
//! the upstream is sent exactly what the policy saw.
//!
//! **Hosts**: ASCII only (internationalised names must be sent as punycode),
//! lower-cased, one trailing dot removed, no empty label. IP literals are parsed the
//! way browsers and `inet_aton` read them and rewritten in canonical form, so that
//! `2130706433`, `0x7f.1`, `0177.0.0.1` and `127.1` all become `127.0.0.1`: a host
//! whose last label is a number (decimal, `0x` hex, or octal with a leading `0`) is an
//! IPv4 address of one to four parts, or is refused. IPv6 literals lose their brackets
//! and are written canonically (`[0:0::1]` → `::1`); an IPv4-mapped IPv6 address
//! (`[::ffff:10.0.0.1]`) becomes the IPv4 address; zone identifiers (`[fe80::1%25eth0]`)
//! are refused.
//!
//! **Paths** ([`normalize_path`]): the query is kept as sent; the path is rewritten so
//! that the policy and the upstream read it the same way:
//!
//! 1. It must start with `/` (an absolute-form URL without a path gets `/`). A `#`
//!    fragment or a literal `\` is refused.
//! 2. Percent-escapes are decoded once if they encode an unreserved character
//!    (`A-Z a-z 0-9 - . _ ~`; so `%2E` becomes `.` and `%61` becomes `a`); every other
//!    escape stays encoded, in upper-case hex. `%00`, an escaped control character or
//!    an invalid escape (`%zz`, `%4`) is refused.
//! 3. Dot-segments are resolved (RFC 3986 `remove_dot_segments`: `.` is dropped, `..`
//!    removes the segment before it and stays at the root). A segment that is a
//!    dot-segment only up to a `;` (`..;x`, which Tomcat resolves) is refused.
//! 4. `%2F` and `%5C` stay encoded, but a path in which they sit next to a dot-segment
//!    (`/a/%2E%2E%2Fb`, `/a/..%2Fb`; servers that decode them would climb) is refused.
//! 5. A double-encoded `.`, `/` or `\` (`%252E`, `%252F`, `%255C`, any case) is refused:
//!    a server (or a framework behind it) that decodes twice reads `/a/%252e%252e/b` as
//!    `/a/../b`, a path the policy never saw.
//! 6. An empty segment (`//`, after the steps above) is refused: some servers collapse
//!    a run of slashes and some do not, so `//repos/acme/x` could be matched against an
//!    allowlist one way and served another.
//!
//! After this a path has no dot-segment in any reading, so no server can resolve it
//! out of the prefix the policy allowed.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// A path that cannot be normalised safely.
    #[error("path `{0}`: {1}")]
    Path(String, String),
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
            .unwrap_or("/");
        let path = normalize_path(path)
            .map_err(|e| TargetError::Path(path.into(), e))?
            .into_owned();
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
    /// This target with another path (a request inside a CONNECT tunnel), normalised.
    pub fn with_path(&self, path_and_query: &str) -> Result<Self, TargetError> {
        let path = normalize_path(path_and_query)
            .map_err(|e| TargetError::Path(path_and_query.into(), e))?
            .into_owned();
        Ok(Self {
            path,
            ..self.clone()
        })
    }

    /// The host as an IP address, when it is an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// Whether `authority` (a `Host` header or URI authority, `host[:port]`) names
    /// this target's host and port, after normalisation (case, trailing dot, IPv6
    /// brackets, the scheme's default port).
    pub fn same_authority(&self, authority: &str) -> bool {
        // The common case without parsing: exactly the normalised `host` or
        // `host:port` (not for IPv6, which an authority brackets).
        if !self.host.contains(':')
            && let Some(rest) = authority.strip_prefix(self.host.as_str())
        {
            if rest.is_empty() {
                return self.port == self.scheme.default_port();
            }
            if let Some(port) = rest.strip_prefix(':')
                && (1..=5).contains(&port.len())
                && port.bytes().all(|b| b.is_ascii_digit())
            {
                return port.parse::<u16>() == Ok(self.port);
            }
        }
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

/// Normalise a host as it appears in a URL (see the module docs): ASCII, lower-case,
/// no trailing dot, IP literals in canonical form, IPv6 without brackets.
pub fn normalize_host(host: &str) -> Result<String, String> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| "unbalanced `[` in host".to_owned())?;
        if inner.contains('%') {
            return Err("IPv6 zone identifiers are not allowed".into());
        }
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| format!("`{inner}` is not an IPv6 address"))?;
        return Ok(ip.to_canonical().to_string());
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
    let host = host.to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|label| label.is_empty()) {
        return Err(format!("`{host}` has an empty label"));
    }
    if labels.last().is_some_and(|last| ends_in_number(last)) {
        return parse_ipv4(&labels)
            .map(|ip| ip.to_string())
            .ok_or_else(|| format!("`{host}` ends in a number but is not an IPv4 address"));
    }
    Ok(host)
}

/// Whether a label is numeric the way an IPv4 part can be: decimal digits, or `0x`
/// followed by hex digits.
fn ends_in_number(label: &str) -> bool {
    if let Some(hex) = label.strip_prefix("0x") {
        return hex.bytes().all(|b| b.is_ascii_hexdigit());
    }
    label.bytes().all(|b| b.is_ascii_digit())
}

/// An IPv4 address of one to four parts, each decimal, `0x` hex or `0`-led octal; the
/// last part fills the remaining bytes (`127.1` is `127.0.0.1`, `2130706433` too).
fn parse_ipv4(parts: &[&str]) -> Option<Ipv4Addr> {
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let numbers: Vec<u64> = parts
        .iter()
        .map(|part| parse_ipv4_part(part))
        .collect::<Option<_>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (5 - numbers.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut address = *last;
    for (i, &n) in leading.iter().enumerate() {
        address |= n << (24 - 8 * i as u32);
    }
    u32::try_from(address).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        return Some(0);
    }
    if digits.len() > 12 {
        // Any value this long overflows an IPv4 address; don't overflow a u64.
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// Normalise a path and query as the module docs describe. Borrows `path_and_query`
/// when it is already normal (the common case).
pub fn normalize_path(path_and_query: &str) -> Result<Cow<'_, str>, String> {
    let (path, query) = match path_and_query.find('?') {
        Some(i) => path_and_query.split_at(i),
        None => (path_and_query, ""),
    };
    if path.contains('#') || query.contains('#') {
        return Err("a fragment (`#`) is never sent to a server".into());
    }
    if !path.starts_with('/') {
        return Err("the path must start with `/`".into());
    }
    if !path.contains(['%', '\\']) && !path.contains("/.") && !path.contains("//") {
        return Ok(Cow::Borrowed(path_and_query));
    }
    let decoded = decode_path(path)?;
    if double_encoded_separator(&decoded) {
        return Err(
            "a double-encoded `.`, `/` or `\\` (`%252E`, `%252F`, `%255C`) is ambiguous: servers that decode twice read a dot-segment or a separator".into(),
        );
    }
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    if decoded.contains("%2F") || decoded.contains("%5C") {
        let split = decoded.replace("%2F", "/").replace("%5C", "/");
        if split
            .split('/')
            .any(|segment| dot_segment(segment).is_some())
        {
            return Err("an encoded `/` or `\\` next to a dot-segment is ambiguous".into());
        }
    }
    let mut resolved: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, &segment) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match dot_segment(segment) {
            None => resolved.push(segment),
            Some(_) if segment.contains(';') => {
                return Err(format!(
                    "`{segment}` is a dot-segment with parameters, which servers resolve differently"
                ));
            }
            Some(dots) => {
                if dots == ".." {
                    resolved.pop();
                }
                if last {
                    resolved.push("");
                }
            }
        }
    }
    let mut normal = String::with_capacity(path_and_query.len());
    normal.push('/');
    normal.push_str(&resolved.join("/"));
    if normal.contains("//") {
        return Err(
            "an empty path segment (`//`) is ambiguous: some servers collapse a run of slashes and some do not; send single slashes".into(),
        );
    }
    normal.push_str(query);
    Ok(Cow::Owned(normal))
}

/// Whether a decoded path (escapes upper-cased) holds `%25` followed by `2E`, `2F` or
/// `5C` in either case: an escaped `%` that, decoded once more, makes `.`, `/` or `\`.
fn double_encoded_separator(decoded: &str) -> bool {
    decoded.match_indices("%25").any(|(i, _)| {
        decoded.get(i + 3..i + 5).is_some_and(|hex| {
            ["2E", "2F", "5C"]
                .iter()
                .any(|bad| hex.eq_ignore_ascii_case(bad))
        })
    })
}

/// `Some(".")` or `Some("..")` when the segment, up to any `;`, is a dot-segment.
fn dot_segment(segment: &str) -> Option<&'static str> {
    match segment.split(';').next() {
        Some(".") => Some("."),
        Some("..") => Some(".."),
        _ => None,
    }
}

/// Step 2: decode escaped unreserved characters, upper-case the other escapes.
fn decode_path(path: &str) -> Result<String, String> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err("a `\\` in the path is ambiguous; send `/` or `%5C`".into()),
            b'%' => {
                let value = bytes
                    .get(i + 1..i + 3)
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .filter(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                    .ok_or_else(|| "invalid percent-escape".to_owned())?;
                if value.is_ascii_control() {
                    return Err(format!("escaped control character %{value:02X}"));
                }
                if value.is_ascii_alphanumeric() || matches!(value, b'-' | b'.' | b'_' | b'~') {
                    out.push(char::from(value));
                } else {
                    out.push_str(&format!("%{value:02X}"));
                }
                i += 3;
            }
            b if b.is_ascii_control() => return Err("control character in the path".into()),
            _ => {
                let next = path[i..]
                    .find(|c: char| c == '%' || c == '\\' || c.is_ascii_control())
                    .map_or(path.len(), |offset| i + offset);
                out.push_str(&path[i..next]);
                i = next;
            }
        }
    }
    Ok(out)
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
        assert!(t.same_authority("api.example.com:0443"));
        assert!(!t.same_authority("api.example.com:443@evil.example"));
        assert!(!t.same_authority("api.example.com.evil.example"));
        assert!(!t.same_authority("api.example.com:99999"));
        let t = Target::from_authority("localhost:8443").unwrap();
        assert!(t.same_authority("localhost:8443"));
        assert!(t.same_authority("LOCALHOST:8443"));
        assert!(!t.same_authority("localhost"));
        assert!(!t.same_authority("localhost:443"));
        let t = Target::from_authority("[::1]:8443").unwrap();
        assert!(t.same_authority("[::1]:8443"));
        assert!(!t.same_authority("[::1]"));
        assert!(!t.same_authority("::1:8443"));
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

    #[test]
    fn ipv4_literals_in_every_encoding_are_canonical() {
        for host in [
            "127.0.0.1",
            "2130706433",
            "0x7f000001",
            "0x7F.0.0.1",
            "0177.0.0.1",
            "0177.0.0.01",
            "127.1",
            "127.0.1",
            "127.0.0.1.",
            "017700000001",
        ] {
            assert_eq!(normalize_host(host).as_deref(), Ok("127.0.0.1"), "{host}");
        }
        assert_eq!(
            normalize_host("169.254.43518").as_deref(),
            Ok("169.254.169.254")
        );
        assert_eq!(normalize_host("0").as_deref(), Ok("0.0.0.0"));
        assert_eq!(normalize_host("0x").as_deref(), Ok("0.0.0.0"));
        for bad in [
            "256.0.0.1",
            "1.2.3.4.5",
            "4294967296",
            "0x1.0x100.0.1",
            "08.0.0.1",
            "1.2.3.0x1ff",
            "example.123",
            "99999999999999999999999",
            "a..b",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(
            normalize_host("1.2.3.4.example.com").as_deref(),
            Ok("1.2.3.4.example.com")
        );
        assert_eq!(
            normalize_host("0x7f.example").as_deref(),
            Ok("0x7f.example")
        );
    }

    #[test]
    fn ipv6_literals_are_canonical() {
        assert_eq!(normalize_host("[0:0:0:0:0:0:0:1]").as_deref(), Ok("::1"));
        assert_eq!(
            normalize_host("[::FFFF:7f00:1]").as_deref(),
            Ok("127.0.0.1")
        );
        assert_eq!(
            normalize_host("[::ffff:10.0.0.1]").as_deref(),
            Ok("10.0.0.1")
        );
        assert_eq!(normalize_host("[FE80::1]").as_deref(), Ok("fe80::1"));
        assert!(normalize_host("[fe80::1%25eth0]").is_err());
        assert!(normalize_host("[fe80::1%eth0]").is_err());
        assert!(normalize_host("[::1").is_err());
        let t = Target::from_url("http://[::ffff:127.0.0.1]:80/").unwrap();
        assert_eq!(t.ip(), Some(IpAddr::from([127, 0, 0, 1])));
        assert_eq!(Target::from_url("http://example.com/").unwrap().ip(), None);
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for path in [
            "/",
            "/repos/acme/x",
            "/a?b=../c",
            "/a/b.c/",
            "/.well-known/x",
        ] {
            assert_eq!(normalize_path(path).as_deref(), Ok(path), "{path}");
        }
        assert!(matches!(
            normalize_path("/repos/x?q=1"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn dot_segments_and_escapes_are_resolved() {
        for (raw, normal) in [
            ("/repos/acme/../other", "/repos/other"),
            ("/repos/acme/./x", "/repos/acme/x"),
            ("/a/..", "/"),
            ("/a/.", "/a/"),
            ("/..", "/"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/repos/acme/%2e%2e/other", "/repos/other"),
            ("/repos/acme/%2E./other", "/repos/other"),
            ("/repos/%61cme/x", "/repos/acme/x"),
            ("/a%7e/%41", "/a~/A"),
            ("/a%2f%3a/b", "/a%2F%3A/b"),
            ("/a//../b", "/a/b"),
            ("/a/%2541/b", "/a/%2541/b"),
            ("/a?q=%252e%252e//x", "/a?q=%252e%252e//x"),
            ("/x/../y?q=/../z", "/y?q=/../z"),
            ("/caf%C3%A9", "/caf%C3%A9"),
        ] {
            assert_eq!(normalize_path(raw).as_deref(), Ok(normal), "{raw}");
            assert_eq!(
                normalize_path(normal).as_deref(),
                Ok(normal),
                "{normal} not stable"
            );
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for path in [
            "/a\\..\\b",
            "/a/b\\c",
            "/repos/acme/..%2Fother",
            "/repos/acme/%2E%2E%2Fother",
            "/repos/acme/x%2F..%2F..%2Fother",
            "/repos/acme/x%5C..%5Cother",
            "/repos/acme/..;/other",
            "/repos/acme/.;x/y",
            "/allowed/%252e%252e/secret",
            "/allowed/%252E%252E/secret",
            "/allowed/..%252fsecret",
            "/allowed/x%255Csecret",
            "//repos/acme/x",
            "/repos//acme/x",
            "/repos/acme//",
            "/a%00b",
            "/a%0a",
            "/a%zz",
            "/a%4",
            "relative",
            "*",
            "/a#frag",
        ] {
            assert!(normalize_path(path).is_err(), "{path} accepted");
        }
        assert!(Target::from_url("http://example.com/a/..%2F..%2Fb").is_err());
        let tunnel = Target::from_authority("example.com:443").unwrap();
        assert_eq!(tunnel.with_path("/a/../b").unwrap().path, "/b");
        assert!(tunnel.with_path("/a/..;/b").is_err());
    }
}
