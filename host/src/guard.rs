//! The upstream address guard: which IP addresses the proxy may connect to.
//!
//! A routed host name can resolve to anything, and an agent can be steered into
//! asking for `http://169.254.169.254/` or a name that resolves to `10.0.0.1`. So every
//! address the proxy is about to dial is checked *after* DNS resolution, and the
//! connection is made to exactly the checked address (no second lookup, so no DNS
//! rebinding window). IP-literal targets are checked before the policy is asked.
//!
//! Refused unless an operator allows them with `--allow-upstream-cidr`:
//!
//! - IPv4: `0.0.0.0/8` (this network, unspecified), `10.0.0.0/8`, `172.16.0.0/12`,
//!   `192.168.0.0/16` (RFC 1918), `100.64.0.0/10` (CGNAT), `127.0.0.0/8` (loopback),
//!   `169.254.0.0/16` (link-local, cloud metadata), `192.0.0.0/24` (IETF protocol
//!   assignments), `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`
//!   (documentation), `198.18.0.0/15` (benchmarking), `192.88.99.0/24` (6to4 relay),
//!   `224.0.0.0/4` (multicast), `240.0.0.0/4` (reserved, and the broadcast address).
//! - IPv6: `::` and `::1`, `fe80::/10` (link-local), `fec0::/10` (old site-local),
//!   `fc00::/7` (unique local), `ff00::/8` (multicast), `2001:db8::/32` and
//!   `3fff::/20` (documentation), `100::/64` (discard), `2001:2::/48`
//!   (benchmarking), `2001:10::/28` and `2001:20::/28` (ORCHID), `2001::/32` (Teredo),
//!   `5f00::/16` (SRv6); and every form that embeds an IPv4 address, judged by that
//!   address: IPv4-mapped `::ffff:0:0/96`, IPv4-compatible `::/96`, NAT64
//!   `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`.
//!
//! The proxy's own listen and admin addresses are refused even when an allowed CIDR
//! covers them (no request loops, no reaching the admin endpoints through the proxy).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{PoisonError, RwLock};

use ipnet::IpNet;

/// Why an address may not be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// A non-public address no allowed CIDR covers.
    #[error(
        "the destination {address} is {range}; the egress proxy only connects to public addresses (an operator can allow it with --allow-upstream-cidr)"
    )]
    NotPublic {
        /// The address.
        address: IpAddr,
        /// The range it is in, in words.
        range: &'static str,
    },
    /// The proxy's own listener.
    #[error("the destination {0} is the egress proxy itself")]
    Loop(SocketAddr),
}

/// Which upstream addresses may be dialled.
#[derive(Default)]
pub struct AddressGuard {
    allowed: Vec<IpNet>,
    /// The proxy's listeners, learnt as they are bound.
    own: RwLock<Vec<SocketAddr>>,
}

impl fmt::Debug for AddressGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressGuard")
            .field(
                "allowed",
                &self
                    .allowed
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>(),
            )
            .field(
                "own",
                &*self.own.read().unwrap_or_else(PoisonError::into_inner),
            )
            .finish()
    }
}

impl AddressGuard {
    /// A guard that refuses non-public addresses except those in `allowed`.
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self {
            allowed,
            own: RwLock::default(),
        }
    }

    /// Also refuse the proxy's own listening address `addr` (a listener on `0.0.0.0`
    /// or `::` is reachable on every local address: its port is refused on loopback
    /// and unspecified addresses).
    pub fn refuse_own(&self, addr: SocketAddr) {
        self.own
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(addr);
    }

    /// The CIDRs allowed despite being non-public.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Whether the proxy may connect to `addr`.
    pub fn check(&self, addr: SocketAddr) -> Result<(), GuardError> {
        let ip = addr.ip().to_canonical();
        for own in self
            .own
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            let own_ip = own.ip().to_canonical();
            let same_host = ip == own_ip
                || (own_ip.is_unspecified() && (ip.is_loopback() || ip.is_unspecified()))
                || (own_ip.is_loopback() && ip.is_unspecified());
            if own.port() == addr.port() && same_host {
                return Err(GuardError::Loop(addr));
            }
        }
        if self.allowed.iter().any(|net| net.contains(&ip)) {
            return Ok(());
        }
        match non_public_range(ip) {
            None => Ok(()),
            Some(range) => Err(GuardError::NotPublic {
                address: addr.ip(),
                range,
            }),
        }
    }
}

/// The non-public range `ip` is in, in words; `None` for a public address.
pub fn non_public_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified (\"this network\") address",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "a private address (RFC 1918)",
        (100, 64..=127, _) => "a carrier-grade NAT address (100.64.0.0/10)",
        (127, _, _) => "a loopback address",
        (169, 254, _) => "a link-local address (169.254.0.0/16, where cloud metadata lives)",
        (192, 0, 0) => "an IETF protocol assignment (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a documentation address",
        (198, 18..=19, _) => "a benchmarking address (198.18.0.0/15)",
        (192, 88, 99) => "a 6to4 relay anycast address",
        (224..=239, _, _) => "a multicast address",
        (240..=255, _, _) => "a reserved or broadcast address",
        _ => return None,
    })
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if let Some(embedded) = embedded_v4(ip) {
        return v4_range(embedded).map(|_| "an IPv6 address embedding a non-public IPv4 address");
    }
    Some(match s {
        [0, 0, 0, 0, 0, 0, 0, 0] => "the unspecified address",
        [0, 0, 0, 0, 0, 0, 0, 1] => "a loopback address",
        [0x0100, 0, 0, 0, ..] => "a discard-only address (100::/64)",
        [0x2001, 0, ..] => "a Teredo address (2001::/32)",
        [0x2001, 0x0002, 0, ..] => "a benchmarking address (2001:2::/48)",
        [0x2001, 0x0db8, ..] => "a documentation address",
        [0x2001, 0x0010..=0x002f, ..] => "an ORCHID address",
        [0x3fff, 0x0000..=0x0fff, ..] => "a documentation address",
        [0x5f00, ..] => "an SRv6 address (5f00::/16)",
        [x, ..] if x & 0xffc0 == 0xfe80 => "a link-local address (fe80::/10)",
        [x, ..] if x & 0xffc0 == 0xfec0 => "a site-local address (fec0::/10)",
        [x, ..] if x & 0xfe00 == 0xfc00 => "a unique local address (fc00::/7)",
        [x, ..] if x & 0xff00 == 0xff00 => "a multicast address",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address carries, for the forms that route to it:
/// IPv4-mapped, IPv4-compatible, NAT64 (well-known and local-use prefixes), 6to4.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        // ::ffff:a.b.c.d and ::a.b.c.d (but not :: and ::1, judged as IPv6).
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        // Local-use NAT64 (RFC 8215): the IPv4 address sits in the last 32 bits for a
        // /96 prefix, the common deployment.
        [0x64, 0xff9b, 1, _, _, _, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        let ip: IpAddr = ip.parse().unwrap();
        AddressGuard::default()
            .check(SocketAddr::new(ip, 443))
            .is_err()
    }

    #[test]
    fn non_public_ipv4_is_refused() {
        for ip in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "127.0.0.1",
            "127.255.255.254",
            "169.254.169.254",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.1",
            "203.0.113.1",
            "198.18.0.1",
            "198.19.255.255",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(refused(ip), "{ip} allowed");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.15.0.1",
            "172.32.0.1",
            "100.63.0.1",
            "100.128.0.1",
            "192.169.0.1",
            "198.20.0.1",
        ] {
            assert!(!refused(ip), "{ip} refused");
        }
    }

    #[test]
    fn non_public_ipv6_and_embedded_ipv4_are_refused() {
        for ip in [
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "2001:db8::1",
            "3fff::1",
            "100::1",
            "2001::1",
            "2001:2::1",
            "2001:10::1",
            "5f00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(refused(ip), "{ip} allowed");
        }
        for ip in [
            "2606:4700::1111",
            "2a00:1450::1",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert!(!refused(ip), "{ip} refused");
        }
    }

    #[test]
    fn allowed_cidrs_and_own_addresses() {
        let guard = AddressGuard::new(vec!["127.0.0.1/32".parse().unwrap()]);
        guard.refuse_own("127.0.0.1:8080".parse().unwrap());
        guard.refuse_own("0.0.0.0:9090".parse().unwrap());
        assert!(guard.check("127.0.0.1:443".parse().unwrap()).is_ok());
        assert!(
            guard
                .check("[::ffff:127.0.0.1]:443".parse().unwrap())
                .is_ok()
        );
        assert!(guard.check("127.0.0.2:443".parse().unwrap()).is_err());
        assert_eq!(
            guard.check("127.0.0.1:8080".parse().unwrap()),
            Err(GuardError::Loop("127.0.0.1:8080".parse().unwrap()))
        );
        assert!(matches!(
            guard.check("127.0.0.1:9090".parse().unwrap()),
            Err(GuardError::Loop(_))
        ));
        assert!(matches!(
            guard.check("0.0.0.0:8080".parse().unwrap()),
            Err(GuardError::Loop(_))
        ));
        assert!(guard.check("8.8.8.8:8080".parse().unwrap()).is_ok());
        let message = guard
            .check("169.254.169.254:80".parse().unwrap())
            .unwrap_err()
            .to_string();
        assert!(message.contains("cloud metadata"), "{message}");
        assert!(message.contains("--allow-upstream-cidr"), "{message}");
    }
}
