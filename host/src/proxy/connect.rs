//! CONNECT: decide the tunnel, then intercept it. [`decide`] and [`serve_intercepted`]
//! are also the transparent listener's TLS path (the SNI and original port stand in
//! for the CONNECT target).
//!
//! 1. The CONNECT target (`host:port`) is decided by the policy like any request
//!    (method `CONNECT`, no path). A denial is the CONNECT's answer: no TLS work is
//!    done for a host the policy does not route.
//! 2. The leaf certificate for the host is fetched from the cache (minted on first
//!    use), then `200` is answered and the connection upgraded.
//! 3. The first byte must open a TLS handshake (`0x16`); anything else gets a
//!    plain-text 400 and the tunnel is closed.
//! 4. TLS is accepted with that leaf; a ClientHello whose SNI names another host gets
//!    no certificate and the handshake fails. ALPN picks HTTP/2 or HTTP/1.1.
//! 5. Each request inside is checked to name the CONNECT target (`Host` or
//!    `:authority`, after normalisation) and goes through the pipeline as `https`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;

use super::access::{AccessRecord, Outcome};
use super::body::ProxyBody;
use super::dialect::Dialect;
use super::framing::{Ambiguity, FramingWatch};
use super::pipeline::{self, Exchange};
use super::prefixed::Prefixed;
use super::respond::Refusal;
use super::{Proxy, server};
use crate::policy::{self, Decision, Generation, Head, Scheme};
use crate::target::{Target, TargetError};

/// The first byte of a TLS handshake record.
pub(crate) const TLS_HANDSHAKE: u8 = 0x16;

/// What the policy (or the proxy on its behalf) decided about a tunnel.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Intercept the tunnel with this TLS configuration (the host's leaf).
    Intercept(Arc<ServerConfig>),
    /// The policy denied the tunnel (its JSON 403, or the status it chose).
    Deny(policy::Denial, Arc<Generation>),
    /// The proxy refused it (bad target, address guard, internal error).
    Refuse(Refusal),
}

impl Verdict {
    /// The answer for `record` under a refusing verdict: the CONNECT's answer in
    /// explicit mode, and in transparent mode the answer to every request inside the
    /// TLS session. `None` for [`Verdict::Intercept`].
    pub(crate) fn refusal(&self, record: AccessRecord) -> Option<Response<ProxyBody>> {
        match self {
            Verdict::Intercept(_) => None,
            Verdict::Deny(denial, generation) => {
                Some(pipeline::denied(record, denial, generation, &Dialect::Http))
            }
            Verdict::Refuse(refusal) => Some(pipeline::refuse(record, refusal)),
        }
    }
}

/// A tunnel's decision and its access-log line (method `CONNECT`), filled in with the
/// decision; the caller sets the status and emits it.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub(crate) record: AccessRecord,
    pub(crate) verdict: Verdict,
}

/// Decide a tunnel to `exchange.target`: the address guard for an IP literal, then the
/// policy (method `CONNECT`, no path, `headers`), then the leaf certificate. The one
/// decision for explicit CONNECT and for a transparent TLS connection's SNI.
pub(crate) fn decide(proxy: &Proxy, exchange: &Exchange, headers: Vec<(String, String)>) -> Tunnel {
    let mut record = exchange.record("CONNECT");
    if let Err(refusal) = pipeline::check_destination(proxy, &exchange.target) {
        return Tunnel {
            record,
            verdict: Verdict::Refuse(refusal),
        };
    }
    let request =
        policy::Request::new("CONNECT", exchange.target.clone(), headers, exchange.client);
    let generation = proxy.generation();
    record.generation = Some(pipeline::generation_id(&generation));
    let deciding = Instant::now();
    // A CONNECT never gets a body phase: `need-body` for one is refused as an
    // invalid verdict by the generation.
    let decision = match generation.decide(&request) {
        Head::Decided(decision) => decision,
        Head::NeedBody(_) => Decision::Deny(policy::Denial::host(
            policy::DenyKind::InvalidVerdict,
            "the egress policy asked for the body of a CONNECT",
            None,
        )),
    };
    proxy.metrics.decided(deciding.elapsed());
    record.shadow = super::shadow::ask(proxy.shadow(), request, &decision, None);
    let (decision, would_deny) = super::report::apply(proxy.config.enforcement, decision);
    match decision {
        Decision::Deny(denial) => {
            return Tunnel {
                record,
                verdict: Verdict::Deny(denial, generation),
            };
        }
        Decision::Allow { rule, annotations } => {
            record.outcome = Outcome::Allow;
            record.rule = rule;
            record.annotations = annotations;
        }
        Decision::Inject {
            rule, annotations, ..
        } => {
            record.outcome = Outcome::Inject;
            record.rule = rule;
            record.annotations = annotations;
        }
    }
    super::report::mark(&mut record, would_deny);
    let verdict = match proxy.tls.server_config_for(&exchange.target.host) {
        Ok(config) => Verdict::Intercept(config),
        Err(err) => Verdict::Refuse(Refusal::Internal(err.to_string())),
    };
    Tunnel { record, verdict }
}

/// Answer a CONNECT request: deny it, or accept it and intercept the tunnel.
pub(crate) async fn handle(
    proxy: &Arc<Proxy>,
    mut req: Request<Incoming>,
    client: SocketAddr,
    start: Instant,
) -> Response<ProxyBody> {
    let authority = req.uri().authority().map(|a| a.as_str().to_owned());
    let target = match authority.as_deref().map(Target::from_authority) {
        Some(Ok(target)) => target,
        Some(Err(err)) => {
            let exchange = unknown_target(proxy, client, start, authority.as_deref().unwrap_or(""));
            return pipeline::refuse(exchange.record("CONNECT"), &Refusal::BadTarget(err));
        }
        None => {
            let exchange = unknown_target(proxy, client, start, "");
            let err = TargetError::Host(req.uri().to_string(), "CONNECT needs host:port".into());
            return pipeline::refuse(exchange.record("CONNECT"), &Refusal::BadTarget(err));
        }
    };
    let exchange = Exchange {
        start,
        client,
        target,
        metrics: proxy.metrics.clone(),
        original: None,
    };
    let policy_headers = match super::headers::for_policy(req.headers()) {
        Ok(h) => h,
        Err(reason) => {
            return pipeline::refuse(exchange.record("CONNECT"), &Refusal::BadRequest(reason));
        }
    };
    let Tunnel {
        mut record,
        verdict,
    } = decide(proxy, &exchange, policy_headers);
    let tls = match verdict {
        Verdict::Intercept(tls) => tls,
        refusing => {
            return refusing
                .refusal(record)
                .unwrap_or_else(|| Refusal::Internal("no tunnel answer".into()).response());
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let tunnel_proxy = proxy.clone();
    let target = exchange.target.clone();
    proxy.tasks.spawn(async move {
        if let Err(reason) = intercept(&tunnel_proxy, on_upgrade, tls, target.clone(), client).await
        {
            tracing::debug!(%client, host = %target.host, port = target.port, %reason, "tunnel closed");
        }
    });
    record.status = 200;
    Response::new(ProxyBody::empty().logged(record))
}

fn unknown_target(proxy: &Proxy, client: SocketAddr, start: Instant, authority: &str) -> Exchange {
    Exchange {
        metrics: proxy.metrics.clone(),
        start,
        client,
        target: Target {
            scheme: Scheme::Https,
            host: authority.to_owned(),
            port: 0,
            path: String::new(),
        },
        original: None,
    }
}

/// Run the intercepted tunnel: TLS, then HTTP/2 or HTTP/1.1 inside.
async fn intercept(
    proxy: &Arc<Proxy>,
    on_upgrade: OnUpgrade,
    tls: Arc<ServerConfig>,
    target: Target,
    client: SocketAddr,
) -> Result<(), String> {
    let upgraded = on_upgrade
        .await
        .map_err(|e| format!("upgrade failed: {e}"))?;
    let mut io = TokioIo::new(upgraded);
    let handshake_timeout = proxy.config.handshake_timeout;
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(handshake_timeout, io.read(&mut first)).await;
    match read {
        Err(_) => return Err("no TLS handshake in time".into()),
        Ok(Err(e)) => return Err(format!("read failed: {e}")),
        Ok(Ok(0)) => return Err("client closed the tunnel".into()),
        Ok(Ok(_)) if first[0] != TLS_HANDSHAKE => {
            let _ = io.write_all(not_tls_response().as_bytes()).await;
            let _ = io.shutdown().await;
            return Err("the client sent non-TLS bytes into the tunnel; refused".into());
        }
        Ok(Ok(_)) => {}
    }
    let stream = Prefixed::new(first.to_vec(), io);
    let accept = TlsAcceptor::from(tls).accept(stream);
    let tls_stream = match tokio::time::timeout(handshake_timeout, accept).await {
        Err(_) => return Err("TLS handshake timed out".into()),
        Ok(Err(e)) => {
            return Err(format!(
                "TLS handshake failed (SNI mismatch or client distrusts the CA?): {e}"
            ));
        }
        Ok(Ok(stream)) => stream,
    };
    serve_intercepted(proxy, tls_stream, target, client, None).await;
    Ok(())
}

/// Serve HTTP/2 or HTTP/1.1 (by ALPN) inside an accepted TLS session to `target`:
/// every request must name `target` and goes through the pipeline as `https`.
/// `original` is a redirected connection's original destination (for the log).
pub(crate) async fn serve_intercepted<S>(
    proxy: &Arc<Proxy>,
    tls_stream: tokio_rustls::server::TlsStream<S>,
    target: Target,
    client: SocketAddr,
    original: Option<SocketAddr>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let connect = Arc::new(target);
    let limits = &proxy.config.limits;
    let (io, ambiguity) =
        FramingWatch::new(tls_stream, limits.max_header_bytes, limits.max_headers);
    let service_proxy = proxy.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let proxy = service_proxy.clone();
        let connect = connect.clone();
        let ambiguity = ambiguity.clone();
        async move {
            Ok::<_, Infallible>(inner(&proxy, req, &connect, client, original, &ambiguity).await)
        }
    });
    server::serve_tls_connection(proxy, TokioIo::new(io), h2, service).await;
}

/// What a client that sends plain bytes into a tunnel is told, before it is closed.
fn not_tls_response() -> String {
    let body = "{\"error\":\"bad_request\",\"reason\":\"the egress proxy intercepts TLS only: a CONNECT tunnel must start with a TLS handshake\"}\n";
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// One request inside a tunnel.
async fn inner(
    proxy: &Arc<Proxy>,
    req: Request<Incoming>,
    connect: &Target,
    client: SocketAddr,
    original: Option<SocketAddr>,
    ambiguity: &Ambiguity,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let path = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    // A path that cannot be normalised is refused below, and logged as sent.
    let (target, bad_path) = match connect.with_path(path) {
        Ok(target) => (target, None),
        Err(err) => (
            Target {
                path: path.to_owned(),
                ..connect.clone()
            },
            Some(err),
        ),
    };
    let exchange = Exchange {
        start,
        client,
        target,
        metrics: proxy.metrics.clone(),
        original,
    };
    if ambiguity.seen() {
        return pipeline::refuse(
            exchange.record(req.method().as_str()),
            &Refusal::AmbiguousFraming,
        );
    }
    if let Err(refusal) = check_authority(&req, connect) {
        return pipeline::refuse(exchange.record(req.method().as_str()), &refusal);
    }
    if let Some(err) = bad_path {
        return pipeline::refuse(
            exchange.record(req.method().as_str()),
            &Refusal::BadTarget(err),
        );
    }
    pipeline::forward(proxy, req, exchange).await
}

/// The request must name the CONNECT target: its absolute URI (HTTP/2 `:authority`
/// or an HTTP/1.1 absolute-form) and its `Host` header, whichever are present, and at
/// least one of them.
fn check_authority(req: &Request<Incoming>, connect: &Target) -> Result<(), Refusal> {
    if let Some(scheme) = req.uri().scheme_str()
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(Refusal::Misdirected(format!(
            "a request inside a TLS tunnel must be https, not {scheme}"
        )));
    }
    let uri_authority = req.uri().authority().map(|a| a.as_str());
    let host_header = match req.headers().get(http::header::HOST) {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| Refusal::BadRequest("the Host header is not valid text".into()))?,
        ),
        None => None,
    };
    if uri_authority.is_none() && host_header.is_none() {
        return Err(Refusal::BadRequest("the request names no host".into()));
    }
    for named in [uri_authority, host_header].into_iter().flatten() {
        if !connect.same_authority(named) {
            return Err(Refusal::Misdirected(format!(
                "the request names `{named}`, but the tunnel was opened to {}:{}",
                connect.host, connect.port
            )));
        }
    }
    Ok(())
}
