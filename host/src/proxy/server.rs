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
use tokio::net::TcpListener;

use super::body::ProxyBody;
use super::pipeline::{self, Exchange};
use super::respond::Refusal;
use super::{Proxy, connect};
use crate::target::Target;

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
    pub(crate) fn new(header_read_timeout: Duration) -> Self {
        let h1 = |mut builder: auto::Builder<TokioExecutor>| {
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .keep_alive(true);
            builder
        };
        let mut inner_h2 = auto::Builder::new(TokioExecutor::new()).http2_only();
        inner_h2.http2().timer(TokioTimer::new());
        Self {
            outer: h1(auto::Builder::new(TokioExecutor::new()).http1_only()),
            inner_h1: h1(auto::Builder::new(TokioExecutor::new()).http1_only()),
            inner_h2,
        }
    }
}

/// Accept and serve until `shutdown` resolves, then drain.
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    proxy
        .accepting
        .store(true, std::sync::atomic::Ordering::Release);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, client)) => {
                    let _ = stream.set_nodelay(true);
                    let proxy_for_task = proxy.clone();
                    let open = proxy.metrics.connection();
                    proxy.tasks.spawn(async move {
                        let _open = open;
                        serve_client(&proxy_for_task, TokioIo::new(stream), client).await;
                    });
                }
                Err(err) => {
                    tracing::warn!(%err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
    proxy
        .accepting
        .store(false, std::sync::atomic::Ordering::Release);
    drop(listener);
    drain(&proxy).await;
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
async fn serve_client(proxy: &Arc<Proxy>, io: TokioIo<tokio::net::TcpStream>, client: SocketAddr) {
    let service_proxy = proxy.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = service_proxy.clone();
        async move { Ok::<_, Infallible>(handle(&proxy, req, client).await) }
    });
    let conn = proxy
        .builders
        .outer
        .serve_connection_with_upgrades(io, service);
    drive(proxy, conn).await;
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
) -> Response<ProxyBody> {
    let start = Instant::now();
    if req.method() == http::Method::CONNECT {
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
    };
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
