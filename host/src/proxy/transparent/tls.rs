//! The transparent TLS path: the whole ClientHello, its SNI, the CONNECT decision
//! ([`connect::decide`]), then interception, or the refusal served over TLS.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::LazyConfigAcceptor;

use super::{Redirected, Refused, refused};
use crate::proxy::connect::{self, Tunnel, Verdict};
use crate::proxy::pipeline::Exchange;
use crate::proxy::respond::Refusal;
use crate::proxy::{Proxy, server};
use crate::target::Target;

/// The TLS path: ClientHello, SNI, the CONNECT decision, then intercept or deny.
pub(super) async fn serve<S>(proxy: &Arc<Proxy>, io: S, redirected: Redirected)
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
fn log_refusal(verdict: &Verdict, record: crate::proxy::access::AccessRecord) {
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
