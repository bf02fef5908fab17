//! A plain hudsucker MITM proxy for the load benchmark (`tests/benches/load`), with
//! the benchmark's policy: requests to `--inject-host` get their `authorization`
//! replaced by `Bearer <token>` (the token from the environment variable
//! `--token-env` names); any other host gets 403. No access log.
//!
//! `hudsucker-peer --listen 127.0.0.1:0 --ca-dir DIR --upstream-ca PEM
//! --inject-host localhost --token-env NAME --worker-threads 1` writes its CA to
//! `DIR/ca.crt` and prints `listening ADDR` on stdout once it accepts connections.

use std::net::SocketAddr;
use std::sync::Arc;

use hudsucker::certificate_authority::RcgenAuthority;
use hudsucker::hyper::{Request, Response, StatusCode, header};
use hudsucker::rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use hudsucker::rustls::crypto::aws_lc_rs;
use hudsucker::rustls::{ClientConfig, RootCertStore};
use hudsucker::{Body, HttpContext, HttpHandler, Proxy, RequestOrResponse};

#[derive(Clone)]
struct Inject {
    host: Arc<str>,
    value: header::HeaderValue,
}

impl HttpHandler for Inject {
    async fn handle_request(
        &mut self,
        _ctx: &HttpContext,
        mut req: Request<Body>,
    ) -> RequestOrResponse {
        if req.method() == hudsucker::hyper::Method::CONNECT {
            return req.into();
        }
        if req.uri().host() == Some(&*self.host) {
            req.headers_mut()
                .insert(header::AUTHORIZATION, self.value.clone());
            return req.into();
        }
        let mut denied = Response::new(Body::from("denied by policy\n"));
        *denied.status_mut() = StatusCode::FORBIDDEN;
        denied.into()
    }
}

struct Args {
    listen: SocketAddr,
    ca_dir: std::path::PathBuf,
    upstream_ca: std::path::PathBuf,
    inject_host: String,
    token_env: String,
    worker_threads: usize,
}

fn args() -> Result<Args, String> {
    let mut listen = None;
    let mut ca_dir = None;
    let mut upstream_ca = None;
    let mut inject_host = None;
    let mut token_env = None;
    let mut worker_threads = 1;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--ca-dir" => ca_dir = Some(value.into()),
            "--upstream-ca" => upstream_ca = Some(value.into()),
            "--inject-host" => inject_host = Some(value),
            "--token-env" => token_env = Some(value),
            "--worker-threads" => {
                worker_threads = value
                    .parse()
                    .map_err(|e| format!("--worker-threads: {e}"))?;
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        ca_dir: ca_dir.ok_or("--ca-dir is required")?,
        upstream_ca: upstream_ca.ok_or("--upstream-ca is required")?,
        inject_host: inject_host.ok_or("--inject-host is required")?,
        token_env: token_env.ok_or("--token-env is required")?,
        worker_threads,
    })
}

fn main() -> Result<(), String> {
    let args = args()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(serve(args))
}

async fn serve(args: Args) -> Result<(), String> {
    let token =
        std::env::var(&args.token_env).map_err(|_| format!("{} is not set", args.token_env))?;
    let value =
        header::HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| e.to_string())?;

    // A fresh CA, written where the benchmark's clients read it.
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "hudsucker-peer benchmark CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.ca_dir).map_err(|e| e.to_string())?;
    std::fs::write(args.ca_dir.join("ca.crt"), cert.pem()).map_err(|e| e.to_string())?;
    let issuer = Issuer::new(params, key);
    let ca = RcgenAuthority::new(issuer, 1_000, aws_lc_rs::default_provider());

    // Upstream TLS trusts the benchmark upstream's CA.
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(&args.upstream_ca).map_err(|e| format!("--upstream-ca: {e}"))?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let tls = ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let proxy = Proxy::builder()
        .with_listener(listener)
        .with_ca(ca)
        .with_http_connector(connector)
        .with_http_handler(Inject {
            host: args.inject_host.into(),
            value,
        })
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .build()
        .map_err(|e| e.to_string())?;
    println!("listening {addr}");
    proxy.start().await.map_err(|e| e.to_string())
}
