//! `egress-proxy ca create | print | env`: the proxy's CA, and what an agent needs to
//! trust it.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::tls::{CA_CERT_FILE, CertificateAuthority};

/// Variables that point TLS clients at a CA bundle: OpenSSL and most tools, Python
/// requests, curl, Node.js (added to its built-in roots), git, pip, cargo, the AWS
/// SDKs and CLI, gRPC (C-core: Python, Ruby, PHP, ...), Deno.
pub const TRUST_ENV_VARS: [&str; 10] = [
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "CARGO_HTTP_CAINFO",
    "AWS_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
    "DENO_CERT",
];

/// Loopback, which the agent reaches directly (its own services, the proxy's admin
/// listener): `NO_PROXY`.
pub const NO_PROXY: &str = "localhost,127.0.0.1,::1";

/// `egress-proxy ca …`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Create a new CA: writes DIR/ca.crt (give it to agents) and DIR/ca.key (mode
    /// 0600, keep it with the proxy) and prints their paths. Refuses to replace an
    /// existing CA unless --force.
    #[command(alias = "init")]
    Create {
        /// Where the CA lives.
        #[command(flatten)]
        dir: CaDir,
        /// Replace an existing CA. Agents that trust the old certificate must then be
        /// given the new one.
        #[arg(long, env = "EGRESS_PROXY_CA_FORCE")]
        force: bool,
    },
    /// Print the CA certificate (PEM) on stdout: what an agent must trust.
    Print {
        /// Where the CA lives.
        #[command(flatten)]
        dir: CaDir,
    },
    /// Print `export` lines that make an agent's tools trust the CA and use the proxy
    /// (eval them in the agent's shell): SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
    /// CURL_CA_BUNDLE, NODE_EXTRA_CA_CERTS, GIT_SSL_CAINFO, PIP_CERT, CARGO_HTTP_CAINFO,
    /// AWS_CA_BUNDLE, GRPC_DEFAULT_SSL_ROOTS_FILE_PATH and DENO_CERT, all set to the
    /// certificate's path; HTTP_PROXY/HTTPS_PROXY (both cases) set to --proxy-url,
    /// NO_PROXY (both cases) set to loopback, and NODE_USE_ENV_PROXY=1.
    ///
    /// Most of these variables *replace* a tool's trusted roots rather than add to
    /// them. That is what a bottled agent needs: all of its traffic goes through the
    /// proxy, which presents certificates from this CA for every host, so the proxy CA
    /// alone suffices. An agent that also reaches hosts directly (not through the
    /// proxy) would need a combined bundle: the system roots followed by ca.crt, with
    /// --cert-path pointing at that file.
    Env {
        /// Where the CA lives (the default certificate is DIR/ca.crt).
        #[arg(
            long,
            env = "EGRESS_PROXY_CA_DIR",
            required_unless_present = "cert_path"
        )]
        dir: Option<PathBuf>,
        /// The certificate path as the agent sees it (e.g. where it is mounted in the
        /// sandbox); printed as given, not read. Default: DIR/ca.crt, made absolute.
        #[arg(long, env = "EGRESS_PROXY_CA_CERT_PATH", alias = "ca-cert")]
        cert_path: Option<PathBuf>,
        /// The proxy URL exported as HTTP_PROXY/HTTPS_PROXY (and the lower-case
        /// forms), as the agent reaches the proxy, e.g. `http://egress-proxy:8080`.
        #[arg(
            long,
            env = "EGRESS_PROXY_CA_ENV_PROXY_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        proxy_url: String,
        /// Print only the CA variables, not the proxy ones.
        #[arg(long, env = "EGRESS_PROXY_CA_ENV_NO_PROXY_VARS")]
        no_proxy_vars: bool,
    },
}

/// The CA directory flag shared by the `ca` subcommands.
#[derive(Debug, Args)]
pub struct CaDir {
    /// Directory holding ca.crt and ca.key.
    #[arg(long = "dir", env = "EGRESS_PROXY_CA_DIR", alias = "out")]
    pub path: PathBuf,
}

pub(super) fn run(cmd: CaCommand) -> Result<ExitCode> {
    match cmd {
        CaCommand::Create { dir, force } => create(&dir.path, force),
        CaCommand::Print { dir } => print(&dir.path),
        CaCommand::Env {
            dir,
            cert_path,
            proxy_url,
            no_proxy_vars,
        } => env(
            dir.as_deref(),
            cert_path,
            (!no_proxy_vars).then_some(proxy_url.as_str()),
        ),
    }
}

fn create(dir: &Path, force: bool) -> Result<ExitCode> {
    let ca = CertificateAuthority::generate()?;
    let (cert, key) = ca.save(dir, force)?;
    writeln!(std::io::stdout(), "certificate: {}", cert.display())?;
    writeln!(std::io::stdout(), "private key: {}", key.display())?;
    writeln!(std::io::stdout(), "sha256:      {}", ca.fingerprint())?;
    Ok(ExitCode::SUCCESS)
}

fn print(dir: &Path) -> Result<ExitCode> {
    let ca = CertificateAuthority::load(dir)?;
    write!(std::io::stdout(), "{}", ca.cert_pem())?;
    Ok(ExitCode::SUCCESS)
}

fn env(
    dir: Option<&Path>,
    cert_path: Option<PathBuf>,
    proxy_url: Option<&str>,
) -> Result<ExitCode> {
    let cert_path = match (cert_path, dir) {
        (Some(path), _) => path,
        (None, Some(dir)) => default_cert_path(dir)?,
        (None, None) => anyhow::bail!("give --dir or --cert-path"),
    };
    let value = cert_path
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", cert_path.display()))?;
    write!(std::io::stdout(), "{}", export_lines(value, proxy_url))?;
    Ok(ExitCode::SUCCESS)
}

/// DIR/ca.crt, absolute (the agent's shell may run elsewhere), checked to hold a
/// certificate: an agent told to trust a missing file would fail every request.
fn default_cert_path(dir: &Path) -> Result<PathBuf> {
    let path = std::path::absolute(dir.join(CA_CERT_FILE))
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let pem = std::fs::read(&path)
        .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
    CertificateDer::from_pem_slice(&pem)
        .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
    Ok(path)
}

/// The `export` lines for a certificate path and an optional proxy URL.
fn export_lines(cert_path: &str, proxy_url: Option<&str>) -> String {
    let mut out = String::new();
    let mut export = |name: &str, value: &str| {
        out.push_str(&format!("export {name}={}\n", shell_quote(value)));
    };
    for name in TRUST_ENV_VARS {
        export(name, cert_path);
    }
    if let Some(url) = proxy_url {
        for name in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
            export(name, url);
        }
        for name in ["NO_PROXY", "no_proxy"] {
            export(name, NO_PROXY);
        }
        // Node >= 24: built-in fetch/http honour the proxy variables only with this.
        export("NODE_USE_ENV_PROXY", "1");
    }
    out
}

/// Quote for a POSIX shell: single quotes, with `'` written as `'\''`.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_lines_are_quoted_for_a_shell() {
        let text = export_lines("/etc/ca dir/it's.crt", None);
        assert_eq!(text.lines().count(), TRUST_ENV_VARS.len());
        assert!(text.contains("export SSL_CERT_FILE='/etc/ca dir/it'\\''s.crt'\n"));
        assert!(!text.contains("PROXY"));
        let text = export_lines("/ca.crt", Some("http://127.0.0.1:8080"));
        assert!(text.contains("export HTTPS_PROXY='http://127.0.0.1:8080'\n"));
        assert!(text.contains("export https_proxy='http://127.0.0.1:8080'\n"));
        assert!(text.contains("export NO_PROXY='localhost,127.0.0.1,::1'\n"));
        assert!(text.contains("export NODE_USE_ENV_PROXY='1'\n"));
        assert!(text.contains("export CARGO_HTTP_CAINFO='/ca.crt'\n"));
    }
}
