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

mod plain;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::Proxy;
use super::access::ACCESS_TARGET;
use super::connect;
use super::idle::Idle;
use super::prefixed::Prefixed;

/// `ENOENT`: `SO_ORIGINAL_DST` on a connection with no NAT entry (not redirected).
const NO_NAT_ENTRY: i32 = 2;
/// `ENOPROTOOPT`: no connection tracking in this kernel or namespace.
const NO_CONNTRACK: i32 = 92;

/// Why a redirected connection was refused before any request (metric label).
#[derive(Debug, Clone, Copy)]
pub(super) enum Refused {
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
pub(super) struct Redirected {
    pub(super) client: SocketAddr,
    pub(super) original: SocketAddr,
    pub(super) start: Instant,
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
            tls::serve(proxy, Prefixed::new(first.to_vec(), io), redirected).await;
        }
        Ok(Ok(1)) => plain::serve(proxy, io, first[0], redirected).await,
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
pub(super) fn refused(proxy: &Proxy, redirected: Redirected, why: Refused, reason: &str) {
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
