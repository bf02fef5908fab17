//! `run`'s forced-egress flags: the transparent listener and the DNS listener, turned
//! into typed settings and bound sockets before anything serves.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result, bail};
use clap::Args;
use tokio::net::{TcpListener, UdpSocket};

use crate::dns::{self, DnsAnswer, DnsConfig};

/// Forced egress: connections redirected to the proxy, and the agent's DNS.
#[derive(Debug, Args)]
pub struct ForcedArgs {
    /// Also accept TCP connections redirected to the proxy by iptables/nftables
    /// (`REDIRECT`) on this address: TLS is decided by its SNI like `CONNECT
    /// sni:original-port`, plain HTTP by its Host header; anything else is refused.
    /// Default: off.
    #[arg(long, env = "EGRESS_PROXY_TRANSPARENT_LISTEN")]
    pub transparent_listen: Option<SocketAddr>,
    /// Answer DNS (UDP and TCP) on this address: A/AAAA only for names the policy
    /// routes, NXDOMAIN for every other name (never forwarded). Default: off.
    #[arg(long, env = "EGRESS_PROXY_DNS_LISTEN")]
    pub dns_listen: Option<SocketAddr>,
    /// What a routed name resolves to: `proxy` (the proxy's own address, see
    /// --dns-proxy-address) or `upstream` (its real addresses, resolved by the proxy
    /// and checked by the address guard).
    #[arg(
        long,
        env = "EGRESS_PROXY_DNS_ANSWER",
        value_enum,
        default_value = "proxy"
    )]
    pub dns_answer: DnsAnswer,
    /// The address(es) `--dns-answer proxy` answers with (IPv4 for A, IPv6 for
    /// AAAA). Repeat, or separate with commas. Default: the IP of
    /// --transparent-listen, else of --dns-listen, if not a wildcard address.
    #[arg(long, env = "EGRESS_PROXY_DNS_PROXY_ADDRESS", value_delimiter = ',')]
    pub dns_proxy_address: Vec<IpAddr>,
    /// The ports a name is asked about: routed if the policy allows a CONNECT to it
    /// on any of them. Separate with commas.
    #[arg(long, env = "EGRESS_PROXY_DNS_PORTS", value_delimiter = ',', default_values_t = dns::DEFAULT_PORTS)]
    pub dns_ports: Vec<u16>,
    /// TTL of DNS answers, in seconds.
    #[arg(long, env = "EGRESS_PROXY_DNS_TTL", default_value_t = dns::DEFAULT_TTL)]
    pub dns_ttl: u32,
}

/// The forced-egress sockets, bound.
#[derive(Debug)]
pub struct Bound {
    /// The transparent listener.
    pub transparent: Option<TcpListener>,
    /// The DNS listener's settings and its UDP socket and TCP listener (same address).
    pub dns: Option<(DnsConfig, UdpSocket, TcpListener)>,
}

impl ForcedArgs {
    /// The DNS settings, if `--dns-listen` is given; an error for a configuration that
    /// cannot work.
    pub fn dns_config(&self) -> Result<Option<DnsConfig>> {
        let Some(listen) = self.dns_listen else {
            return Ok(None);
        };
        if self.dns_ports.is_empty() {
            bail!("--dns-ports is empty: no name could ever be routed");
        }
        let mut proxy_addresses = self.dns_proxy_address.clone();
        if self.dns_answer == DnsAnswer::Proxy && proxy_addresses.is_empty() {
            let specific = [self.transparent_listen, Some(listen)]
                .into_iter()
                .flatten()
                .map(|addr| addr.ip())
                .find(|ip| !ip.is_unspecified());
            match specific {
                Some(ip) => proxy_addresses.push(ip),
                None => bail!(
                    "--dns-answer proxy needs an address to answer with, and the listeners are on wildcard addresses: give --dns-proxy-address (the address agents reach the proxy at)"
                ),
            }
        }
        Ok(Some(DnsConfig {
            answer: self.dns_answer,
            proxy_addresses,
            ports: self.dns_ports.clone(),
            ttl: self.dns_ttl,
        }))
    }

    /// Bind the listeners asked for (the configuration is checked first).
    pub async fn bind(&self) -> Result<Bound> {
        let dns_config = self.dns_config()?;
        let transparent = match self.transparent_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (transparent)"))?,
            ),
            None => None,
        };
        let dns = match (dns_config, self.dns_listen) {
            (Some(config), Some(addr)) => {
                let udp = UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}/udp (DNS)"))?;
                // Port 0: TCP takes the port the UDP socket got.
                let tcp_addr = udp.local_addr().context("DNS socket address")?;
                let tcp = TcpListener::bind(tcp_addr)
                    .await
                    .with_context(|| format!("cannot listen on {tcp_addr}/tcp (DNS)"))?;
                Some((config, udp, tcp))
            }
            _ => None,
        };
        Ok(Bound { transparent, dns })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn forced(extra: &[&str]) -> ForcedArgs {
        let argv = [&["egress-proxy", "run", "--routes", "r.yaml"], extra].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => args.forced,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forced_egress_is_off_by_default() {
        let args = forced(&[]);
        assert!(args.transparent_listen.is_none());
        assert!(args.dns_config().unwrap().is_none());
        assert_eq!(args.dns_ports, dns::DEFAULT_PORTS);
        assert_eq!(args.dns_answer, DnsAnswer::Proxy);
    }

    #[test]
    fn proxy_answers_default_to_a_specific_listener_address() {
        let args = forced(&[
            "--transparent-listen",
            "127.0.0.1:15001",
            "--dns-listen",
            "0.0.0.0:53",
        ]);
        let config = args.dns_config().unwrap().unwrap();
        assert_eq!(
            config.proxy_addresses,
            ["127.0.0.1".parse::<IpAddr>().unwrap()]
        );
        let wildcard = forced(&["--dns-listen", "0.0.0.0:53"]);
        let err = wildcard.dns_config().unwrap_err().to_string();
        assert!(err.contains("--dns-proxy-address"), "{err}");
        let upstream = forced(&["--dns-listen", "0.0.0.0:53", "--dns-answer", "upstream"]);
        assert_eq!(
            upstream.dns_config().unwrap().unwrap().answer,
            DnsAnswer::Upstream
        );
        let given = forced(&[
            "--dns-listen",
            "[::]:53",
            "--dns-proxy-address",
            "10.0.0.1,fd00::1",
            "--dns-ports",
            "443",
        ]);
        let config = given.dns_config().unwrap().unwrap();
        assert_eq!(config.proxy_addresses.len(), 2);
        assert_eq!(config.ports, [443]);
        assert!(
            Cli::try_parse_from([
                "egress-proxy",
                "run",
                "--routes",
                "r",
                "--dns-answer",
                "nowhere"
            ])
            .is_err()
        );
    }
}
