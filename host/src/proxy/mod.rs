//! The data plane: an explicit forward proxy that intercepts TLS and asks the policy
//! about every request.
//!
//! - [`Proxy`]: everything a request needs (the published policy generation, the leaf
//!   certificate cache, the upstream clients, settings); [`Proxy::serve`] runs it on
//!   an already-bound listener until a shutdown future resolves, then drains.
//! - `server`: accepting, serving client connections (HTTP/1.1), graceful shutdown.
//! - `connect`: CONNECT: the tunnel decision, TLS interception, requests inside.
//! - `pipeline`: the one request pipeline (strip, decide, deny / inject / forward).
//! - `headers`: credential and hop-by-hop header removal.
//! - [`upstream`]: pooled HTTP/1.1 + HTTP/2 clients with verified TLS, optional
//!   upstream proxy.
//! - `respond`: deny responses and the proxy's own error responses, status by cause.
//! - `body`, `access`: streamed response bodies and the access-log line each writes
//!   when it ends.

mod access;
mod body;
mod connect;
mod headers;
mod pipeline;
mod prefixed;
mod respond;
mod server;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::ACCESS_TARGET;
pub use body::ProxyBody;
pub use respond::{DENY_HEADER, DENY_HINT, ERROR_HEADER};
pub use upstream::{UpstreamConfig, UpstreamError, UpstreamSetupError};

use crate::policy::Generation;
use crate::tls::{CertificateAuthority, MintingResolver};

/// Default bound on draining in-flight requests at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on a client's TLS handshake inside a tunnel.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on a client sending a request's headers (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Data-plane settings.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Upstream clients.
    pub upstream: UpstreamConfig,
    /// How long shutdown waits for in-flight requests. Default
    /// [`DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// Bound on the TLS handshake inside a tunnel. Default
    /// [`DEFAULT_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
    /// Bound on receiving a request's headers. Default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// Leaf certificates kept (hosts). Default
    /// [`crate::tls::DEFAULT_LEAF_CACHE_CAPACITY`].
    pub leaf_cache_capacity: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            upstream: UpstreamConfig::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            leaf_cache_capacity: crate::tls::DEFAULT_LEAF_CACHE_CAPACITY,
        }
    }
}

/// The running proxy's shared state.
#[derive(Debug)]
pub struct Proxy {
    policy: watch::Receiver<Arc<Generation>>,
    tls: MintingResolver,
    upstream: upstream::Upstream,
    config: ProxyConfig,
    builders: server::Builders,
    /// Every connection, tunnel and upgraded stream.
    tasks: TaskTracker,
    /// Cancelled when shutdown starts: connections finish gracefully.
    shutdown: CancellationToken,
    /// Cancelled when the drain time is over: whatever still runs is dropped.
    halt: CancellationToken,
    /// What the data plane records for `/metrics`.
    metrics: Arc<crate::metrics::Metrics>,
    /// True while the listener accepts (for readiness).
    accepting: std::sync::atomic::AtomicBool,
}

impl Proxy {
    /// A proxy deciding with the generation currently published on `policy` (a
    /// reload publishes a new one; requests in flight keep the one they started
    /// with), intercepting TLS with certificates from `ca`.
    pub fn new(
        config: ProxyConfig,
        policy: watch::Receiver<Arc<Generation>>,
        ca: Arc<CertificateAuthority>,
    ) -> Result<Arc<Self>, UpstreamSetupError> {
        let upstream = upstream::Upstream::new(&config.upstream)?;
        Ok(Arc::new(Self {
            policy,
            tls: MintingResolver::with_capacity(ca, config.leaf_cache_capacity),
            upstream,
            builders: server::Builders::new(config.header_read_timeout),
            config,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            halt: CancellationToken::new(),
            accepting: std::sync::atomic::AtomicBool::new(false),
            metrics: Arc::default(),
        }))
    }

    /// Serve on `listener` until `shutdown` resolves; then stop accepting, let
    /// in-flight requests finish for up to the drain timeout, and return.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        server::serve(self, listener, shutdown).await;
    }

    /// The generation new requests are decided by.
    pub fn generation(&self) -> Arc<Generation> {
        self.policy.borrow().clone()
    }

    /// Whether the listener is accepting connections (false before `serve` and once
    /// shutdown began).
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The data plane's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// The leaf certificate cache (for its counters).
    pub fn leaf_cache(&self) -> &crate::tls::LeafCache {
        self.tls.cache()
    }
}
