//! Accepting connections, serving them, and draining them on shutdown.
//!
//! Every connection (and every tunnel and upgraded stream spawned from one) runs as a
//! task on the proxy's `TaskTracker`. On shutdown the listener is dropped (no new
//! connections), every connection is told to finish gracefully (HTTP/1.1: close after
//! the in-flight response; HTTP/2: GOAWAY), and the proxy waits up to the drain
//! timeout for them; whatever is still running then is cut off.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::body::ProxyBody;
use super::framing::{Ambiguity, FramingWatch};
use super::idle::Idle;
use super::pipeline::{self, Exchange};
use super::respond::Refusal;
use super::{Proxy, connect};
use crate::target::Target;

/// Why a connection over the limit is refused.
const SHED_REASON: &str = "the egress proxy is at its connection limit (--max-connections)";
/// How long a refused connection is given to send its request head.
const SHED_READ: Duration = Duration::from_millis(100);
/// Bound on the whole refusal.
const SHED_LINGER: Duration = Duration::from_secs(2);

/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// HTTP server settings for client connections and for intercepted tunnels.
#[derive(Debug)]
pub(crate) struct Builders {
    outer: auto::Builder<TokioExecutor>,
    inner_h1: auto::Builder<TokioExecutor>,
    inner_h2: auto::Builder<TokioExecutor>,
}

impl Builders {
    pub(crate) fn new(limits: &super::Limits) -> Self {
        let h1 = |mut builder: auto::Builder<TokioExecutor>| {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_headers(limits.max_headers)
                // hyper refuses buffers under 8 KiB; the head must fit the buffer.
                .max_buf_size(limits.max_header_bytes.max(8192))
                .keep_alive(true);
            builder
        };
        let mut inner_h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        inner_h2
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_streams_per_connection)
            .initial_stream_window_size(limits.stream_window)
            .initial_connection_window_size(limits.stream_window.saturating_mul(4))
            .max_send_buf_size(limits.stream_window as usize);
        Self {
            outer: h1(auto::Builder::new(TokioExecutor::new()).http1_only()),
            inner_h1: h1(auto::Builder::new(TokioExecutor::new()).http1_only()),
            inner_h2,
        }
    }
}

/// Which listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    /// The explicit proxy (`--listen`): absolute-form requests and CONNECT.
    Explicit,
    /// Connections redirected by iptables/nftables (`--transparent-listen`).
    Transparent,
}

/// Accept on the explicit listener (and the transparent one, if any) until `shutdown`
/// resolves, then drain. Both share the connection limit, the task tracker and the
/// drain.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    transparent: Option<TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    proxy
        .accepting
        .store(true, std::sync::atomic::Ordering::Release);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted.map(|a| (a, Listener::Explicit)),
            accepted = accept_optional(transparent.as_ref()) => {
                accepted.map(|a| (a, Listener::Transparent))
            }
        };
        match accepted {
            Ok(((stream, client), kind)) => accept(&proxy, stream, client, kind),
            Err(err) => {
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
    proxy
        .accepting
        .store(false, std::sync::atomic::Ordering::Release);
    drop(listener);
    drop(transparent);
    drain(&proxy).await;
}

/// Accept on `listener`, or never if there is none.
async fn accept_optional(
    listener: Option<&TcpListener>,
) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serve one accepted connection as a task, or shed it at the connection limit.
fn accept(proxy: &Arc<Proxy>, stream: TcpStream, client: SocketAddr, kind: Listener) {
    let _ = stream.set_nodelay(true);
    let Ok(permit) = proxy.connections.clone().try_acquire_owned() else {
        proxy.metrics.shed();
        match kind {
            Listener::Explicit => {
                proxy.tasks.spawn(shed(stream, client));
            }
            // A redirected client may be speaking TLS or anything else: an HTTP 503
            // would be noise to it. Closing is the clearest answer.
            Listener::Transparent => {
                tracing::warn!(%client, "connection limit reached; closed a redirected connection");
                drop(stream);
            }
        }
        return;
    };
    let proxy_for_task = proxy.clone();
    let open = proxy.metrics.connection();
    proxy.tasks.spawn(async move {
        let _open = (open, permit);
        match kind {
            Listener::Explicit => {
                let stream = Idle::new(stream, proxy_for_task.config.limits.idle_timeout);
                serve_client(&proxy_for_task, stream, client).await;
            }
            Listener::Transparent => {
                super::transparent::serve_connection(&proxy_for_task, stream, client).await;
            }
        }
    });
}

/// Answer a connection over the limit with a `503` and close it, reading (and
/// dropping) what the client sent first so the answer is not lost to a reset.
async fn shed(mut stream: TcpStream, client: SocketAddr) {
    let body = format!(
        "{{\"error\":\"overloaded\",\"reason\":\"{SHED_REASON}\",\"hint\":\"Retry shortly.\"}}\n"
    );
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncache-control: no-store\r\nretry-after: 1\r\n{}: {SHED_REASON}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        super::ERROR_HEADER,
        body.len()
    );
    tracing::warn!(%client, "connection limit reached; answered 503");
    let exchange = async {
        let mut scratch = [0u8; 4096];
        // Whatever the client sent first (usually the whole request head).
        let _ = tokio::time::timeout(SHED_READ, stream.read(&mut scratch)).await;
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut scratch).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(SHED_LINGER, exchange).await;
}

async fn drain(proxy: &Proxy) {
    let in_flight = proxy.tasks.len();
    tracing::info!(
        connections = in_flight,
        timeout = %humantime::format_duration(proxy.config.drain_timeout),
        "shutting down: no longer accepting, draining in-flight requests"
    );
    proxy.shutdown.cancel();
    proxy.tasks.close();
    if tokio::time::timeout(proxy.config.drain_timeout, proxy.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = proxy.tasks.len(),
            "drain timeout reached; closing the remaining connections"
        );
    }
    proxy.halt.cancel();
}

/// Serve one client connection (HTTP/1.1: absolute-form requests and CONNECT).
async fn serve_client(proxy: &Arc<Proxy>, io: Idle<TcpStream>, client: SocketAddr) {
    let limits = &proxy.config.limits;
    let (io, ambiguity) = FramingWatch::new(io, limits.max_header_bytes, limits.max_headers);
    let io = TokioIo::new(io);
    let service_proxy = proxy.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = service_proxy.clone();
        let ambiguity = ambiguity.clone();
        async move { Ok::<_, Infallible>(handle(&proxy, req, client, &ambiguity).await) }
    });
    serve_http1(proxy, io, service).await;
}

/// Serve a plain HTTP/1.1 client connection (the explicit listener's, and the
/// transparent listener's plain-HTTP path) with the client-connection settings.
pub(crate) async fn serve_http1<I, S>(proxy: &Arc<Proxy>, io: I, service: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    drive(
        proxy,
        proxy
            .builders
            .outer
            .serve_connection_with_upgrades(io, service),
    )
    .await;
}

/// Serve the HTTP connection inside an intercepted tunnel.
pub(crate) async fn serve_tls_connection<I, S>(proxy: &Arc<Proxy>, io: I, h2: bool, service: S)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<ProxyBody>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let builder = if h2 {
        &proxy.builders.inner_h2
    } else {
        &proxy.builders.inner_h1
    };
    drive(proxy, builder.serve_connection_with_upgrades(io, service)).await;
}

/// Run a connection to completion; on shutdown, finish it gracefully; once the
/// drain time is over, drop it.
async fn drive<C>(proxy: &Proxy, conn: C)
where
    C: GracefulConnection,
    C::Error: std::fmt::Display,
{
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = proxy.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                result = conn.as_mut() => result,
                () = proxy.halt.cancelled() => return,
            }
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, "connection ended with an error");
    }
}

/// A request on a client connection: CONNECT, or a plain-HTTP absolute-form request.
async fn handle(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    client: SocketAddr,
    ambiguity: &Ambiguity,
) -> Response<ProxyBody> {
    let start = Instant::now();
    if req.method() == http::Method::CONNECT && !ambiguity.seen() {
        return connect::handle(proxy, req, client, start).await;
    }
    let path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    let mut exchange = Exchange {
        start,
        client,
        target: Target {
            scheme: crate::policy::Scheme::Http,
            host: req.uri().host().unwrap_or("-").to_owned(),
            port: req.uri().port_u16().unwrap_or(0),
            path,
        },
        metrics: proxy.metrics.clone(),
        original: None,
    };
    if ambiguity.seen() {
        return pipeline::refuse(
            exchange.record(req.method().as_str()),
            &Refusal::AmbiguousFraming,
        );
    }
    if req.uri().scheme().is_none() {
        return pipeline::refuse(
            exchange.record(req.method().as_str()),
            &Refusal::NotProxyRequest,
        );
    }
    exchange.target = match Target::from_url(&req.uri().to_string()) {
        Ok(target) => target,
        Err(err) => {
            return pipeline::refuse(
                exchange.record(req.method().as_str()),
                &Refusal::BadTarget(err),
            );
        }
    };
    if let Some(host) = req.headers().get(http::header::HOST)
        && !host
            .to_str()
            .is_ok_and(|h| exchange.target.same_authority(h))
    {
        let refusal = Refusal::Misdirected(format!(
            "the Host header does not name the request's target {}:{}",
            exchange.target.host, exchange.target.port
        ));
        return pipeline::refuse(exchange.record(req.method().as_str()), &refusal);
    }
    pipeline::forward(proxy, req, exchange).await
}
