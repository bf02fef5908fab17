//! egress-proxy's default policy: the routes file semantics of the mitmproxy addon
//! it replaces, as plain Rust that `cargo test` runs natively, compiled to a
//! WebAssembly component (wasm32-wasip2) that exports `egress:policy/decider`.
//!
//! Modules:
//!
//! - `config`: the routes document (JSON text) → typed routes, with errors that
//!   name the route and field at fault ([`ConfigError`]).
//! - `routes`: the typed document ([`Routes`]), host lookup, and the [`Summary`]
//!   `configure` reports.
//! - `decide`: the decision, [`Routes::decide`]: one [`Request`] → one [`Verdict`].
//! - `host`: host patterns (`api.github.com`, `*.pythonhosted.org`, IP literals).
//! - `path`: path normalisation and allowlist matching (dot-segments,
//!   percent-encoding and query tricks).
//! - `graphql`: `graphql`, operation types and mutation fields on an endpoint, and the
//!   `pub` parser of executable documents ([`graphql::syntax::parse`]).
//! - `git`: `git`, fetch and push rules for git's smart HTTP, and the `pub` parser of a
//!   push's ref commands ([`git::receive_pack_commands`], reused by the host).
//! - `mcp`: `mcp`, JSON-RPC methods and MCP tools on an endpoint.
//! - `coverage`: the items of a route `policy test --coverage` names (allowlist
//!   entries, listed ports, protocol rules) and which of them a request reaches.
//! - `endpoint`, `json`: the endpoint a protocol rule owns; JSON without duplicate keys.
//! - `rate`: `rate_limit`, a token bucket per route in the host's shared state.
//! - `request`, `verdict`: the domain types, mirroring the WIT.
//! - `component` (wasm only): the WIT glue; converts WIT types to and from the domain
//!   types and keeps the configured routes.
//!
//! ```
//! use policy_guest::{Part, Request, Routes, Scheme, Verdict};
//!
//! let routes = Routes::parse(r#"{"routes": [{"host": "api.github.com",
//!     "auth": {"scheme": "Bearer", "token_ref": "GH_PAT"}}]}"#)?;
//! let request = Request {
//!     scheme: Scheme::Https,
//!     method: "GET".into(),
//!     host: "api.github.com".to_owned(),
//!     port: 443,
//!     path: "/user".to_owned(),
//!     client: "127.0.0.1:50000".parse().unwrap(),
//! };
//! let Verdict::Inject { headers, .. } = routes.decide(&request) else { panic!() };
//! assert_eq!(headers[0].value[1], Part::Secret("GH_PAT".to_owned()));
//! # Ok::<(), policy_guest::ConfigError>(())
//! ```

#[cfg(target_family = "wasm")]
mod component;
mod config;
mod coverage;
mod decide;
mod endpoint;
pub mod git;
pub mod graphql;
mod host;
mod json;
mod mcp;
mod path;
mod rate;
mod request;
mod routes;
mod verdict;

pub use config::ConfigError;
pub use coverage::CoverageItem;
pub use request::{
    Body, Headers, MemoryBody, MemoryState, NoHeaders, NoState, Request, Scheme, State,
};
pub use routes::{Routes, Summary};
pub use verdict::{InjectedHeader, Part, REPORT_ANNOTATION, REPORT_STATUS_ANNOTATION, Verdict};
