//! Host patterns: a route's `host`, parsed and normalised, and matching a request's
//! host against it.
//!
//! A pattern is an exact host or a wildcard:
//!
//! - exact: a DNS name (labels of `a-z`, `0-9` and `-`, not starting or ending with
//!   `-`), an IPv4 literal, or an IPv6 literal with or without brackets;
//! - wildcard: `*.` followed by a DNS name. It matches any subdomain of that name, at
//!   any depth, but never the name itself (`*.pythonhosted.org` matches
//!   `files.pythonhosted.org` and `a.b.pythonhosted.org`, not `pythonhosted.org`, and
//!   never a look-alike such as `evilpythonhosted.org`).
//!
//! Patterns and request hosts are normalised the same way: ASCII lower-case, one
//! trailing dot removed, IPv6 brackets removed and the address written canonically.
//! A DNS name whose last label is all digits (`127.1`) is rejected: resolvers may read
//! it as an IPv4 address, so it could never be matched reliably.

use std::borrow::Cow;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The longest DNS name, in characters (RFC 1035, without the trailing dot).
const MAX_NAME_LEN: usize = 253;
/// The longest DNS label, in characters.
const MAX_LABEL_LEN: usize = 63;

/// A route's host, normalised.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum HostPattern {
    /// This host only.
    Exact(String),
    /// Any subdomain of this DNS name (stored without the leading `*.`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses a route's `host` value. The error says what is wrong with it.
    pub(crate) fn parse(raw: &str) -> Result<Self, String> {
        let lower = raw.to_ascii_lowercase();
        let name = lower.strip_suffix('.').unwrap_or(&lower);
        if name.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if let Some(suffix) = name.strip_prefix("*.") {
            return check_dns_name(suffix)
                .map(|()| Self::Wildcard(suffix.to_owned()))
                .map_err(|why| format!("`{raw}`: after `*.` a DNS name must follow; {why}"));
        }
        if name.contains('*') {
            return Err(format!(
                "`{raw}`: `*` is only allowed as the whole first label, as in `*.example.com`"
            ));
        }
        if let Some(ip) = parse_ipv6(name) {
            return Ok(Self::Exact(ip.to_string()));
        }
        if let Ok(ip) = name.parse::<Ipv4Addr>() {
            return Ok(Self::Exact(ip.to_string()));
        }
        check_dns_name(name)
            .map(|()| Self::Exact(name.to_owned()))
            .map_err(|why| format!("`{raw}` is not a valid host name: {why}"))
    }

    /// Whether a normalised request host (see [`normalize_request_host`]) matches.
    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => name == host,
            Self::Wildcard(suffix) => is_subdomain_of(host, suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    /// The normalised pattern as written in a routes file; also the rule id.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Normalises a request's host the way patterns are: lower-case, one trailing dot
/// removed, IPv6 without brackets and in canonical form.
pub(crate) fn normalize_request_host(host: &str) -> Cow<'_, str> {
    // The host sends hosts normalised already; borrow them as they are.
    let plain = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.';
    if host.bytes().all(plain) && !host.ends_with('.') && !host.is_empty() {
        return Cow::Borrowed(host);
    }
    let lower = host.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    Cow::Owned(match parse_ipv6(name) {
        Some(ip) => ip.to_string(),
        None => name.to_owned(),
    })
}

/// Parses an IPv6 literal, bracketed or not.
fn parse_ipv6(text: &str) -> Option<Ipv6Addr> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().ok()
}

/// `host` is `<one or more labels>.<suffix>`. The labels must be plausible DNS labels,
/// so that nothing but a real subdomain (no `user@`, `/`, `:` or empty label) matches.
fn is_subdomain_of(host: &str, suffix: &str) -> bool {
    let Some(prefix) = host
        .strip_suffix(suffix)
        .and_then(|rest| rest.strip_suffix('.'))
    else {
        return false;
    };
    !prefix.is_empty()
        && prefix.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Checks a lower-case DNS name (no trailing dot). The error names the problem.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("longer than {MAX_NAME_LEN} characters"));
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    let last = name.rsplit('.').next().unwrap_or(name);
    if last.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the last label `{last}` is all digits, which is neither a DNS name nor an IPv4 address"
        ));
    }
    Ok(())
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("it has an empty label (`..`)".to_owned());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label `{label}` is longer than {MAX_LABEL_LEN} characters"
        ));
    }
    if let Some(bad) = label
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "label `{label}` contains `{bad}`; use letters, digits and `-` \
             (internationalised names in their `xn--` form)"
        ));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label `{label}` starts or ends with `-`"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> HostPattern {
        HostPattern::Exact(s.to_owned())
    }

    #[test]
    fn normalises_case_and_trailing_dot() {
        assert_eq!(
            HostPattern::parse("API.GitHub.com."),
            Ok(exact("api.github.com"))
        );
    }

    #[test]
    fn parses_ip_literals() {
        assert_eq!(HostPattern::parse("10.0.0.1"), Ok(exact("10.0.0.1")));
        assert_eq!(HostPattern::parse("[::1]"), Ok(exact("::1")));
        assert_eq!(HostPattern::parse("FE80:0:0::1"), Ok(exact("fe80::1")));
    }

    #[test]
    fn parses_wildcards() {
        let pattern = HostPattern::parse("*.PythonHosted.org").unwrap();
        assert_eq!(
            pattern,
            HostPattern::Wildcard("pythonhosted.org".to_owned())
        );
        assert_eq!(pattern.to_string(), "*.pythonhosted.org");
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "",
            ".",
            "*.",
            "*",
            "a*.example.com",
            "*example.com",
            "a.*.example.com",
            "**.example.com",
            "*.*.example.com",
            "exa mple.com",
            "a..b",
            "-a.example",
            "a-.example",
            "user@host",
            "host:443",
            "host/path",
            "127.1",
            "1.2.3.4.5",
            "*.10.0.0.1",
            "[::1",
            "fe80::1%eth0",
            "ex_ample.com",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn rejects_overlong_names() {
        let label = "a".repeat(64);
        assert!(HostPattern::parse(&format!("{label}.com")).is_err());
        let long = ["abcdefghi"; 30].join(".");
        assert!(HostPattern::parse(&long).is_err());
    }

    #[test]
    fn request_hosts_are_normalised_like_patterns() {
        assert_eq!(normalize_request_host("Example.COM."), "example.com");
        assert_eq!(normalize_request_host("[0:0::1]"), "::1");
        assert_eq!(normalize_request_host("::1"), "::1");
    }

    #[test]
    fn wildcard_matching_needs_a_real_subdomain() {
        let pattern = HostPattern::Wildcard("example.com".to_owned());
        assert!(pattern.matches("a.example.com"));
        assert!(pattern.matches("a.b.example.com"));
        assert!(!pattern.matches("example.com"));
        assert!(!pattern.matches(".example.com"));
        assert!(!pattern.matches("a..example.com"));
        assert!(!pattern.matches("evilexample.com"));
        assert!(!pattern.matches("user@a.example.com"));
        assert!(!pattern.matches("example.com.evil.net"));
    }
}
