//! The data plane: an explicit forward proxy that intercepts TLS and asks the policy
//! about every request.
//!
//! - [`Proxy`]: everything a request needs (the published policy generation, the leaf
//!   certificate cache, the upstream clients, settings); [`Proxy::serve`] runs it on
//!   an already-bound listener until a shutdown future resolves, then drains.
//! - `server`: accepting, serving client connections (HTTP/1.1), graceful shutdown.
//! - `connect`: CONNECT: the tunnel decision, TLS interception, requests inside.
//! - `pipeline`: the one request pipeline (strip, decide, deny / inject / forward).
//! - `hold`: the body phase (hold the request, read the body the policy asked for,
//!   `decide-body`); `forward_body`: the forwarded request body (held bytes, then the
//!   rest streamed).
//! - `transparent`: connections redirected by iptables/nftables: the original
//!   destination, then TLS by SNI (decided like CONNECT) or plain HTTP by `Host`;
//!   anything else refused.
//! - `headers`: credential and hop-by-hop header removal.
//! - [`upstream`]: pooled HTTP/1.1 + HTTP/2 clients with verified TLS, optional
//!   upstream proxy.
//! - `respond`: deny responses and the proxy's own error responses, status by cause.
//! - `report`: report mode (`--enforcement report`, and a policy's reported
//!   denials): what is forwarded instead of denied, and how it is logged.
//! - `shadow`: the shadow policy, asked off the request path after the live decision;
//!   only its disagreements are recorded.
//! - `body`, `access`: streamed response bodies and the access-log line each writes
//!   when it ends.

mod access;
mod body;
mod connect;
mod dialect;
mod forward_body;
mod framing;
mod headers;
mod hold;
pub mod idle;
mod pipeline;
mod prefixed;
mod report;
mod respond;
mod server;
mod shadow;
mod transparent;
pub mod upstream;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use access::ACCESS_TARGET;
pub use access::flush as flush_access_lines;
pub(crate) use access::write_directly as write_access_lines_directly;
pub use body::ProxyBody;
pub use forward_body::ForwardBody;
pub use hold::InspectConfig;
pub use idle::Idle;
pub use report::{Enforcement, WOULD_DENY, WOULD_DENY_STATUS};
pub use respond::{DENY_HEADER, DENY_HINT, ERROR_HEADER};
pub use shadow::{DEFAULT_SHADOW_QUEUE, SHADOW_BODY_BYTES, SHADOW_WORKERS, Shadow, ShadowStats};
pub use upstream::{UpstreamConfig, UpstreamError, UpstreamSetupError};

use crate::policy::Generation;
use crate::tls::{CertificateAuthority, MintingResolver};

/// Default bound on draining in-flight requests at shutdown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on a client's TLS handshake inside a tunnel.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on a client sending a request's headers (slowloris).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Bounds on what clients may make the proxy hold. Over a bound the client gets a
/// clear error (431, 503) or the connection is closed; other clients are not affected.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Client connections served at once; one more is answered `503` and closed.
    pub max_connections: usize,
    /// Bound on receiving a request's headers (slowloris).
    pub header_read_timeout: Duration,
    /// Bound on a request's header section in bytes (HTTP/1.1 head, HTTP/2 header
    /// list); over it: 431.
    pub max_header_bytes: usize,
    /// Bound on the number of header fields of an HTTP/1.1 request; over it: 431.
    pub max_headers: usize,
    /// A client connection (or tunnel) with no bytes moving either way for this long
    /// is closed.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_streams_per_connection: u32,
    /// HTTP/2 flow-control window per stream, both sides: the most body data buffered
    /// per stream before the sender must wait.
    pub stream_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 100,
            stream_window: 1024 * 1024,
        }
    }
}

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
    /// Leaf certificates kept (hosts). Default
    /// [`crate::tls::DEFAULT_LEAF_CACHE_CAPACITY`].
    pub leaf_cache_capacity: usize,
    /// Resource limits.
    pub limits: Limits,
    /// The body phase: how much may be held, for how long, in all.
    pub inspect: InspectConfig,
    /// Enforce the policy's denials, or only report them. Default enforce.
    pub enforcement: Enforcement,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            upstream: UpstreamConfig::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            leaf_cache_capacity: crate::tls::DEFAULT_LEAF_CACHE_CAPACITY,
            limits: Limits::default(),
            inspect: InspectConfig::default(),
            enforcement: Enforcement::default(),
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
    /// One permit per client connection being served (`--max-connections`).
    connections: Arc<tokio::sync::Semaphore>,
    /// True while the listener accepts (for readiness).
    accepting: std::sync::atomic::AtomicBool,
    /// The memory budget for request bodies held for the policy.
    inspect_budget: hold::Budget,
    /// The shadow policy, if one is loaded ([`Proxy::set_shadow`]).
    shadow: OnceLock<Arc<Shadow>>,
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
        let upstream = upstream::Upstream::new(&config.upstream, config.limits.idle_timeout)?;
        let connections = Arc::new(tokio::sync::Semaphore::new(
            config.limits.max_connections.max(1),
        ));
        Ok(Arc::new(Self {
            inspect_budget: hold::Budget::new(config.inspect.memory),
            policy,
            tls: MintingResolver::with_capacity(ca, config.leaf_cache_capacity),
            upstream,
            builders: server::Builders::new(&config.limits),
            config,
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            halt: CancellationToken::new(),
            accepting: std::sync::atomic::AtomicBool::new(false),
            connections,
            metrics: Arc::default(),
            shadow: OnceLock::new(),
        }))
    }

    /// Serve on `listener` until `shutdown` resolves; then stop accepting, let
    /// in-flight requests finish for up to the drain timeout, and return.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        self.serve_with(listener, None, shutdown).await;
    }

    /// [`Proxy::serve`], plus a transparent listener taking connections redirected to
    /// it by iptables/nftables (`REDIRECT`): the original destination's port and the
    /// TLS SNI or HTTP `Host` name the target, decided and forwarded like explicit
    /// requests (see `transparent`).
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        transparent: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) {
        for bound in std::iter::once(&listener).chain(transparent.as_ref()) {
            if let Ok(addr) = bound.local_addr() {
                self.config.upstream.guard.refuse_own(addr);
            }
        }
        server::serve(self, listener, transparent, shutdown).await;
    }

    /// Ask `shadow` about every request from now on, after the live decision; its
    /// verdicts are only recorded. Set once, before serving; a second call is ignored.
    pub fn set_shadow(&self, shadow: Arc<Shadow>) {
        let _ = self.shadow.set(shadow);
    }

    /// The shadow policy, if one is loaded.
    pub fn shadow(&self) -> Option<&Arc<Shadow>> {
        self.shadow.get()
    }

    /// Whether the policy's denials are enforced or only reported.
    pub fn enforcement(&self) -> Enforcement {
        self.config.enforcement
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

    /// The upstream address guard (the admin listener registers its address here).
    pub fn guard(&self) -> &crate::guard::AddressGuard {
        &self.config.upstream.guard
    }

    /// The leaf certificate cache (for its counters).
    pub fn leaf_cache(&self) -> &crate::tls::LeafCache {
        self.tls.cache()
    }
}
