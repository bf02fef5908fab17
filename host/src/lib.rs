//! egress-proxy: an egress proxy for sandboxed AI agents whose policy is a
//! WebAssembly component.
//!
//! Module map:
//! - [`admin`]: the read-only admin listener (`/healthz`, `/readyz`, `/policy`).
//! - [`cli`]: the command line (clap types; `run`, `policy`, `ca`); `main.rs`
//!   only parses and calls in here. `policy test --coverage` and `policy replay` live
//!   in its `coverage` and `replay` modules; `run`'s report-mode and shadow flags in
//!   `safe`.
//! - [`dns`]: the DNS listener (hickory-server): A/AAAA only for names the policy
//!   routes, NXDOMAIN (never forwarded) for the rest.
//! - [`guard`]: the upstream address guard (no private, loopback, link-local/metadata
//!   or other non-public addresses unless allowed; never the proxy's own listeners).
//! - [`inspect`]: request bodies for the policy's body phase: limits, content codings,
//!   and the decoded bytes `decide-body` sees (bomb-capped); shared by the proxy and the CLI.
//! - [`metrics`]: Prometheus metrics (recorded by the data plane, read at scrape time
//!   from the runtime, the reloader and the proxy).
//! - [`policy`]: the policy runtime: one wasmtime engine with an epoch ticker, the
//!   loaded module (built-in default or a user `.wasm`), generations (module + routes
//!   + a pool of configured instances) and the verdicts they return.
//! - [`proxy`]: the data plane: the forward proxy (CONNECT + TLS interception, plain
//!   HTTP), the one request pipeline that asks the policy and denies, injects or
//!   forwards, the pooled upstream clients, deny/error responses and the access log;
//!   report mode and the shadow policy.
//! - [`reload`]: hot reload: watch the routes file and module (their directories),
//!   SIGHUP and a periodic hash check; build a whole new generation off the request
//!   path and publish it atomically; a failed reload keeps the old one.
//! - [`routes`]: reading a routes file (YAML or JSON) into the JSON document the policy
//!   is configured with.
//! - [`secrets`]: where injected credential values come from (the proxy's environment).
//! - [`target`]: turning a request URL or CONNECT authority into the normalised
//!   scheme/host/port/path the policy decides on (IP literals in any encoding, dot-
//!   segments and escapes resolved).
//! - [`cases`]: the `policy test` case-file format and its runner.
//! - [`telemetry`]: logging set-up.
//! - [`tls`]: the proxy's CA (create, save, load) and leaf certificates minted per host.

pub mod admin;
pub mod cases;
pub mod cli;
pub mod dns;
pub mod guard;
pub mod inspect;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod routes;
pub mod secrets;
pub mod target;
pub mod telemetry;
pub mod tls;
