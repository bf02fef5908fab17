//! Shared harness for egress-proxy's integration tests: paths to the fixture guests
//! built by `build.rs`, the proxy binary, and small helpers.

#![expect(
    clippy::expect_used,
    reason = "test harness: a broken set-up should fail the test loudly"
)]
pub mod process;
pub mod proxy;
pub mod upstream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use egress_proxy::policy::{Generation, Request, Runtime, RuntimeConfig, Scheme};
use egress_proxy::secrets::{SecretSource, SecretValue};

/// The `misbehave` fixture (built against the 0.1.0 contract): behaviour chosen by
/// the request host (see `tests/fixtures/misbehave`).
pub const MISBEHAVE_WASM: &str = env!("FIXTURE_MISBEHAVE_WASM");
/// The `body` fixture (0.2.0): bodies, state, annotations (see `tests/fixtures/body`).
pub const BODY_WASM: &str = env!("FIXTURE_BODY_WASM");
/// A guest built against `egress:policy@0.3.0`, which no host speaks.
pub const WRONG_VERSION_WASM: &str = env!("FIXTURE_WRONG_VERSION_WASM");

/// Secrets from a map, so tests need not touch the process environment.
#[derive(Debug, Default, Clone)]
pub struct MapSecrets(pub HashMap<String, Vec<u8>>);

impl MapSecrets {
    /// One secret.
    pub fn with(name: &str, value: &str) -> Self {
        Self(HashMap::from([(
            name.to_owned(),
            value.as_bytes().to_vec(),
        )]))
    }
}

impl SecretSource for MapSecrets {
    fn get(&self, name: &str) -> Option<SecretValue> {
        self.0.get(name).cloned().map(SecretValue::new)
    }
}

/// A runtime with short timeouts and a small memory limit, so faults are quick.
pub fn test_runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        decide_timeout: std::time::Duration::from_millis(50),
        memory_limit: 16 << 20,
        instance_slots: 32,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// The misbehave fixture configured with `routes` and `secrets`.
pub fn misbehave(runtime: &Runtime, routes: &str, secrets: MapSecrets) -> Generation {
    let module = runtime
        .load_file(std::path::Path::new(MISBEHAVE_WASM))
        .expect("fixture loads");
    module
        .configure(routes, Arc::new(secrets))
        .expect("fixture configures")
}

/// A GET to `https://{host}/`.
pub fn get(host: &str) -> Request {
    Request {
        scheme: Scheme::Https,
        method: "GET".into(),
        host: host.into(),
        port: 443,
        path: "/".into(),
        headers: vec![("accept".to_owned(), "*/*".to_owned())].into(),
        client: "127.0.0.1:1".parse().expect("address"),
    }
}

/// The `egress-proxy` binary built by this `cargo test` run
/// (`<target>/<profile>/egress-proxy`; cargo builds it because the host package has
/// integration tests).
pub fn proxy_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // <target>/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let bin = dir.join(format!("egress-proxy{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not found: run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}
