//! Request-target normalisation (host/src/target.rs): `Target::from_url`,
//! `Target::from_authority`, `Target::same_authority`, `Target::with_path`,
//! `Target::ip`, `normalize_host` (names, IPv4 literals in every encoding, IPv6) and
//! `normalize_path`, with the properties they must have, not just "no panic".
//!
//! Input: UTF-8 text, split at the first `\n` into `first` and `second` (both are the
//! whole text when there is no `\n`). `first` goes to every parser (as is and wrapped
//! into a URL / authority, so the fuzzer reaches host parsing quickly); `second` is
//! the authority compared with the targets parsed from `first`.
//!
//! Each API has its own small `check_*` function; to cover another API (path
//! normalisation, IP-literal parsing, ...) add a `check_*` function and call it from
//! the `fuzz_target!` body, with seeds in fuzz/seeds/normalize/.

#![no_main]

use std::net::{IpAddr, SocketAddr};

use egress_proxy::guard::AddressGuard;
use egress_proxy::policy::Scheme;
use egress_proxy::target::{Target, normalize_host, normalize_path};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, second) = text.split_once('\n').unwrap_or((text, text));

    check_normalize_host(first);
    check_guard(first);
    check_normalize_path(first);
    check_normalize_path(&format!("/{first}"));
    let targets = [
        check_from_url(first),
        check_from_url(&format!("http://{first}/")),
        check_from_authority(first),
        check_from_authority(&format!("{first}:443")),
    ];
    for target in targets.iter().flatten() {
        check_same_authority(target, second);
        check_ip(target);
        check_with_path(target, second);
    }
});

/// A host as written in a URL or authority: IPv6 literals in brackets.
fn url_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// `normalize_host`: the result is non-empty, ASCII, lower-case, and normalising it
/// again (in URL form) changes nothing.
fn check_normalize_host(host: &str) -> Option<String> {
    let normal = normalize_host(host).ok()?;
    assert!(!normal.is_empty(), "{host:?} normalised to an empty host");
    assert!(
        normal.is_ascii() && !normal.bytes().any(|b| b.is_ascii_uppercase()),
        "{host:?} normalised to {normal:?}, not lower-case ASCII"
    );
    let again = normalize_host(&url_host(&normal));
    assert_eq!(
        again.as_ref(),
        Ok(&normal),
        "normalize_host is not idempotent: {host:?} → {normal:?} → {again:?}"
    );
    Some(normal)
}

/// `Target::from_url`: the host is normalised, the target re-parses from its own
/// `scheme://host:port/path` to the same target, and it has the URL's authority.
fn check_from_url(url: &str) -> Option<Target> {
    let target = Target::from_url(url).ok()?;
    check_normal_host(&target, url);
    assert!(!target.path.is_empty(), "{url:?}: empty path");

    let rebuilt = format!(
        "{}://{}:{}{}",
        target.scheme,
        url_host(&target.host),
        target.port,
        target.path
    );
    let again = Target::from_url(&rebuilt);
    assert_eq!(
        again.as_ref(),
        Ok(&target),
        "{url:?} → {target:?} does not re-parse from {rebuilt:?}"
    );

    if let Ok(uri) = url.parse::<http::Uri>()
        && let Some(authority) = uri.authority()
    {
        assert!(
            target.same_authority(authority.as_str()),
            "{url:?} → {target:?} is not the same authority as {:?}",
            authority.as_str()
        );
    }
    Some(target)
}

/// `Target::from_authority`: an https target without a path, equal to the target
/// parsed from its own `host:port`, and the same authority as its input.
fn check_from_authority(authority: &str) -> Option<Target> {
    let target = Target::from_authority(authority).ok()?;
    check_normal_host(&target, authority);
    assert_eq!(
        target.scheme,
        Scheme::Https,
        "{authority:?}: CONNECT is https"
    );
    assert!(target.path.is_empty(), "{authority:?}: CONNECT has no path");

    let rebuilt = format!("{}:{}", url_host(&target.host), target.port);
    let again = Target::from_authority(&rebuilt);
    assert_eq!(
        again.as_ref(),
        Ok(&target),
        "{authority:?} → {target:?} does not re-parse from {rebuilt:?}"
    );
    assert!(
        target.same_authority(authority),
        "{authority:?} → {target:?} is not the same authority as its input"
    );
    Some(target)
}

/// `Target::same_authority`: agrees with the target's own `host:port`, and when it
/// accepts an authority that carries a port, that authority parses to the same host
/// and port.
fn check_same_authority(target: &Target, authority: &str) {
    let own = format!("{}:{}", url_host(&target.host), target.port);
    assert!(target.same_authority(&own), "{target:?} vs its own {own:?}");

    if target.same_authority(authority)
        && let Ok(other) = Target::from_authority(authority)
    {
        assert_eq!(
            (&other.host, other.port),
            (&target.host, target.port),
            "{target:?} claims the same authority as {authority:?}"
        );
    }
}

/// `normalize_path`: the result starts with `/`, normalising it again changes nothing,
/// and its path (without the query) has no dot-segment in any of the readings the
/// module documents: as sent, with `%2F`/`%5C` read as separators, and with `;`
/// parameters stripped from a segment.
fn check_normalize_path(path_and_query: &str) -> Option<String> {
    let normal = normalize_path(path_and_query).ok()?.into_owned();
    assert!(
        normal.starts_with('/'),
        "{path_and_query:?} normalised to {normal:?}"
    );
    let again = normalize_path(&normal).map(|p| p.into_owned());
    assert_eq!(
        again.as_ref(),
        Ok(&normal),
        "normalize_path is not idempotent: {path_and_query:?} → {normal:?} → {again:?}"
    );
    let path = normal.split('?').next().unwrap_or_default();
    let split = path.replace("%2F", "/").replace("%5C", "/");
    for segment in split.split('/') {
        let bare = segment.split(';').next().unwrap_or_default();
        assert!(
            bare != "." && bare != "..",
            "{path_and_query:?} normalised to {normal:?}, which keeps the dot-segment {segment:?}"
        );
    }
    Some(normal)
}

/// `Target::with_path`: the same target with the path normalised as
/// `normalize_path` does it.
fn check_with_path(target: &Target, path_and_query: &str) {
    let with = target.with_path(path_and_query).ok();
    let normal = normalize_path(path_and_query).ok().map(|p| p.into_owned());
    assert_eq!(
        with.as_ref().map(|t| &t.path),
        normal.as_ref(),
        "with_path({path_and_query:?}) disagrees with normalize_path"
    );
    if let Some(with) = with {
        assert_eq!(
            (with.scheme, &with.host, with.port),
            (target.scheme, &target.host, target.port),
            "with_path changed more than the path"
        );
    }
}

/// `Target::ip`: an IP host is written canonically (what the address guard checks is
/// what the policy saw), and an IPv4-mapped IPv6 address has become the IPv4 address.
fn check_ip(target: &Target) {
    let Some(ip) = target.ip() else {
        assert!(
            target
                .host
                .bytes()
                .any(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'_'),
            "{:?} is neither an IP address nor a name",
            target.host
        );
        return;
    };
    assert_eq!(ip.to_string(), target.host, "IP host not canonical");
    if let IpAddr::V6(v6) = ip {
        assert!(
            v6.to_ipv4_mapped().is_none(),
            "{:?}: IPv4-mapped address kept as IPv6",
            target.host
        );
    }
}

/// A target's host is already normal: normalising it again changes nothing.
fn check_normal_host(target: &Target, input: &str) {
    let again = normalize_host(&url_host(&target.host));
    assert_eq!(
        again.as_ref(),
        Ok(&target.host),
        "{input:?}: target host {:?} is not normal",
        target.host
    );
}

/// `AddressGuard::check` (no CIDR allowed): an IPv4-mapped address is judged as its
/// IPv4 address, and nothing the standard library calls special-purpose passes.
fn check_guard(text: &str) {
    let Ok(ip) = text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    else {
        return;
    };
    let guard = AddressGuard::default();
    let allowed = guard.check(SocketAddr::new(ip, 443)).is_ok();
    assert_eq!(
        guard.check(SocketAddr::new(ip.to_canonical(), 443)).is_ok(),
        allowed,
        "{ip} and {} are judged differently",
        ip.to_canonical()
    );
    if !allowed {
        return;
    }
    let special = match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_multicast()
                || v6.is_unspecified()
                || v6.is_unique_local()
                || v6.is_unicast_link_local()
        }
    };
    assert!(!special, "{ip} is special-purpose but the guard allows it");
}
