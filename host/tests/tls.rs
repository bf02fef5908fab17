//! TLS interception end to end: a CA made in a temporary directory, leaves minted from
//! it, and real rustls handshakes over loopback sockets (port 0) against a client
//! that trusts only that CA. Also the `ca` subcommands, run as a real process.

#![allow(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up should fail the test"
)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use egress_proxy::tls::{
    ALPN_PROTOCOLS, CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, MintingResolver, TlsError,
    crypto_provider,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, ServerConfig};
use rustls::{ServerConnection, StreamOwned};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A CA saved in a fresh temporary directory, loaded back from it.
fn ca_in_tempdir() -> (tempfile::TempDir, Arc<CertificateAuthority>) {
    let dir = tempfile::tempdir().unwrap();
    CertificateAuthority::generate()
        .unwrap()
        .save(dir.path(), false)
        .unwrap();
    let ca = CertificateAuthority::load(dir.path()).unwrap();
    (dir, Arc::new(ca))
}

/// A client that trusts only `ca` and offers `alpn`.
fn client_config(ca: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What one side of a handshake saw: the negotiated ALPN protocol, or the error.
type Side = Result<Option<Vec<u8>>, std::io::Error>;

/// Listen on loopback (IPv6 if `ip` is, falling back to IPv4), serve one TLS
/// connection with `server`, and connect to it as `name` with `client`. Each side
/// sends a message and reads the other's.
fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: &str,
    ip: IpAddr,
) -> (Side, Side) {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .or_else(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = thread::spawn(move || -> Side {
        let (tcp, _) = listener.accept()?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        let conn = ServerConnection::new(server).map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        exchange(&mut tls, b"ping", b"pong")?;
        Ok(tls.conn.alpn_protocol().map(<[u8]>::to_vec))
    });
    let server_name = ServerName::try_from(name.to_owned()).unwrap();
    let client_side = (|| -> Side {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        let conn = ClientConnection::new(client, server_name).map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(conn, tcp);
        exchange(&mut tls, b"pong", b"ping")?;
        Ok(tls.conn.alpn_protocol().map(<[u8]>::to_vec))
    })();
    (client_side, server_side.join().unwrap())
}

/// Send `send`, then read exactly `expect`.
fn exchange(tls: &mut impl ReadWrite, expect: &[u8], send: &[u8]) -> std::io::Result<()> {
    tls.write_all(send)?;
    tls.flush()?;
    let mut got = vec![0; expect.len()];
    tls.read_exact(&mut got)?;
    assert_eq!(got, expect);
    Ok(())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The rustls error inside an I/O error from a TLS stream.
fn rustls_error(err: &std::io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

fn h2_and_http1() -> Vec<&'static [u8]> {
    ALPN_PROTOCOLS.to_vec()
}

#[test]
fn a_saved_ca_loads_back() {
    let (dir, ca) = ca_in_tempdir();
    assert!(dir.path().join(CA_CERT_FILE).is_file());
    assert!(dir.path().join(CA_KEY_FILE).is_file());
    let again = CertificateAuthority::load(dir.path()).unwrap();
    assert_eq!(again.cert_der(), ca.cert_der());
}

#[test]
fn dns_leaf_completes_a_handshake_and_negotiates_h2() {
    let (_dir, ca) = ca_in_tempdir();
    let resolver = MintingResolver::new(ca.clone());
    let server = resolver.server_config_for("api.example.com").unwrap();
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);

    let client = client_config(ca.cert_der(), &h2_and_http1());
    let (c, s) = handshake(server.clone(), client, "api.example.com", localhost);
    assert_eq!(c.unwrap().as_deref(), Some(&b"h2"[..]));
    assert_eq!(s.unwrap().as_deref(), Some(&b"h2"[..]));

    let client = client_config(ca.cert_der(), &[b"http/1.1"]);
    let (c, _) = handshake(server.clone(), client, "API.example.com", localhost);
    assert_eq!(c.unwrap().as_deref(), Some(&b"http/1.1"[..]));

    let client = client_config(ca.cert_der(), &[]);
    let (c, s) = handshake(server, client, "api.example.com", localhost);
    assert_eq!((c.unwrap(), s.unwrap()), (None, None));
    assert_eq!(resolver.cache().minted(), 1);
}

#[test]
fn ip_leaves_complete_handshakes() {
    let (_dir, ca) = ca_in_tempdir();
    let resolver = MintingResolver::new(ca.clone());
    for host in ["127.0.0.1", "::1"] {
        let ip: IpAddr = host.parse().unwrap();
        let server = resolver.server_config_for(host).unwrap();
        let client = client_config(ca.cert_der(), &h2_and_http1());
        let (c, s) = handshake(server, client, host, ip);
        assert_eq!(c.unwrap().as_deref(), Some(&b"h2"[..]), "{host}");
        s.unwrap();
    }
    // A bracketed IPv6 CONNECT host is the same leaf.
    let a = resolver.server_config_for("[::1]").unwrap();
    let b = resolver.server_config_for("::1").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
}

#[test]
fn sni_naming_another_host_is_refused() {
    let (_dir, ca) = ca_in_tempdir();
    let resolver = MintingResolver::new(ca.clone());
    let server = resolver.server_config_for("api.example.com").unwrap();
    let client = client_config(ca.cert_der(), &h2_and_http1());
    let (c, s) = handshake(
        server,
        client,
        "other.example.com",
        Ipv4Addr::LOCALHOST.into(),
    );
    assert!(c.is_err(), "client: {c:?}");
    let err = s.unwrap_err();
    assert!(
        err.to_string().contains("no server certificate"),
        "server: {err}"
    );
}

#[test]
fn a_client_verifying_another_name_rejects_the_leaf() {
    let (_dir, ca) = ca_in_tempdir();
    let resolver = MintingResolver::new(ca.clone());
    // IP names send no SNI, so the server presents its leaf and the client must
    // notice it names another address.
    let server = resolver.server_config_for("127.0.0.1").unwrap();
    let client = client_config(ca.cert_der(), &h2_and_http1());
    let (c, s) = handshake(server, client, "127.0.0.2", Ipv4Addr::LOCALHOST.into());
    let err = c.unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err}"
    );
    assert!(s.is_err());
}

#[test]
fn a_client_trusting_another_ca_rejects_the_leaf() {
    let (_dir, ca) = ca_in_tempdir();
    let (_other_dir, other) = ca_in_tempdir();
    let server = MintingResolver::new(ca)
        .server_config_for("api.example.com")
        .unwrap();
    let client = client_config(other.cert_der(), &h2_and_http1());
    let (c, _) = handshake(
        server,
        client,
        "api.example.com",
        Ipv4Addr::LOCALHOST.into(),
    );
    // Every generated CA has the same subject, so the client finds the other CA as
    // the issuer by name and then rejects the signature.
    let err = c.unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::BadSignature | CertificateError::UnknownIssuer
            ))
        ),
        "{err}"
    );
}

#[test]
fn the_sni_resolver_mints_by_sni() {
    let (_dir, ca) = ca_in_tempdir();
    let resolver = Arc::new(MintingResolver::new(ca.clone()));
    let server = resolver.sni_server_config().unwrap();
    for host in ["a.example.com", "b.example.com"] {
        let client = client_config(ca.cert_der(), &h2_and_http1());
        let (c, s) = handshake(server.clone(), client, host, Ipv4Addr::LOCALHOST.into());
        c.unwrap();
        s.unwrap();
    }
    assert_eq!(resolver.cache().minted(), 2);
}

#[test]
fn the_cache_is_bounded() {
    let (_dir, ca) = ca_in_tempdir();
    let resolver = MintingResolver::with_capacity(ca, 2);
    for host in ["one.example", "two.example", "three.example"] {
        resolver.server_config_for(host).unwrap();
    }
    assert_eq!(resolver.cache().len(), 2);
    assert_eq!(resolver.cache().minted(), 3);
}

#[test]
fn concurrent_requests_for_one_new_host_mint_once() {
    const THREADS: usize = 32;
    let (_dir, ca) = ca_in_tempdir();
    let resolver = Arc::new(MintingResolver::new(ca));
    let barrier = Arc::new(Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let (resolver, barrier) = (resolver.clone(), barrier.clone());
            thread::spawn(move || {
                barrier.wait();
                resolver.server_config_for("fresh.example.com").unwrap()
            })
        })
        .collect();
    let configs: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(resolver.cache().minted(), 1);
    assert_eq!(resolver.cache().len(), 1);
    assert!(configs.iter().all(|c| Arc::ptr_eq(c, &configs[0])));
}

#[test]
fn loading_a_bad_ca_directory_fails_clearly() {
    let empty = tempfile::tempdir().unwrap();
    let err = CertificateAuthority::load(empty.path()).unwrap_err();
    assert!(matches!(err, TlsError::Missing { .. }), "{err}");

    let (dir, _) = ca_in_tempdir();
    let (other, _) = ca_in_tempdir();
    std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
    let err = CertificateAuthority::load(dir.path()).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("is not the private key of"),
        "{err}"
    );
}

// --- the `ca` subcommands ---

fn proxy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .args(args)
        .env_remove("EGRESS_PROXY_CA_DIR")
        .env_remove("EGRESS_PROXY_CA_FORCE")
        .env_remove("EGRESS_PROXY_CA_CERT_PATH")
        .env_remove("EGRESS_PROXY_CA_ENV_PROXY_URL")
        .env_remove("EGRESS_PROXY_CA_ENV_NO_PROXY_VARS")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn cli_create_writes_the_ca_and_refuses_to_overwrite_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ca");
    let out = proxy(&["ca", "create", "--dir", path_str(&dir)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let (cert, key) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
    assert!(stdout.contains(path_str(&cert)), "{stdout}");
    assert!(stdout.contains(path_str(&key)), "{stdout}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let first = std::fs::read(&cert).unwrap();

    let again = proxy(&["ca", "create", "--dir", path_str(&dir)]);
    assert_eq!(again.status.code(), Some(1));
    let stderr = text(&again.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        first,
        "the CA was not replaced"
    );

    let forced = proxy(&["ca", "create", "--dir", path_str(&dir), "--force"]);
    assert!(forced.status.success(), "{}", text(&forced.stderr));
    assert_ne!(std::fs::read(&cert).unwrap(), first);
    CertificateAuthority::load(&dir).unwrap();
}

#[test]
fn cli_print_outputs_the_ca_certificate() {
    let (dir, ca) = ca_in_tempdir();
    let out = proxy(&["ca", "print", "--dir", path_str(dir.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = CertificateDer::from_pem_slice(&out.stdout).unwrap();
    assert_eq!(&printed, ca.cert_der());
    assert!(!text(&out.stdout).contains("PRIVATE"));

    // The directory can come from the environment.
    let out = Command::new(env!("CARGO_BIN_EXE_egress-proxy"))
        .args(["ca", "print"])
        .env("EGRESS_PROXY_CA_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        CertificateDer::from_pem_slice(&out.stdout).unwrap(),
        printed
    );
}

#[test]
fn cli_print_reports_a_bad_ca_directory() {
    let empty = tempfile::tempdir().unwrap();
    let out = proxy(&["ca", "print", "--dir", path_str(empty.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not exist"),
        "{}",
        text(&out.stderr)
    );

    let (dir, _) = ca_in_tempdir();
    let (other, _) = ca_in_tempdir();
    std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE)).unwrap();
    let out = proxy(&["ca", "print", "--dir", path_str(dir.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not the private key of"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn cli_env_prints_export_lines() {
    let (dir, _) = ca_in_tempdir();
    let out = proxy(&["ca", "env", "--dir", path_str(dir.path())]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let cert = dir.path().join(CA_CERT_FILE);
    for var in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "NODE_EXTRA_CA_CERTS",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
    ] {
        let line = format!("export {var}='{}'", path_str(&cert));
        assert!(stdout.lines().any(|l| l == line), "{line} in\n{stdout}");
    }
    assert!(
        stdout.contains("export HTTPS_PROXY='http://127.0.0.1:8080'\n"),
        "the proxy variables default to the default listen address: {stdout}"
    );

    let out = proxy(&[
        "ca",
        "env",
        "--cert-path",
        "/etc/egress-proxy/ca.crt",
        "--proxy-url",
        "http://egress-proxy:8080",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("export SSL_CERT_FILE='/etc/egress-proxy/ca.crt'\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("export HTTPS_PROXY='http://egress-proxy:8080'\n"),
        "{stdout}"
    );
    assert!(stdout.contains("export http_proxy='http://egress-proxy:8080'\n"));

    let out = proxy(&["ca", "env", "--cert-path", "/ca.crt", "--no-proxy-vars"]);
    assert!(!text(&out.stdout).contains("PROXY"));

    let empty = tempfile::tempdir().unwrap();
    let out = proxy(&["ca", "env", "--dir", path_str(empty.path())]);
    assert_eq!(out.status.code(), Some(1), "no certificate, no exports");
    assert!(out.stdout.is_empty());
}
