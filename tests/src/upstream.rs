//! An in-process upstream server for the proxy's integration tests.
//!
//! [`Upstream::start`] binds `127.0.0.1:0` and serves HTTP/1.1, HTTP/2 and HTTP/1.1
//! upgrades, over TLS (a certificate for `localhost`, `127.0.0.1` and `::1` from its
//! own [`TestCa`]) or plain TCP. Every request is recorded as a [`Seen`] before it is
//! handled (unless [`UpstreamOptions::record_requests`] is off). Endpoints:
//!
//! - `/echo`, `/echo/...`: the request (method, path, version, headers, body length
//!   and SHA-256) as JSON.
//! - `/sse?events=N` (default 3): a server-sent event stream; event 0 is sent at once,
//!   each further one waits for a permit from [`Upstream::release_sse`].
//! - `/ws`: WebSocket echo over an HTTP/1.1 Upgrade.
//! - `/bytes?n=N`: exactly N bytes, byte `i` being `(i % 251) as u8`, streamed.
//! - `/status/CODE`: an empty response with that status.
//! - `/redirect?to=URL`: 302 to URL.
//! - `/simple/`: a small HTML page (a package-index stand-in for the README quick start).
//! - `/git/...`: files under [`UpstreamOptions::files_root`] (see [`git_bare_repo`]).
//! - `/smart/...`: git's smart HTTP protocol for the repositories under
//!   [`UpstreamOptions::files_root`], by `git http-backend` (see [`git_smart_repo`]).
//!
//! Everything it spawns is owned by the `Upstream` and stops when it is dropped.

mod ca;
mod git;
mod routes;

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use http::{Request, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use ca::{CA_FILE_NAME, TestCa};
pub use git::{README as GIT_README, git_bare_repo, git_smart_repo};
pub use routes::BYTES_PERIOD;

/// How an [`Upstream`] serves.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Serve TLS (default `true`); otherwise plain TCP.
    pub tls: bool,
    /// Offer `h2` as well as `http/1.1` in ALPN and accept HTTP/2 (default `true`);
    /// otherwise HTTP/1.1 only.
    pub http2: bool,
    /// The directory served under `/git/` (default none: `/git/...` is 404).
    pub files_root: Option<PathBuf>,
    /// Record every request for [`Upstream::seen`] and [`Upstream::hits`] (default
    /// `true`); a load test turns it off so memory stays flat. When off, both stay
    /// empty.
    pub record_requests: bool,
    /// More names its certificate carries, besides `localhost`, `127.0.0.1` and `::1`
    /// (for a proxy told to `--resolve` such a name to this upstream).
    pub extra_names: Vec<String>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            tls: true,
            http2: true,
            files_root: None,
            record_requests: true,
            extra_names: Vec::new(),
        }
    }
}

/// One request as the upstream received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The method, e.g. `GET`.
    pub method: String,
    /// Path and query as received, e.g. `/echo?x=1`.
    pub path: String,
    /// The HTTP version the request arrived with.
    pub version: Version,
    /// Headers with lower-case names, in received order except that repeats of one
    /// name are grouped (hyper's `HeaderMap` order). Values are decoded lossily.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    fn of(req: &Request<Incoming>) -> Self {
        Self {
            method: req.method().as_str().to_owned(),
            path: req
                .uri()
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
            version: req.version(),
            headers: req
                .headers()
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
        }
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A running test upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    tls: bool,
    ca: TestCa,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Binds `127.0.0.1:0` and starts serving.
    pub async fn start(options: UpstreamOptions) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("listener address");
        let ca = TestCa::new();
        let acceptor = options
            .tls
            .then(|| tls_acceptor(&ca, options.http2, &options.extra_names));

        let tasks = Arc::new(Tasks::new());
        let mut builder = auto::Builder::new(TaskExecutor(Arc::clone(&tasks)));
        if !options.http2 {
            builder = builder.http1_only();
        }
        let shared = Arc::new(Shared {
            seen: Mutex::default(),
            sse_gate: Semaphore::new(0),
            files_root: options.files_root,
            record_requests: options.record_requests,
            tasks,
        });
        shared.tasks.spawn(accept_loop(
            listener,
            acceptor,
            builder,
            Arc::clone(&shared),
        ));
        Self {
            addr,
            tls: options.tls,
            ca,
            shared,
        }
    }

    /// The bound address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The CA that issued the upstream's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// `https://localhost:PORT{path}` (`http://` without TLS); a missing leading `/`
    /// is added.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("{scheme}://localhost:{}{slash}{path}", self.port())
    }

    /// Every request received so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// How many requests have been received.
    pub fn hits(&self) -> usize {
        lock(&self.shared.seen).len()
    }

    /// Lets `n` more `/sse` events (after each stream's first) be sent.
    pub fn release_sse(&self, n: usize) {
        self.shared.sse_gate.add_permits(n);
    }

    /// Stops serving and waits for every task to end.
    pub async fn shutdown(self) {
        self.shared.sse_gate.close();
        if let Some(mut tasks) = self.shared.tasks.close() {
            tasks.shutdown().await;
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.sse_gate.close();
        if let Some(mut tasks) = self.shared.tasks.close() {
            tasks.abort_all();
        }
    }
}

/// State the endpoints share.
#[derive(Debug)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    /// Permits for `/sse` events after the first; closed on shutdown.
    sse_gate: Semaphore,
    files_root: Option<PathBuf>,
    record_requests: bool,
    tasks: Arc<Tasks>,
}

impl Shared {
    fn record(&self, seen: Seen) {
        lock(&self.seen).push(seen);
    }
}

/// Every task the upstream spawns: the accept loop, connections, HTTP/2 streams and
/// WebSocket sessions. `None` once closed, after which nothing more is spawned.
#[derive(Debug)]
struct Tasks(Mutex<Option<JoinSet<()>>>);

impl Tasks {
    fn new() -> Self {
        Self(Mutex::new(Some(JoinSet::new())))
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        if let Some(set) = lock(&self.0).as_mut() {
            // Reap finished tasks so a long-lived upstream does not accumulate them.
            while set.try_join_next().is_some() {}
            set.spawn(task);
        }
    }

    fn close(&self) -> Option<JoinSet<()>> {
        lock(&self.0).take()
    }
}

/// hyper's executor for HTTP/2 stream tasks: spawns into [`Tasks`] so they are owned.
#[derive(Debug, Clone)]
struct TaskExecutor(Arc<Tasks>);

impl<F> hyper::rt::Executor<F> for TaskExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    builder: auto::Builder<TaskExecutor>,
    shared: Arc<Shared>,
) {
    loop {
        // Accept errors (e.g. too many open files) are transient; keep serving.
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        let connection = connection(tcp, acceptor.clone(), builder.clone(), Arc::clone(&shared));
        shared.tasks.spawn(connection);
    }
}

/// Serves one accepted connection, after the TLS handshake if there is one.
async fn connection(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    builder: auto::Builder<TaskExecutor>,
    shared: Arc<Shared>,
) {
    // Best effort: only latency depends on it.
    let _ = tcp.set_nodelay(true);
    match acceptor {
        Some(acceptor) => {
            if let Ok(tls) = acceptor.accept(tcp).await {
                serve(tls, &builder, shared).await;
            }
        }
        None => serve(tcp, &builder, shared).await,
    }
}

async fn serve<I>(io: I, builder: &auto::Builder<TaskExecutor>, shared: Arc<Shared>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(routes::handle(req, shared).await) }
    });
    // A client going away mid-request is not the upstream's failure.
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(io), service)
        .await;
}

fn tls_acceptor(ca: &TestCa, http2: bool, extra_names: &[String]) -> TlsAcceptor {
    let mut names = vec!["localhost", "127.0.0.1", "::1"];
    names.extend(extra_names.iter().map(String::as_str));
    let (chain, key) = ca.issue(&names);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("the issued certificate and key match");
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    TlsAcceptor::from(Arc::new(config))
}

/// Locks `mutex`, ignoring poisoning: a panicked test thread leaves the data usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
