//! The DNS listener (`--dns-listen`, UDP and TCP): a resolver for the agent that
//! answers only names the policy would route, so DNS is not a way out.
//!
//! hickory-server parses, frames and answers; this module only decides. For each
//! query:
//!
//! 1. Anything but one standard query of class `IN` → `REFUSED`.
//! 2. The name is routed if the policy (whatever guest is loaded) does not deny a
//!    `CONNECT name:port` for one of `--dns-ports` (default 443, 80) — the question
//!    the transparent listener asks for a TLS connection to that name.
//! 3. Unrouted → `NXDOMAIN`, whatever the type. **Nothing is resolved for it**: no
//!    query for an unrouted name ever leaves the proxy (the exfiltration guard).
//! 4. Routed, `A`/`AAAA` → with `--dns-answer proxy` the proxy's own addresses
//!    (`--dns-proxy-address`), so the agent's traffic reaches the transparent
//!    listener; with `--dns-answer upstream` the real addresses, resolved by the proxy
//!    and passed through the address guard (refused ones are left out).
//! 5. Routed, any other type (`HTTPS`/`SVCB` included: no QUIC or ECH hints) → an
//!    empty answer.
//!
//! One log line per query (target `egress_proxy::dns`: client, name, type, decision,
//! answers) and `egress_proxy_dns_queries_total{decision}`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::policy::{self, Decision, Head};
use crate::proxy::Proxy;
use crate::target::Target;

/// The log target of the per-query lines.
pub const DNS_TARGET: &str = "egress_proxy::dns";
/// Default TTL of an answer, in seconds: short, so a reload that unroutes a name
/// takes effect soon in the agent's cache.
pub const DEFAULT_TTL: u32 = 30;
/// Default ports a name is asked about (`--dns-ports`).
pub const DEFAULT_PORTS: [u16; 2] = [443, 80];
/// How long a TCP client may keep a connection without sending a query.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// Response buffer per TCP connection (hickory's framing).
const TCP_RESPONSE_BUFFER: usize = 16;
/// Longest name quoted in the log.
const MAX_LOGGED_NAME: usize = 255;

/// What a routed name's A/AAAA query is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DnsAnswer {
    /// The proxy's own addresses (`--dns-proxy-address`): connections reach the
    /// transparent listener even without a redirect rule per destination.
    Proxy,
    /// The name's real addresses, resolved by the proxy and checked by the address
    /// guard.
    Upstream,
}

/// The DNS listener's settings.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// What routed names resolve to.
    pub answer: DnsAnswer,
    /// The addresses answered in [`DnsAnswer::Proxy`] mode (A gets the IPv4 ones,
    /// AAAA the IPv6 ones). Must not be empty in that mode.
    pub proxy_addresses: Vec<IpAddr>,
    /// The ports a name is asked about; routed if any is allowed.
    pub ports: Vec<u16>,
    /// TTL of answers, in seconds.
    pub ttl: u32,
}

/// What was decided about one query (the log's and the metric's label).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// Addresses for a routed name.
    Addresses(Vec<IpAddr>),
    /// A routed name, but no record of this type (HTTPS, SVCB, TXT, ... or no address
    /// of this family).
    Empty,
    /// Resolved, but the address guard refused every address.
    GuardRefused,
    /// Not routed.
    NxDomain,
    /// Resolving a routed name failed.
    ServFail,
    /// Not one standard IN query.
    Refused,
}

impl Answer {
    fn label(&self) -> &'static str {
        match self {
            Answer::Addresses(_) => "answer",
            Answer::Empty => "empty",
            Answer::GuardRefused => "guard_refused",
            Answer::NxDomain => "nxdomain",
            Answer::ServFail => "servfail",
            Answer::Refused => "refused",
        }
    }

    fn code(&self) -> ResponseCode {
        match self {
            Answer::Addresses(_) | Answer::Empty | Answer::GuardRefused => ResponseCode::NoError,
            Answer::NxDomain => ResponseCode::NXDomain,
            Answer::ServFail => ResponseCode::ServFail,
            Answer::Refused => ResponseCode::Refused,
        }
    }
}

/// The request handler: the policy decides, hickory answers.
#[derive(Debug)]
struct PolicyDns {
    proxy: Arc<Proxy>,
    config: DnsConfig,
}

impl PolicyDns {
    /// Whether the policy would route `name` on one of the configured ports; the
    /// first such port.
    fn routed_port(&self, name: &str, client: SocketAddr) -> Option<u16> {
        let generation = self.proxy.generation();
        self.config.ports.iter().copied().find(|&port| {
            let Ok(target) = Target::from_authority(&format!("{name}:{port}")) else {
                return false;
            };
            let request = policy::Request::new("CONNECT", target, Vec::new(), client);
            let deciding = Instant::now();
            let head = generation.decide(&request);
            self.proxy.metrics().decided(deciding.elapsed());
            // A body phase for a CONNECT is an invalid verdict: not routed.
            matches!(
                head,
                Head::Decided(Decision::Allow { .. } | Decision::Inject { .. })
            )
        })
    }

    async fn answer(&self, name: &str, qtype: RecordType, client: SocketAddr) -> Answer {
        let Some(port) = self.routed_port(name, client) else {
            return Answer::NxDomain;
        };
        let wanted = |ip: &IpAddr| match qtype {
            RecordType::A => ip.is_ipv4(),
            _ => ip.is_ipv6(),
        };
        if !matches!(qtype, RecordType::A | RecordType::AAAA) {
            return Answer::Empty;
        }
        let addresses: Vec<IpAddr> = match self.config.answer {
            DnsAnswer::Proxy => self
                .config
                .proxy_addresses
                .iter()
                .copied()
                .filter(wanted)
                .collect(),
            DnsAnswer::Upstream => {
                let resolved = match tokio::net::lookup_host((name, port)).await {
                    Ok(resolved) => resolved,
                    Err(err) => {
                        tracing::debug!(name, %err, "resolving a routed name failed");
                        return Answer::ServFail;
                    }
                };
                let mut family: Vec<IpAddr> = resolved.map(|a| a.ip()).filter(wanted).collect();
                family.dedup();
                let total = family.len();
                family.retain(|ip| {
                    self.proxy
                        .guard()
                        .check(SocketAddr::new(*ip, port))
                        .map_err(|err| tracing::debug!(name, %ip, %err, "resolved address refused"))
                        .is_ok()
                });
                if total > 0 && family.is_empty() {
                    return Answer::GuardRefused;
                }
                family
            }
        };
        if addresses.is_empty() {
            Answer::Empty
        } else {
            Answer::Addresses(addresses)
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for PolicyDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let start = Instant::now();
        let client = request.src();
        let standard = request.metadata.message_type == MessageType::Query
            && request.metadata.op_code == OpCode::Query
            && request.queries.len() == 1;
        let query = request.queries.queries().first().filter(|_| standard);
        let (name, qtype, answer) = match query {
            Some(query) if query.query_class() == DNSClass::IN => {
                let name = query.name().to_string();
                let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
                let answer = self.answer(&name, query.query_type(), client).await;
                (name, query.query_type(), answer)
            }
            Some(query) => (
                query.name().to_string(),
                query.query_type(),
                Answer::Refused,
            ),
            None => ("-".to_owned(), RecordType::Unknown(0), Answer::Refused),
        };
        let records: Vec<Record> = match (&answer, query) {
            (Answer::Addresses(addresses), Some(query)) => addresses
                .iter()
                .map(|ip| {
                    let rdata = match ip {
                        IpAddr::V4(v4) => RData::A(A(*v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                    };
                    Record::from_rdata(query.name().into(), self.config.ttl, rdata)
                })
                .collect(),
            _ => Vec::new(),
        };
        self.proxy.metrics().dns_query(answer.label());
        let shown: String = name.chars().take(MAX_LOGGED_NAME).collect();
        let answers: Vec<String> = match &answer {
            Answer::Addresses(addresses) => addresses.iter().map(ToString::to_string).collect(),
            _ => Vec::new(),
        };
        tracing::info!(
            target: DNS_TARGET,
            client = %client,
            name = %shown,
            qtype = %qtype,
            decision = answer.label(),
            answers = %answers.join(","),
            duration_ms = format_args!("{:.3}", start.elapsed().as_secs_f64() * 1000.0),
            "dns"
        );
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.code();
        metadata.authoritative = matches!(
            answer,
            Answer::Addresses(_) | Answer::Empty | Answer::NxDomain
        );
        metadata.recursion_available = false;
        let response = MessageResponseBuilder::from_message_request(request).build(
            metadata,
            records.iter(),
            [],
            [],
            [],
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(err) => {
                tracing::debug!(%client, %err, "cannot send a DNS response");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata: failed,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// Answer DNS on `udp` and `tcp` (bound to the same address) until `shutdown` is
/// cancelled.
pub async fn serve(
    proxy: Arc<Proxy>,
    config: DnsConfig,
    udp: UdpSocket,
    tcp: TcpListener,
    shutdown: CancellationToken,
) {
    let mut server = Server::new(PolicyDns { proxy, config });
    server.register_socket(udp);
    server.register_listener(tcp, TCP_TIMEOUT, TCP_RESPONSE_BUFFER);
    tokio::select! {
        result = server.block_until_done() => {
            if let Err(err) = result {
                tracing::error!(%err, "the DNS listener stopped");
            }
        }
        () = shutdown.cancelled() => {
            if let Err(err) = server.shutdown_gracefully().await {
                tracing::debug!(%err, "DNS listener shutdown");
            }
        }
    }
}
