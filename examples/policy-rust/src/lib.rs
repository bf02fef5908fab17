//! An example egress-proxy policy, small enough to read in one sitting and meant to be
//! copied as the start of your own. Its policy document (the `--routes` file, which the
//! proxy hands to `configure` as JSON) looks like this:
//!
//! ```yaml
//! max_upload_bytes: 1048576        # optional, default 1 MiB
//! hosts:
//!   - host: pypi.org               # GET and HEAD only
//!   - host: api.github.com
//!     uploads: true                # also POST, PUT and PATCH
//!     tokens:                      # path prefix → secret, as `authorization: Bearer …`
//!       /repos/acme/: GH_ACME_TOKEN
//!       /repos/acme-labs/: GH_LABS_TOKEN
//!     forbidden_fields: [admin]    # a JSON upload body must not have these fields
//! ```
//!
//! What it decides, in order (`decide.rs`): an unlisted host is denied (403); a port
//! other than the scheme's default is denied (403); a CONNECT to a listed host is
//! allowed; a method other than GET and HEAD (or POST, PUT and PATCH on an `uploads`
//! host) is denied (405); an upload without `content-length` is denied (411) and a
//! body over `max_upload_bytes` is denied (413); an upload to a host with
//! `forbidden_fields` needs its body (`NeedBody`, answered through `decide_body`),
//! which must be JSON (else 400) without those top-level fields (else 403, with the
//! field as an annotation); a path under a token prefix (the
//! longest one wins) gets that token injected, over HTTPS only; anything else is
//! allowed.
//!
//! Modules: `config` parses and checks the document ([`Policy::parse`]), `decide`
//! makes the decision ([`Policy::decide`]) on the crate's own types, and `component`
//! (built for wasm only) is the thin WIT glue that converts to and from them. The
//! logic is plain Rust: `cargo test` runs its tests natively, without wasm.
//!
//! ```
//! use example_policy::{Policy, Request, Scheme, Verdict};
//!
//! let policy = Policy::parse(r#"{"hosts": [{"host": "pypi.org"}]}"#).unwrap();
//! let request = Request {
//!     scheme: Scheme::Https,
//!     method: "GET".into(),
//!     host: "pypi.org".to_owned(),
//!     port: 443,
//!     path: "/simple/".to_owned(),
//! };
//! let no_headers = |_: &str| Vec::new();
//! let verdict = policy.decide(&request, &no_headers);
//! assert_eq!(verdict, Verdict::Allow { rule: Some("pypi.org".to_owned()) });
//! ```

#[cfg(target_family = "wasm")]
mod component;
mod config;
mod decide;

pub use config::{DEFAULT_MAX_UPLOAD_BYTES, Policy, Summary};
pub use decide::{Body, Headers, InjectedHeader, Part, Request, Scheme, Verdict};
