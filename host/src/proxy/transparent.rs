//! The transparent listener: connections redirected to the proxy by iptables/nftables
//! (`REDIRECT`), from clients that were never told about a proxy.
//!
//! 1. The original destination comes from `SO_ORIGINAL_DST` (IPv4 and IPv6, through
//!    socket2). Only its **port** is used; its address is logged, never dialled. A
//!    connection that was not redirected (a client dialling the listener itself, e.g.
//!    after `--dns-answer proxy`) has the listener's own address there.
//! 2. The first byte tells TLS (`0x16`) from the rest.
//! 3. **TLS**: the whole ClientHello is read (`LazyConfigAcceptor` buffers across TCP
//!    segments and records) and its SNI taken; no SNI → a TLS alert, logged. Then the
//!    connection is decided exactly like `CONNECT <sni>:<original port>`
//!    ([`connect::decide`]: same policy call, access log, address guard and leaf
//!    cache) and intercepted with [`connect::serve_intercepted`]. The proxy dials the
//!    name, resolved by itself and checked by the guard, never the agent's IP.
//!    A denial completes the handshake with a leaf for the SNI name and answers every
//!    request inside with the same JSON 403 an explicit client gets; only a client
//!    that does not trust the proxy's CA sees a TLS alert instead (plus the log line).
//! 4. **Plain HTTP** (the first line is an HTTP/1.x request line): the `Host` header
//!    names the target, on the original port; no `Host` → 400. Then the one request
//!    pipeline, as for absolute-form requests.
//! 5. Anything else (SSH, raw TCP, silence) is closed, logged with its original
//!    destination and counted.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::LazyConfigAcceptor;

use super::access::ACCESS_TARGET;
use super::body::ProxyBody;
use super::connect::{self, Tunnel, Verdict};
use super::framing::{Ambiguity, FramingWatch};
use super::idle::Idle;
use super::pipeline::{self, Exchange};
use super::prefixed::Prefixed;
use super::respond::Refusal;
use super::{Proxy, server};
use crate::policy::Scheme;
use crate::target::Target;

/// `ENOENT`: `SO_ORIGINAL_DST` on a connection with no NAT entry (not redirected).
const NO_NAT_ENTRY: i32 = 2;
/// `ENOPROTOOPT`: no connection tracking in this kernel or namespace.
const NO_CONNTRACK: i32 = 92;

/// How much of a plain connection is read looking for an HTTP/1.x request line.
const MAX_REQUEST_LINE: usize = 8 * 1024;

/// Why a redirected connection was refused before any request (metric label).
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// Nothing arrived within the handshake timeout, or the client closed.
    NoBytes,
    /// A TLS ClientHello without a server name.
    NoSni,
    /// The TLS handshake failed (bad ClientHello, or the client distrusts the CA).
    Handshake,
    /// Bytes that are neither TLS nor an HTTP/1.x request line.
    NotTlsOrHttp,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Refused::NoBytes => "no_bytes",
            Refused::NoSni => "no_sni",
            Refused::Handshake => "handshake",
            Refused::NotTlsOrHttp => "not_tls_or_http",
        }
    }
}

/// Where a redirected connection came from and was going.
#[derive(Debug, Clone, Copy)]
struct Redirected {
    client: SocketAddr,
    original: SocketAddr,
    start: Instant,
}

/// Serve one redirected connection.
pub(crate) async fn serve_connection(proxy: &Arc<Proxy>, stream: TcpStream, client: SocketAddr) {
    let original = match original_destination(&stream) {
        Ok(original) => original,
        Err(err) => {
            tracing::warn!(%client, %err, "no original destination for a redirected connection; closed");
            proxy.metrics.transparent_refused("no_original_dst");
            return;
        }
    };
    let redirected = Redirected {
        client,
        original,
        start: Instant::now(),
    };
    let mut io = Idle::new(stream, proxy.config.limits.idle_timeout);
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(proxy.config.handshake_timeout, io.read(&mut first)).await;
    match read {
        Ok(Ok(1)) if first[0] == connect::TLS_HANDSHAKE => {
            tls(proxy, Prefixed::new(first.to_vec(), io), redirected).await;
        }
        Ok(Ok(1)) => plain(proxy, io, first[0], redirected).await,
        _ => refused(
            proxy,
            redirected,
            Refused::NoBytes,
            "no bytes before the timeout",
        ),
    }
}

/// The original destination of a redirected connection (`SO_ORIGINAL_DST`); for one
/// that was not redirected, the listener's own address.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let socket = socket2::SockRef::from(stream);
    let original = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    match original {
        Ok(addr) => addr
            .as_socket()
            .ok_or_else(|| std::io::Error::other("SO_ORIGINAL_DST returned a non-IP address")),
        // No NAT entry (not redirected, or no conntrack): the client dialled us.
        Err(err) if matches!(err.raw_os_error(), Some(NO_NAT_ENTRY | NO_CONNTRACK)) => Ok(local),
        Err(err) => Err(err),
    }
}

/// Log and count a connection refused before any request.
fn refused(proxy: &Proxy, redirected: Redirected, why: Refused, reason: &str) {
    proxy.metrics.transparent_refused(why.as_str());
    tracing::warn!(
        target: ACCESS_TARGET,
        client = %redirected.client,
        original_dst = %redirected.original,
        refused = why.as_str(),
        reason,
        "transparent connection refused"
    );
}

/// The TLS path: ClientHello, SNI, the CONNECT decision, then intercept or deny.
async fn tls<S>(proxy: &Arc<Proxy>, io: S, redirected: Redirected)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = proxy.config.handshake_timeout;
    let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
    let start = match tokio::time::timeout(timeout, acceptor).await {
        Ok(Ok(start)) => start,
        Ok(Err(err)) => {
            let reason = format!("not a TLS ClientHello: {err}");
            return refused(proxy, redirected, Refused::Handshake, &reason);
        }
        Err(_) => {
            return refused(
                proxy,
                redirected,
                Refused::NoBytes,
                "no complete ClientHello in time",
            );
        }
    };
    let Some(sni) = start.client_hello().server_name().map(str::to_owned) else {
        refused(
            proxy,
            redirected,
            Refused::NoSni,
            "a TLS ClientHello without a server name (SNI): the proxy cannot tell where it is going and never dials the address the client chose",
        );
        // Answer with a TLS alert rather than a bare close.
        if let Some(config) = no_certificate() {
            let _ = tokio::time::timeout(timeout, start.into_stream(config)).await;
        }
        return;
    };
    let exchange = Exchange {
        start: redirected.start,
        client: redirected.client,
        target: match Target::from_authority(&format!("{sni}:{}", redirected.original.port())) {
            Ok(target) => target,
            Err(err) => {
                let reason = format!("the SNI `{sni}` is not a host name: {err}");
                return refused(proxy, redirected, Refused::NoSni, &reason);
            }
        },
        metrics: proxy.metrics.clone(),
        original: Some(redirected.original),
    };
    let Tunnel {
        mut record,
        verdict,
    } = connect::decide(proxy, &exchange, Vec::new());
    let config = match &verdict {
        Verdict::Intercept(config) => {
            record.status = 200;
            config.clone()
        }
        Verdict::Deny(..) | Verdict::Refuse(_) => {
            // Complete the handshake so the agent reads the same JSON answer an explicit
            // client gets; the log line is written now, whatever the handshake does.
            match proxy.tls.server_config_for(&exchange.target.host) {
                Ok(config) => config,
                Err(err) => {
                    let reason = format!("cannot mint a certificate to deliver the denial: {err}");
                    log_refusal(&verdict, record);
                    return refused(proxy, redirected, Refused::Handshake, &reason);
                }
            }
        }
    };
    let accepted = tokio::time::timeout(timeout, start.into_stream(config)).await;
    let intercepting = matches!(verdict, Verdict::Intercept(_));
    if intercepting {
        record.emit(0, true);
    } else {
        log_refusal(&verdict, record.clone());
    }
    let tls_stream = match accepted {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            let reason =
                format!("TLS handshake failed (does the client trust the proxy's CA?): {err}");
            return refused(proxy, redirected, Refused::Handshake, &reason);
        }
        Err(_) => {
            return refused(
                proxy,
                redirected,
                Refused::Handshake,
                "TLS handshake timed out",
            );
        }
    };
    if intercepting {
        connect::serve_intercepted(
            proxy,
            tls_stream,
            exchange.target,
            redirected.client,
            Some(redirected.original),
        )
        .await;
    } else {
        serve_refusal(proxy, tls_stream, exchange, verdict).await;
    }
}

/// Write the tunnel's refusal line (as an explicit CONNECT's would be).
fn log_refusal(verdict: &Verdict, record: super::access::AccessRecord) {
    // The response carries the line; dropping it unsent would log it as `aborted`, so
    // it is written now as complete: the decision is final whatever the handshake does.
    if let Some(response) = verdict.refusal(record) {
        response.into_body().log_now();
    }
}

/// Answer every request inside a refused TLS session with the tunnel's refusal.
async fn serve_refusal<S>(
    proxy: &Arc<Proxy>,
    tls_stream: tokio_rustls::server::TlsStream<S>,
    exchange: Exchange,
    verdict: Verdict,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let verdict = Arc::new(verdict);
    let exchange = Arc::new(exchange);
    let service = service_fn(move |req: Request<Incoming>| {
        let verdict = verdict.clone();
        let exchange = exchange.clone();
        async move {
            let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
            let mut exchange = (*exchange).clone();
            exchange.start = Instant::now();
            exchange.target.path = path.to_owned();
            let record = exchange.record(req.method().as_str());
            let response = verdict.refusal(record).unwrap_or_else(|| {
                Refusal::Internal("no refusal for a refused tunnel".into()).response()
            });
            Ok::<_, Infallible>(response)
        }
    });
    server::serve_tls_connection(proxy, TokioIo::new(tls_stream), h2, service).await;
}

/// A TLS configuration with no certificate: the handshake ends in an alert. `None`
/// if rustls refuses to build one (then the connection is simply closed).
fn no_certificate() -> Option<Arc<ServerConfig>> {
    #[derive(Debug)]
    struct NoCertificate;
    impl ResolvesServerCert for NoCertificate {
        fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            None
        }
    }
    let builder = ServerConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .ok()?;
    Some(Arc::new(
        builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCertificate)),
    ))
}

/// The plain path: an HTTP/1.x request line, or a refusal.
async fn plain(proxy: &Arc<Proxy>, mut io: Idle<TcpStream>, first: u8, redirected: Redirected) {
    let mut head = vec![first];
    let deadline = tokio::time::Instant::now() + proxy.config.handshake_timeout;
    let mut chunk = [0u8; 1024];
    while !head.contains(&b'\n') && head.len() < MAX_REQUEST_LINE {
        match tokio::time::timeout_at(deadline, io.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => head.extend_from_slice(&chunk[..n]),
        }
    }
    if !is_request_line(&head) {
        let shown: String = String::from_utf8_lossy(&head[..head.len().min(32)])
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '.'
                }
            })
            .collect();
        let reason = format!("neither TLS nor an HTTP/1.x request (first bytes: `{shown}`)");
        return refused(proxy, redirected, Refused::NotTlsOrHttp, &reason);
    }
    let limits = &proxy.config.limits;
    let (io, ambiguity) = FramingWatch::new(
        Prefixed::new(head, io),
        limits.max_header_bytes,
        limits.max_headers,
    );
    let service_proxy = proxy.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = service_proxy.clone();
        let ambiguity = ambiguity.clone();
        async move { Ok::<_, Infallible>(plain_request(&proxy, req, redirected, &ambiguity).await) }
    });
    server::serve_http1(proxy, TokioIo::new(io), service).await;
}

/// Whether `head` starts with a complete HTTP/1.x request line (checked by httparse,
/// the parser hyper uses).
fn is_request_line(head: &[u8]) -> bool {
    let Some(end) = head.iter().position(|&b| b == b'\n') else {
        return false;
    };
    let mut probe = head[..=end].to_vec();
    probe.extend_from_slice(b"\r\n");
    let mut no_headers = [];
    matches!(
        httparse::Request::new(&mut no_headers).parse(&probe),
        Ok(httparse::Status::Complete(_))
    )
}

/// One plain-HTTP request on a redirected connection: `Host` names the target, the
/// original destination gives the port.
async fn plain_request(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    redirected: Redirected,
    ambiguity: &Ambiguity,
) -> Response<ProxyBody> {
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned());
    let mut exchange = Exchange {
        start: Instant::now(),
        client: redirected.client,
        target: Target {
            scheme: Scheme::Http,
            host: "-".to_owned(),
            port: redirected.original.port(),
            path: path.clone(),
        },
        metrics: proxy.metrics.clone(),
        original: Some(redirected.original),
    };
    if ambiguity.seen() {
        return pipeline::refuse(
            exchange.record(req.method().as_str()),
            &Refusal::AmbiguousFraming,
        );
    }
    exchange.target = match host_target(&req, redirected.original.port(), &path) {
        Ok(target) => target,
        Err(refusal) => return pipeline::refuse(exchange.record(req.method().as_str()), &refusal),
    };
    pipeline::forward(proxy, req, exchange).await
}

/// The target a redirected plain request names: its `Host` (required), on `port`
/// (a port in `Host` must be that one). An absolute-form URI must agree with it.
fn host_target(req: &Request<Incoming>, port: u16, path: &str) -> Result<Target, Refusal> {
    let host = req
        .headers()
        .get(http::header::HOST)
        .ok_or_else(|| {
            Refusal::BadRequest(
                "a redirected plain-HTTP request needs a Host header: it is the only thing that names where it is going".into(),
            )
        })?
        .to_str()
        .map_err(|_| Refusal::BadRequest("the Host header is not valid text".into()))?;
    let authority: http::uri::Authority = host
        .parse()
        .map_err(|_| Refusal::BadRequest(format!("the Host header `{host}` is not host[:port]")))?;
    if authority.as_str().contains('@') {
        return Err(Refusal::BadRequest(format!(
            "the Host header `{host}` carries user information"
        )));
    }
    if let Some(named) = authority.port_u16()
        && named != port
    {
        return Err(Refusal::Misdirected(format!(
            "the Host header names port {named}, but the connection was made to port {port}"
        )));
    }
    let mut target = Target::from_url(&format!("http://{}{path}", authority.host()))?;
    target.port = port;
    if let Some(uri_authority) = req.uri().authority()
        && !target.same_authority(uri_authority.as_str())
    {
        return Err(Refusal::Misdirected(format!(
            "the request URI names `{uri_authority}`, but its Host header `{host}`"
        )));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_told_from_other_protocols() {
        assert!(is_request_line(b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(is_request_line(b"POST /x?y HTTP/1.0\r\n"));
        assert!(is_request_line(b"GET / HTTP/1.1\n"));
        assert!(!is_request_line(b"SSH-2.0-OpenSSH_9.6\r\n"));
        assert!(!is_request_line(b"PRI * HTTP/2.0\r\n"));
        assert!(!is_request_line(b"GET / HTTP/1.1"));
        assert!(!is_request_line(b"\x00\x01\x02\n"));
        assert!(!is_request_line(b"EHLO mail.example\r\n"));
    }
}
