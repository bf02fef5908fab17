//! `egress-proxy run`: load the policy and the CA, bind, serve until SIGTERM/SIGINT,
//! drain, exit 0. Everything that can be wrong with the configuration is reported
//! (exit 1) before the listener is bound.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::PolicyArgs;
use crate::guard::AddressGuard;
use crate::policy::{ChildCompiler, Compiler, Runtime, RuntimeConfig};
use crate::proxy::{Limits, Proxy, ProxyConfig, UpstreamConfig};
use crate::reload::{self, Reloader, Sources, Trigger};
use crate::secrets::{EnvSecrets, FileSecrets, SecretSource};
use crate::tls::{CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, TlsError};
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Default listen address (the container image uses `0.0.0.0:8080`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Default number of worker threads, whatever the number of CPUs. A sidecar serves one
/// agent, whose traffic is a small fraction of what one core handles; a second worker
/// keeps a slow policy call (up to its timeout) or a TLS handshake from stalling every
/// other connection, even under a one-CPU limit (the kernel time-slices the two).
/// One per CPU (tokio's default) would start 64 threads on a 64-CPU node for no gain.
/// Idle workers park without a timer either way.
pub const DEFAULT_WORKER_THREADS: usize = 2;

/// `egress-proxy run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Module and routes.
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Address the proxy listens on.
    #[arg(long, env = "EGRESS_PROXY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// CA certificate (PEM) used to mint leaf certificates. Give with --ca-key.
    /// Default: the CA in the state directory, created on first start.
    #[arg(long, env = "EGRESS_PROXY_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// CA private key (PEM). Give with --ca-cert.
    #[arg(long, env = "EGRESS_PROXY_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Where the proxy keeps its CA when --ca-cert/--ca-key are not given
    /// (`DIR/ca/ca.crt`, `DIR/ca/ca.key`). Default: `$XDG_STATE_HOME/egress-proxy`,
    /// else `$HOME/.local/state/egress-proxy`.
    #[arg(long, env = "EGRESS_PROXY_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Directory of secret files, one per name (`DIR/GH_PAT`), e.g. a mounted
    /// Kubernetes Secret; re-read within a second of a change. Names without a file
    /// come from the environment. Default: the environment only.
    #[arg(long, env = "EGRESS_PROXY_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,
    /// Extra CA certificates (PEM bundle) trusted for upstream servers, in addition
    /// to the system roots.
    #[arg(long, env = "EGRESS_PROXY_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// Reach upstreams through this HTTP proxy (CONNECT tunnels), e.g.
    /// `http://proxy.internal:3128`.
    #[arg(long, env = "EGRESS_PROXY_UPSTREAM_PROXY")]
    pub upstream_proxy: Option<http::Uri>,
    /// Bound on opening a TCP connection to an upstream (per address); over it: 504.
    #[arg(long, env = "EGRESS_PROXY_CONNECT_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "10s")]
    pub connect_timeout: Duration,
    /// Bound on waiting for an upstream's response headers; over it: 504.
    #[arg(long, env = "EGRESS_PROXY_UPSTREAM_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "5m")]
    pub upstream_timeout: Duration,
    /// How long shutdown (SIGTERM/SIGINT) waits for in-flight requests.
    #[arg(long, env = "EGRESS_PROXY_DRAIN_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "10s")]
    pub drain_timeout: Duration,
    /// Leaf certificates kept in memory (one per host).
    #[arg(long, env = "EGRESS_PROXY_LEAF_CACHE_SIZE", default_value_t = crate::tls::DEFAULT_LEAF_CACHE_CAPACITY,
          value_parser = clap::value_parser!(usize))]
    pub leaf_cache_size: usize,
    /// Address of the read-only admin listener (`/healthz`, `/readyz`, `/policy`).
    #[arg(long, env = "EGRESS_PROXY_ADMIN_LISTEN", default_value = crate::admin::DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// How often the routes file and module are hashed to catch changes that
    /// produced no file-system event (a safety net; events and SIGHUP reload at once).
    #[arg(long, env = "EGRESS_PROXY_RELOAD_INTERVAL", value_parser = humantime::parse_duration,
          default_value = "30s")]
    pub reload_interval: Duration,
    /// Let the proxy connect to this non-public network (CIDR, or one address), which
    /// the address guard otherwise refuses: loopback, private, link-local (cloud
    /// metadata), CGNAT and other special ranges. Repeat, or separate with commas.
    /// Needed for an upstream on the same host or network (the test suite allows
    /// `127.0.0.1/32` for its loopback upstream). The proxy's own listen and admin
    /// addresses stay refused.
    #[arg(long, env = "EGRESS_PROXY_ALLOW_UPSTREAM_CIDR", value_delimiter = ',', value_parser = parse_cidr)]
    pub allow_upstream_cidr: Vec<IpNet>,
    /// Connect to ADDR:PORT2 for HOST:PORT instead of resolving HOST (like curl's
    /// `--connect-to`, but ADDR must be an IP address), e.g.
    /// `api.internal:443:10.0.0.7:8443`; TLS still verifies HOST's certificate, and
    /// the address guard still applies. Repeat, or separate with commas.
    #[arg(long, env = "EGRESS_PROXY_CONNECT_TO", value_delimiter = ',', value_parser = parse_connect_to,
          value_name = "HOST:PORT:ADDR:PORT2")]
    pub connect_to: Vec<ConnectTo>,
    /// Client connections served at once; more are answered 503 and closed.
    #[arg(long, env = "EGRESS_PROXY_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Bound on a client sending a request's headers (slowloris defence).
    #[arg(long, env = "EGRESS_PROXY_HEADER_READ_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "30s")]
    pub header_read_timeout: Duration,
    /// Bound on a request's header section, in bytes; over it: 431.
    #[arg(long, env = "EGRESS_PROXY_MAX_HEADER_BYTES", default_value_t = Limits::default().max_header_bytes)]
    pub max_header_bytes: usize,
    /// Bound on the number of header fields of an HTTP/1.1 request; over it: 431.
    #[arg(long, env = "EGRESS_PROXY_MAX_HEADERS", default_value_t = Limits::default().max_headers)]
    pub max_headers: usize,
    /// Close a client or upstream connection (tunnels and WebSockets included) after
    /// this long without a byte moving either way. Keep it above --upstream-timeout
    /// if upstreams may think that long before answering.
    #[arg(long, env = "EGRESS_PROXY_IDLE_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "5m")]
    pub idle_timeout: Duration,
    /// How long an unused pooled upstream connection is kept open.
    #[arg(long, env = "EGRESS_PROXY_UPSTREAM_POOL_IDLE_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "90s")]
    pub upstream_pool_idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per client connection.
    #[arg(long, env = "EGRESS_PROXY_MAX_STREAMS_PER_CONNECTION", default_value_t = Limits::default().max_streams_per_connection)]
    pub max_streams_per_connection: u32,
    /// HTTP/2 flow-control window per stream, in bytes: the most request body the
    /// proxy buffers per stream.
    #[arg(long, env = "EGRESS_PROXY_STREAM_WINDOW", default_value_t = Limits::default().stream_window,
          value_parser = clap::value_parser!(u32).range(65_535..=2_147_483_647))]
    pub stream_window: u32,
    /// Bound on receiving the part of a request body the policy needs to see; over
    /// it: 408.
    #[arg(long, env = "EGRESS_PROXY_BODY_READ_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "30s")]
    pub body_read_timeout: Duration,
    /// Memory budget, in bytes, for all request bodies held for the policy at once;
    /// a body that would exceed it is answered 503 with `retry-after` (nothing waits).
    #[arg(long, env = "EGRESS_PROXY_INSPECT_MEMORY", default_value_t = crate::inspect::DEFAULT_INSPECT_MEMORY)]
    pub inspect_memory: u64,
    /// Bound on compiling a policy module (`--policy MODULE.wasm`, at start-up and on
    /// reload) in its child process; over it the child is killed and the load fails.
    #[arg(long, env = "EGRESS_PROXY_POLICY_COMPILE_TIMEOUT", value_parser = humantime::parse_duration,
          default_value = "2m")]
    pub policy_compile_timeout: Duration,
    /// Worker threads serving requests (at least 1).
    #[arg(long, env = "EGRESS_PROXY_WORKER_THREADS", default_value_t = DEFAULT_WORKER_THREADS)]
    pub worker_threads: usize,
    /// Forced egress: the transparent and DNS listeners.
    #[command(flatten)]
    pub forced: super::ForcedArgs,
    /// Report mode and the shadow policy.
    #[command(flatten)]
    pub safe: super::SafeArgs,
}

impl RunArgs {
    /// The data-plane settings these flags describe.
    pub fn proxy_config(&self) -> ProxyConfig {
        ProxyConfig {
            upstream: UpstreamConfig {
                extra_ca: self.upstream_ca.clone(),
                system_roots: true,
                proxy: self.upstream_proxy.clone(),
                connect_timeout: self.connect_timeout,
                response_timeout: self.upstream_timeout,
                guard: Arc::new(AddressGuard::new(self.allow_upstream_cidr.clone())),
                pool_idle_timeout: self.upstream_pool_idle_timeout,
                connect_to: self
                    .connect_to
                    .iter()
                    .map(|c| ((c.host.clone(), c.port), c.address))
                    .collect(),
            },
            drain_timeout: self.drain_timeout,
            leaf_cache_capacity: self.leaf_cache_size.max(1),
            limits: Limits {
                max_connections: self.max_connections.max(1),
                header_read_timeout: self.header_read_timeout,
                max_header_bytes: self.max_header_bytes,
                max_headers: self.max_headers,
                idle_timeout: self.idle_timeout,
                max_streams_per_connection: self.max_streams_per_connection.max(1),
                stream_window: self.stream_window,
            },
            inspect: crate::proxy::InspectConfig {
                max_body: self.policy.limits.max_inspect_body,
                read_timeout: self.body_read_timeout,
                memory: self.inspect_memory,
            },
            enforcement: self.safe.enforcement,
            ..ProxyConfig::default()
        }
    }
}

pub(super) fn run(args: &RunArgs) -> Result<ExitCode> {
    // A module file is compiled by a child process running this binary, so that
    // Cranelift's working set never becomes the proxy's.
    let runtime = Runtime::new(RuntimeConfig {
        compiler: Compiler::Child(ChildCompiler::this_binary(args.policy_compile_timeout)),
        ..args.policy.limits.runtime_config()
    })?;
    let sources = Sources {
        routes: args.policy.routes.clone(),
        policy: args.policy.policy.clone(),
    };
    let secrets: Arc<dyn SecretSource> = match &args.secrets_dir {
        Some(dir) => Arc::new(FileSecrets::new(dir)),
        None => Arc::new(EnvSecrets),
    };
    let (reloader, policy) = Reloader::start(runtime.clone(), sources, secrets.clone())?;
    let shadow = super::safe::load_shadow(&args.safe, &args.policy.limits, secrets)?;
    let ca = Arc::new(load_ca(args)?);
    args.forced.dns_config()?;
    let executor = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads.max(1))
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    executor.block_on(async {
        let generations = policy.clone();
        let proxy = Proxy::new(args.proxy_config(), policy, ca)?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local = listener.local_addr().context("listener address")?;
        let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin)", args.admin_listen))?;
        let admin_local = admin_listener.local_addr().context("admin listener address")?;
        proxy.guard().refuse_own(admin_local);
        let super::Bound { transparent, dns } = args.forced.bind().await?;
        let transparent_local = transparent.as_ref().and_then(|l| l.local_addr().ok());
        let dns_local = dns.as_ref().and_then(|(_, udp, _)| udp.local_addr().ok());
        // Signal handlers go in before "listening" is logged: a SIGHUP or SIGTERM sent
        // as soon as the proxy says it is up must not hit the default action.
        let (triggers, receiver) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let hangup = forward_sighup(triggers.clone(), stop.clone())?;
        let shutdown = shutdown_signal()?;
        // The shadow is attached before the first request is accepted.
        let tasks = TaskTracker::new();
        let _shadow_watcher = match shadow {
            Some(shadow) => super::safe::serve_shadow(
                shadow,
                args.safe.shadow_queue,
                &proxy,
                args.reload_interval,
                &tasks,
                &stop,
            )?,
            None => None,
        };
        let serving = tokio::spawn(proxy.clone().serve_with(listener, transparent, shutdown));
        // "listening" means accepting (and /readyz says so) by the time it is logged.
        while !proxy.is_accepting() && !serving.is_finished() {
            tokio::task::yield_now().await;
        }
        let generation = proxy.generation();
        super::safe::warn_at_start(args.safe.enforcement);
        tracing::info!(
            listen = %local,
            admin = %admin_local,
            transparent = %transparent_local.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            dns = %dns_local.map_or_else(|| "-".to_owned(), |a| a.to_string()),
            policy = %generation.module().origin(),
            policy_sha256 = %generation.module().sha256(),
            policy_compiled = generation.module().code().as_str(),
            routes = %args.policy.routes.display(),
            rules = generation.summary().rules,
            "egress-proxy listening"
        );
        drop(generation);
        // Without file events (inotify limits, network filesystems) the periodic
        // check and SIGHUP still reload.
        let _watcher = match reload::watch_sources(reloader.sources(), triggers.clone()) {
            Ok(watcher) => Some(watcher),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the policy files; reloading on SIGHUP and every poll interval only");
                None
            }
        };
        tasks.spawn(reload::poll(args.reload_interval, triggers.clone()));
        tasks.spawn(hangup);
        tasks.spawn(super::safe::warn_on_reload(
            args.safe.enforcement,
            generations,
            stop.clone(),
        ));
        let registry = crate::metrics::registry(
            proxy.metrics(),
            runtime.clone(),
            reloader.status().clone(),
            proxy.clone(),
        );
        let admin = crate::admin::Admin {
            proxy: proxy.clone(),
            reload: reloader.status().clone(),
            registry: Arc::new(registry),
        };
        let admin_stop = stop.clone();
        tasks.spawn(admin.serve(admin_listener, async move { admin_stop.cancelled().await }));
        tasks.spawn(reloader.run(receiver, stop.clone()));
        if let Some((config, udp, tcp)) = dns {
            tasks.spawn(crate::dns::serve(proxy.clone(), config, udp, tcp, stop.clone()));
        }
        serving.await.context("the proxy task failed")?;
        stop.cancel();
        tasks.close();
        crate::proxy::flush_access_lines();
        tracing::info!("stopped");
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A `--connect-to` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    /// The normalised host name.
    pub host: String,
    /// The port requests name.
    pub port: u16,
    /// Where to connect instead.
    pub address: SocketAddr,
}

/// `HOST:PORT:ADDR:PORT2` (an IPv6 ADDR in brackets).
fn parse_connect_to(text: &str) -> Result<ConnectTo, String> {
    let bad =
        || format!("`{text}` is not HOST:PORT:ADDR:PORT2 (e.g. api.internal:443:10.0.0.7:8443)");
    let mut parts = text.trim().splitn(3, ':');
    let (Some(host), Some(port), Some(address)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let host = crate::target::normalize_host(host).map_err(|e| format!("`{text}`: {e}"))?;
    Ok(ConnectTo {
        host,
        port: port.parse().map_err(|_| bad())?,
        address: address.parse().map_err(|_| bad())?,
    })
}

/// A CIDR (`10.1.0.0/16`) or a single address (`127.0.0.1`, `::1`).
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("`{text}` is not a CIDR (10.0.0.0/8) or an IP address"))
}

/// Turns SIGHUP into a forced reload until `stop`.
pub(super) fn forward_sighup(
    triggers: tokio::sync::mpsc::UnboundedSender<Trigger>,
    stop: CancellationToken,
) -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    Ok(async move {
        loop {
            tokio::select! {
                received = hup.recv() => {
                    if received.is_none() || triggers.send(Trigger::Signal).is_err() {
                        return;
                    }
                    tracing::info!("SIGHUP: reloading the policy");
                }
                () = stop.cancelled() => return,
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

/// The CA from --ca-cert/--ca-key, or the state directory's (created on first start).
fn load_ca(args: &RunArgs) -> Result<CertificateAuthority> {
    if let (Some(cert), Some(key)) = (&args.ca_cert, &args.ca_key) {
        return Ok(CertificateAuthority::load_files(cert, key)?);
    }
    let dir = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir()?,
    }
    .join("ca");
    load_or_create(&dir)
}

fn load_or_create(dir: &Path) -> Result<CertificateAuthority> {
    match CertificateAuthority::load(dir) {
        Ok(ca) => {
            tracing::info!(cert = %dir.join(CA_CERT_FILE).display(), "using the CA in the state directory");
            Ok(ca)
        }
        Err(TlsError::Missing { .. }) if !dir.join(CA_KEY_FILE).exists() => {
            let ca = CertificateAuthority::generate()?;
            let (cert, _) = ca.save(dir, false)?;
            tracing::info!(
                cert = %cert.display(),
                sha256 = %ca.fingerprint(),
                "created a new CA; agents must trust this certificate (see `egress-proxy ca env`)"
            );
            Ok(ca)
        }
        Err(err) => Err(err.into()),
    }
}

fn default_state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("egress-proxy"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/egress-proxy")),
        None => bail!("no state directory: set --state-dir (or give --ca-cert and --ca-key)"),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};
    use crate::proxy::upstream::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT};

    fn args(extra: &[&str]) -> RunArgs {
        let argv = [&["egress-proxy", "run", "--routes", "r.yaml"], extra].concat();
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        let args = args(&[]);
        assert_eq!(args.listen, DEFAULT_LISTEN.parse().unwrap());
        let config = args.proxy_config();
        let defaults = ProxyConfig::default();
        assert_eq!(config.drain_timeout, defaults.drain_timeout);
        assert_eq!(config.upstream.connect_timeout, DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(config.upstream.response_timeout, DEFAULT_RESPONSE_TIMEOUT);
        assert_eq!(config.leaf_cache_capacity, defaults.leaf_cache_capacity);
        let (limits, default_limits) = (config.limits, Limits::default());
        assert_eq!(limits.max_connections, default_limits.max_connections);
        assert_eq!(
            limits.header_read_timeout,
            default_limits.header_read_timeout
        );
        assert_eq!(limits.max_header_bytes, default_limits.max_header_bytes);
        assert_eq!(limits.max_headers, default_limits.max_headers);
        assert_eq!(limits.idle_timeout, default_limits.idle_timeout);
        assert_eq!(limits.stream_window, default_limits.stream_window);
        assert_eq!(
            config.upstream.pool_idle_timeout,
            UpstreamConfig::default().pool_idle_timeout
        );
        assert!(config.upstream.guard.allowed().is_empty());
        let inspect = crate::proxy::InspectConfig::default();
        assert_eq!(config.inspect.max_body, inspect.max_body);
        assert_eq!(config.inspect.read_timeout, inspect.read_timeout);
        assert_eq!(config.inspect.memory, inspect.memory);
        assert_eq!(args.worker_threads, DEFAULT_WORKER_THREADS);
        assert_eq!(
            args.policy_compile_timeout,
            crate::policy::DEFAULT_COMPILE_TIMEOUT
        );
    }

    #[test]
    fn connect_to_entries_parse() {
        let args = args(&[
            "--connect-to",
            "API.Example.com:443:10.0.0.7:8443,b.example:80:[::1]:8080",
        ]);
        let connect_to = args.proxy_config().upstream.connect_to;
        assert_eq!(
            connect_to.get(&("api.example.com".to_owned(), 443)),
            Some(&"10.0.0.7:8443".parse().unwrap())
        );
        assert_eq!(
            connect_to.get(&("b.example".to_owned(), 80)),
            Some(&"[::1]:8080".parse().unwrap())
        );
        for bad in [
            "a.example:443",
            "a.example:x:1.2.3.4:1",
            "a.example:443:1.2.3.4",
            "a.example:443:host:1",
        ] {
            assert!(parse_connect_to(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_upstream_cidrs_parse_addresses_and_lists() {
        let args = args(&[
            "--allow-upstream-cidr",
            "10.1.2.3/8, 127.0.0.1",
            "--allow-upstream-cidr",
            "::1",
        ]);
        let allowed: Vec<String> = args
            .allow_upstream_cidr
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(allowed, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        let guard = args.proxy_config().upstream.guard;
        assert!(guard.check("10.9.9.9:443".parse().unwrap()).is_ok());
        assert!(guard.check("192.168.0.1:443".parse().unwrap()).is_err());
        let refused = Cli::try_parse_from([
            "egress-proxy",
            "run",
            "--routes",
            "r.yaml",
            "--allow-upstream-cidr",
            "10.0.0.0/33",
        ]);
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("is not a CIDR"), "{message}");
    }

    #[test]
    fn ca_files_come_in_pairs() {
        let parses = |extra: &[&str]| {
            let argv = [&["egress-proxy", "run", "--routes", "r"], extra].concat();
            Cli::try_parse_from(argv).is_ok()
        };
        assert!(!parses(&["--ca-cert", "c.pem"]));
        assert!(!parses(&["--ca-key", "k.pem"]));
        assert!(parses(&["--ca-cert", "c.pem", "--ca-key", "k.pem"]));
        assert!(!parses(&["--listen", "localhost"]));
        assert!(!parses(&["--upstream-timeout", "soon"]));
    }
}
