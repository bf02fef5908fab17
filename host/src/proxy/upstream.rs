//! The upstream side: pooled HTTP/1.1 and HTTP/2 clients that verify upstream
//! certificates, optionally dialling through an upstream HTTP proxy.
//!
//! Trust: the system roots (`rustls-native-certs`: `SSL_CERT_FILE`, `SSL_CERT_DIR`, or
//! the distribution's bundle) plus an optional extra PEM bundle (`--upstream-ca`,
//! `EGRESS_PROXY_UPSTREAM_CA`). Connections are pooled per scheme, host and port;
//! HTTP/2 is used when the server offers it in ALPN.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::forward_body::ForwardBody;
use http::Uri;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;

use super::idle::Idle;
use crate::guard::{AddressGuard, GuardError};

/// Default bound on keeping an idle pooled upstream connection.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle pooled connections kept per upstream host.
pub const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// Upstream settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Extra CA certificates (PEM) trusted for upstream servers, besides the system
    /// roots.
    pub extra_ca: Option<PathBuf>,
    /// Trust the system roots (default true; tests turn it off).
    pub system_roots: bool,
    /// Dial upstreams through this HTTP proxy (CONNECT), e.g. `http://proxy:3128`.
    pub proxy: Option<Uri>,
    /// Bound on establishing a TCP connection (per address tried).
    pub connect_timeout: Duration,
    /// Bound on waiting for the upstream's response headers, connection included.
    pub response_timeout: Duration,
    /// Which addresses may be dialled (default: public addresses only).
    pub guard: Arc<AddressGuard>,
    /// How long an idle pooled connection is kept.
    pub pool_idle_timeout: Duration,
    /// Fixed socket addresses for some `(host, port)` pairs, dialled instead of
    /// resolving the host (like curl's `--connect-to`); TLS still verifies the host's
    /// certificate and the address guard still applies.
    pub connect_to: HashMap<(String, u16), SocketAddr>,
}

/// Default [`UpstreamConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`UpstreamConfig::response_timeout`]: generous, because model APIs can
/// think for minutes before answering a non-streaming request.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            extra_ca: None,
            system_roots: true,
            proxy: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
            guard: Arc::default(),
            pool_idle_timeout: POOL_IDLE_TIMEOUT,
            connect_to: HashMap::new(),
        }
    }
}

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// The extra CA bundle could not be read or holds no certificate.
    #[error("upstream CA bundle {}: {reason}", path.display())]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// No trust anchors at all.
    #[error(
        "no trusted root certificates for upstream servers: the system has none (install ca-certificates) and no --upstream-ca was given"
    )]
    NoRoots,
    /// The upstream proxy URL is unusable.
    #[error("upstream proxy `{0}`: only http://host:port proxies are supported")]
    Proxy(String),
    /// rustls refused the configuration.
    #[error("upstream TLS configuration: {0}")]
    Tls(String),
}

type Connector = HttpsConnector<Dial>;

/// The pooled upstream clients.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// HTTP/2 or HTTP/1.1, by ALPN.
    pooled: Client<Connector, ForwardBody>,
    /// HTTP/1.1 only: for upgrades (WebSocket), which HTTP/2 cannot carry.
    http1: Client<Connector, ForwardBody>,
    response_timeout: Duration,
}

impl Upstream {
    /// Build the clients. Reads the extra CA bundle and the system roots once.
    /// Connections with no bytes moving for `idle_timeout` are closed.
    pub fn new(
        config: &UpstreamConfig,
        idle_timeout: Duration,
    ) -> Result<Self, UpstreamSetupError> {
        let roots = root_store(config)?;
        let tls = |alpn_h2: bool| -> Result<Connector, UpstreamSetupError> {
            let tls_config =
                rustls::ClientConfig::builder_with_provider(crate::tls::crypto_provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| UpstreamSetupError::Tls(e.to_string()))?
                    .with_root_certificates(roots.clone())
                    .with_no_client_auth();
            let builder = HttpsConnectorBuilder::new()
                .with_tls_config(tls_config)
                .https_or_http();
            let dial = Dial::new(config, idle_timeout)?;
            Ok(if alpn_h2 {
                builder.enable_all_versions().wrap_connector(dial)
            } else {
                builder.enable_http1().wrap_connector(dial)
            })
        };
        let client = |connector: Connector| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(config.pool_idle_timeout)
                .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
                .pool_timer(hyper_util::rt::TokioTimer::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .build(connector)
        };
        Ok(Self {
            pooled: client(tls(true)?),
            http1: client(tls(false)?),
            response_timeout: config.response_timeout,
        })
    }

    /// Send a request and wait for the response headers, within the response timeout.
    /// `upgrade` selects the HTTP/1.1-only client.
    pub async fn send(
        &self,
        req: http::Request<ForwardBody>,
        upgrade: bool,
    ) -> Result<http::Response<Incoming>, UpstreamError> {
        let client = if upgrade { &self.http1 } else { &self.pooled };
        match tokio::time::timeout(self.response_timeout, client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(self.response_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(err)) => Err(UpstreamError::classify(&err)),
        }
    }
}

/// Why an upstream exchange failed, in the words the client will be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made (DNS, refused, TLS verification, proxy refused).
    #[error("could not connect to the upstream server: {0}")]
    Connect(String),
    /// Connecting took too long.
    #[error("timed out connecting to the upstream server")]
    ConnectTimeout,
    /// The address guard refused every address of the destination.
    #[error("{0}")]
    Refused(GuardError),
    /// The upstream did not send response headers in time.
    #[error("the upstream server did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// The connection broke before a response arrived.
    #[error("the upstream server closed the connection or sent an invalid response: {0}")]
    Protocol(String),
}

impl UpstreamError {
    fn classify(err: &hyper_util::client::legacy::Error) -> Self {
        let chain = error_chain(err);
        let mut source: Option<&dyn StdError> = Some(err);
        while let Some(e) = source {
            if let Some(refused) = e.downcast_ref::<GuardError>() {
                return UpstreamError::Refused(refused.clone());
            }
            source = e.source();
        }
        if err.is_connect() {
            if chain.contains("timed out") || chain.contains("timeout") {
                UpstreamError::ConnectTimeout
            } else {
                UpstreamError::Connect(chain)
            }
        } else {
            UpstreamError::Protocol(chain)
        }
    }

    /// 504 for timeouts, 502 otherwise.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::ConnectTimeout | UpstreamError::Timeout(_) => {
                http::StatusCode::GATEWAY_TIMEOUT
            }
            UpstreamError::Refused(_) => http::StatusCode::FORBIDDEN,
            UpstreamError::Connect(_) | UpstreamError::Protocol(_) => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// An error and its sources, `: `-separated, without repeats.
fn error_chain(err: &dyn StdError) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn StdError> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

fn root_store(config: &UpstreamConfig) -> Result<RootCertStore, UpstreamSetupError> {
    let mut roots = RootCertStore::empty();
    if config.system_roots {
        let found = rustls_native_certs::load_native_certs();
        for err in &found.errors {
            tracing::debug!(%err, "while loading system root certificates");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        tracing::debug!(added, ignored, "system root certificates loaded");
    }
    if let Some(path) = &config.extra_ca {
        for cert in read_bundle(path)? {
            roots.add(cert).map_err(|e| UpstreamSetupError::Bundle {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(UpstreamSetupError::NoRoots);
    }
    Ok(roots)
}

fn read_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamSetupError> {
    let bad = |reason: String| UpstreamSetupError::Bundle {
        path: path.to_owned(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// Opens the TCP connection to an upstream: directly, or through a CONNECT tunnel of
/// an upstream proxy. TLS is layered on top by the `HttpsConnector`.
///
/// Direct connections go through the address guard: a host name is resolved once, the
/// addresses the guard refuses are dropped (all refused → the connection fails with
/// the [`GuardError`]), and the remaining ones are dialled as resolved. Through an
/// upstream proxy, name resolution is the proxy's; only IP-literal targets are checked.
#[derive(Debug, Clone)]
pub struct Dial {
    guard: Arc<AddressGuard>,
    connect_to: Arc<HashMap<(String, u16), SocketAddr>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    tunnel: Option<Tunnel<HttpConnector>>,
}

impl Dial {
    fn new(config: &UpstreamConfig, idle_timeout: Duration) -> Result<Self, UpstreamSetupError> {
        let tunnel = match &config.proxy {
            None => None,
            Some(proxy) => {
                if proxy.scheme_str() != Some("http") || proxy.host().is_none() {
                    return Err(UpstreamSetupError::Proxy(proxy.to_string()));
                }
                let mut direct = HttpConnector::new();
                configure(&mut direct, config.connect_timeout);
                Some(Tunnel::new(proxy.clone(), direct))
            }
        };
        Ok(Self {
            guard: config.guard.clone(),
            connect_to: Arc::new(config.connect_to.clone()),
            connect_timeout: config.connect_timeout,
            idle_timeout,
            tunnel,
        })
    }
}

fn configure<R>(connector: &mut HttpConnector<R>, connect_timeout: Duration) {
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
}

type BoxError = Box<dyn StdError + Send + Sync>;

impl tower_service::Service<Uri> for Dial {
    type Response = TokioIo<Idle<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Both connectors are always ready (HttpConnector's poll_ready is a no-op).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let port = dst
            .port_u16()
            .unwrap_or(if dst.scheme_str() == Some("http") {
                80
            } else {
                443
            });
        let host = dst
            .host()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or_default();
        let pinned = self.connect_to.get(&(host.to_owned(), port)).copied();
        let literal = pinned.or_else(|| host.parse::<IpAddr>().ok().map(|ip| (ip, port).into()));
        if let Some(addr) = literal
            && let Err(refused) = self.guard.check(addr)
        {
            return Box::pin(async move { Err(BoxError::from(refused)) });
        }
        let idle = self.idle_timeout;
        let wrap = move |io: TokioIo<TcpStream>| TokioIo::new(Idle::new(io.into_inner(), idle));
        if let Some(tunnel) = &mut self.tunnel {
            let fut = tunnel.call(dst);
            return Box::pin(async move { fut.await.map(wrap).map_err(BoxError::from) });
        }
        // A pinned address is dialled as a literal (TLS above still names the host).
        let dst = match pinned {
            Some(addr) => match format!("http://{addr}").parse::<Uri>() {
                Ok(uri) => uri,
                Err(err) => return Box::pin(async move { Err(BoxError::from(err)) }),
            },
            None => dst,
        };
        let mut direct = HttpConnector::new_with_resolver(GuardedResolver {
            guard: self.guard.clone(),
            port,
        });
        configure(&mut direct, self.connect_timeout);
        Box::pin(async move { direct.call(dst).await.map(wrap).map_err(BoxError::from) })
    }
}

/// The system resolver, keeping only the addresses the guard allows for one port.
#[derive(Debug, Clone)]
struct GuardedResolver {
    guard: Arc<AddressGuard>,
    port: u16,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        let port = self.port;
        let host = name.as_str().to_owned();
        let lookup = GaiResolver::new().call(name);
        Box::pin(async move {
            let mut allowed = Vec::new();
            let mut refused = None;
            for addr in lookup.await? {
                let addr = SocketAddr::new(addr.ip(), port);
                match guard.check(addr) {
                    Ok(()) => allowed.push(addr),
                    Err(err) => {
                        tracing::debug!(%host, %addr, %err, "resolved address refused");
                        refused.get_or_insert(err);
                    }
                }
            }
            match refused {
                Some(err) if allowed.is_empty() => Err(BoxError::from(err)),
                _ => Ok(allowed.into_iter()),
            }
        })
    }
}

/// Shared handle.
pub type SharedUpstream = Arc<Upstream>;
