//! The `egress-proxy run` process in its environment: it keeps serving when its log
//! reader goes away.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

#[test]
fn a_closed_log_pipe_does_not_stop_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, "routes:\n  - host: a.example\n").unwrap();
    let mut child = Command::new(egress_proxy_tests::proxy_bin())
        .args(["run", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--routes")
        .arg(&routes)
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listen = loop {
        let line = lines.next().expect("proxy started").unwrap();
        let event: serde_json::Value = serde_json::from_str(&line).unwrap();
        if event["message"] == "egress-proxy listening" {
            break event["listen"].as_str().unwrap().to_owned();
        }
    };
    drop(lines);
    // Each request writes an access line into the closed pipe.
    for _ in 0..3 {
        let mut stream = TcpStream::connect(&listen).unwrap();
        stream
            .write_all(
                b"GET http://b.example/ HTTP/1.1\r\nHost: b.example\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 403"), "{response}");
    }
    assert!(child.try_wait().unwrap().is_none(), "the proxy exited");
    child.kill().unwrap();
    child.wait().unwrap();
}
