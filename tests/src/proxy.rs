//! The proxy under test, in-process: `egress-proxy`'s library serving on a
//! `127.0.0.1:0` listener with the built-in policy, a fresh CA, secrets from a map,
//! and upstream trust limited to the test upstream's CA. Also clients set up to use
//! it (reqwest) and a raw CONNECT helper for hand-made tunnels.

#![allow(
    clippy::expect_used,
    reason = "test harness: a broken set-up should fail the test loudly"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use egress_proxy::guard::AddressGuard;
use egress_proxy::policy::{Generation, Runtime};
use egress_proxy::proxy::{InspectConfig, Limits, Proxy, ProxyConfig, UpstreamConfig};
use egress_proxy::routes::RoutesDocument;
use egress_proxy::tls::CertificateAuthority;
use ipnet::IpNet;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::MapSecrets;

/// How a [`TestProxy`] is set up.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Routes document (YAML).
    pub routes: String,
    /// Secrets the policy may inject.
    pub secrets: MapSecrets,
    /// PEM files trusted for upstream servers (concatenated into one bundle).
    pub upstream_cas: Vec<PathBuf>,
    /// Chain through this upstream proxy.
    pub upstream_proxy: Option<String>,
    /// Response-header timeout.
    pub response_timeout: Duration,
    /// Drain timeout at shutdown.
    pub drain_timeout: Duration,
    /// Non-public networks the proxy may connect to (default: `127.0.0.1/32`, where
    /// the test upstream listens).
    pub allow_upstream_cidr: Vec<IpNet>,
    /// Resource limits.
    pub limits: Limits,
    /// The policy module; `None` is the built-in policy.
    pub policy: Option<PathBuf>,
    /// Dial these `(host, port)` pairs at these addresses instead of resolving them.
    pub connect_to: std::collections::HashMap<(String, u16), SocketAddr>,
    /// The body phase's limits.
    pub inspect: InspectConfig,
}

impl ProxyOptions {
    /// `routes` with no secrets, trusting `upstream_ca`.
    pub fn new(routes: &str, upstream_ca: &Path) -> Self {
        Self {
            routes: routes.to_owned(),
            secrets: MapSecrets::default(),
            upstream_cas: vec![upstream_ca.to_owned()],
            upstream_proxy: None,
            response_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(10),
            allow_upstream_cidr: vec![IpNet::from(std::net::IpAddr::from([127, 0, 0, 1]))],
            limits: Limits::default(),
            policy: None,
            connect_to: std::collections::HashMap::new(),
            inspect: InspectConfig::default(),
        }
    }

    /// Dial `host:port` at `addr` (the test upstream) instead of resolving `host`.
    pub fn connect_to(mut self, host: &str, port: u16, addr: SocketAddr) -> Self {
        self.connect_to.insert((host.to_owned(), port), addr);
        self
    }

    /// Use this policy module instead of the built-in one.
    pub fn policy(mut self, path: &str) -> Self {
        self.policy = Some(PathBuf::from(path));
        self
    }

    /// Add a secret.
    pub fn secret(mut self, name: &str, value: &str) -> Self {
        self.secrets
            .0
            .insert(name.to_owned(), value.as_bytes().to_vec());
        self
    }
}

/// A running in-process proxy.
#[derive(Debug)]
pub struct TestProxy {
    addr: SocketAddr,
    ca_path: PathBuf,
    proxy: Arc<Proxy>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    publish: watch::Sender<Arc<Generation>>,
    _runtime: Runtime,
    secrets: MapSecrets,
    _dir: tempfile::TempDir,
}

impl TestProxy {
    /// Start a proxy; returns once it is accepting.
    pub async fn start(options: ProxyOptions) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate().expect("CA");
        let (ca_path, _) = ca.save(dir.path(), false).expect("save CA");
        let bundle = dir.path().join("upstream-bundle.pem");
        let mut pem = String::new();
        for path in &options.upstream_cas {
            pem.push_str(&std::fs::read_to_string(path).expect("read upstream CA"));
        }
        std::fs::write(&bundle, pem).expect("write bundle");

        let routes =
            RoutesDocument::from_bytes(options.routes.as_bytes(), Path::new("routes.yaml"))
                .expect("routes parse");
        let runtime = crate::test_runtime();
        let module = match &options.policy {
            Some(path) => runtime.load_file(path).expect("policy module loads"),
            None => runtime.load_builtin().expect("built-in policy"),
        };
        let generation = Arc::new(
            module
                .configure(&routes.json, Arc::new(options.secrets.clone()))
                .expect("routes accepted"),
        );
        let (publish, policy) = watch::channel(generation);
        let config = ProxyConfig {
            upstream: UpstreamConfig {
                extra_ca: Some(bundle),
                system_roots: false,
                proxy: options
                    .upstream_proxy
                    .as_ref()
                    .map(|p| p.parse().expect("proxy URL")),
                connect_timeout: Duration::from_secs(5),
                response_timeout: options.response_timeout,
                guard: Arc::new(AddressGuard::new(options.allow_upstream_cidr.clone())),
                connect_to: options.connect_to.clone(),
                ..UpstreamConfig::default()
            },
            drain_timeout: options.drain_timeout,
            limits: options.limits.clone(),
            inspect: options.inspect.clone(),
            ..ProxyConfig::default()
        };
        let proxy = Proxy::new(config, policy, Arc::new(ca)).expect("proxy");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(proxy.clone().serve(listener, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            ca_path,
            proxy,
            stop: Some(stop),
            task: Some(task),
            publish,
            _runtime: runtime,
            secrets: options.secrets,
            _dir: dir,
        }
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for `-x` / `HTTPS_PROXY`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's CA certificate (what agents trust).
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// Publish a generation configured with `routes` (the built-in policy), as a
    /// reload would; returns once new requests see it.
    pub fn reload(&self, routes: &str) {
        let routes = RoutesDocument::from_bytes(routes.as_bytes(), Path::new("routes.yaml"))
            .expect("routes parse");
        // The serving generation's module, with the new routes (a routes reload).
        let module = self.publish.borrow().module().clone();
        let number = self.publish.borrow().number() + 1;
        let generation = module
            .configure(&routes.json, Arc::new(self.secrets.clone()))
            .expect("routes accepted")
            .numbered(number);
        self.publish.send_replace(Arc::new(generation)).retire();
    }

    /// The library handle (for counters).
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Start shutdown; returns the task that completes when the drain is over.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("not yet shut down")
    }

    /// A reqwest client using this proxy for every URL and trusting its CA only.
    pub fn client(&self, http1_only: bool) -> reqwest::Client {
        let pem = std::fs::read(&self.ca_path).expect("read CA");
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .proxy(reqwest::Proxy::all(self.url()).expect("proxy URL"))
            .timeout(Duration::from_secs(30));
        if http1_only {
            builder = builder.http1_only();
        }
        builder.build().expect("client")
    }

    /// A TLS client configuration trusting this proxy's CA only, offering `alpn`.
    pub fn tls_config(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        let pem = std::fs::read(&self.ca_path).expect("read CA");
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }

    /// CONNECT to `authority` (it must be answered 200), then a TLS handshake naming
    /// `sni` that offers HTTP/1.1 only.
    pub async fn tunnel(&self, authority: &str, sni: &str) -> TlsStream<TcpStream> {
        let (status, head, tcp) = self.connect(authority).await;
        assert_eq!(status, 200, "CONNECT {authority}: {head}");
        let name = ServerName::try_from(sni.to_owned()).expect("server name");
        TlsConnector::from(Arc::new(self.tls_config(&[b"http/1.1"])))
            .connect(name, tcp)
            .await
            .expect("TLS handshake through the tunnel")
    }

    /// Open a raw CONNECT to `authority`; returns the status line's code, the whole
    /// response head and body read so far, and the stream (positioned after the
    /// head when the CONNECT succeeded).
    pub async fn connect(&self, authority: &str) -> (u16, String, TcpStream) {
        let mut stream = TcpStream::connect(self.addr)
            .await
            .expect("connect to proxy");
        let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("write CONNECT");
        let head = read_head(&mut stream).await;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .expect("status code");
        (status, head, stream)
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Read an HTTP/1.1 response head (through the blank line), byte by byte so nothing
/// after it is consumed; if it announces a `content-length`, read the body too.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.expect("read response");
        assert!(
            n == 1,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let mut text = String::from_utf8(head).expect("UTF-8 head");
    let length = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    if length > 0 && !text.starts_with("HTTP/1.1 200") {
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.expect("read body");
        text.push_str(&String::from_utf8_lossy(&body));
    }
    text
}

/// The secret the standard routes inject, and its value in tests.
pub const TOKEN_NAME: &str = "UPSTREAM_TOKEN";
/// The value of [`TOKEN_NAME`]: must never appear in a log or reach a denied host.
pub const TOKEN_VALUE: &str = "s3cret-token-value-7f9a2c";

/// Routes for a test upstream on `localhost:port`: the paths the upstream serves are
/// allowed (`/status/` and everything else is not), with `Authorization: Bearer
/// $UPSTREAM_TOKEN` injected.
pub fn standard_routes(port: u16) -> String {
    format!(
        "routes:
  - host: localhost
    ports: [{port}]
    path_allowlist: [/echo/, /sse, /ws, /bytes, /git/, /redirect]
    auth:
      scheme: Bearer
      token_ref: {TOKEN_NAME}
"
    )
}

/// A proxy with [`standard_routes`] for `upstream`, injecting [`TOKEN_VALUE`].
pub async fn standard_proxy(upstream: &crate::upstream::Upstream, dir: &Path) -> TestProxy {
    let ca = upstream.ca().write_pem(dir);
    TestProxy::start(
        ProxyOptions::new(&standard_routes(upstream.port()), &ca).secret(TOKEN_NAME, TOKEN_VALUE),
    )
    .await
}
