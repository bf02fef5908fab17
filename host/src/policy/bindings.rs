//! The generated bindings for the WIT contract, fenced off: nothing outside `policy`
//! sees these types; `convert` maps them to and from the domain types.
//!
//! Two versions are bound: [`v2`] for `wit/policy.wit` (0.2.0, the current contract)
//! and [`v1`] for `wit/v0.1.0/policy.wit`, so guests built before the body phase keep
//! working unchanged.

/// `egress:policy@0.2.0`: bodies, state, annotations.
pub(super) mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy",
        ownership: Borrowing { duplicate_if_necessary: false },
        with: {
            "egress:policy/request-headers.headers": crate::policy::headers::RequestHeaders,
            "egress:policy/request-body.body": crate::policy::body::PolicyBody,
        },
    });

    pub use exports::egress::policy::decider as wit;
}

/// `egress:policy@0.1.0`: head-only decisions.
pub(super) mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.1.0",
        world: "policy",
        ownership: Borrowing { duplicate_if_necessary: false },
        with: {
            "egress:policy/request-headers.headers": crate::policy::headers::RequestHeaders,
        },
    });

    pub use exports::egress::policy::decider as wit;
}

/// The package name without a version.
pub const PACKAGE_NAME: &str = "egress:policy";
/// The export name without its version, to recognise a guest built for any version.
pub const DECIDER_UNVERSIONED: &str = "egress:policy/decider";
/// The contract versions this host loads, newest first.
pub const VERSIONS: &[&str] = &["0.2.0", "0.1.0"];
/// The current contract, e.g. for messages: `egress:policy@0.2.0`.
pub const PACKAGE: &str = "egress:policy@0.2.0";
/// The current contract's decider export.
pub const DECIDER_EXPORT: &str = "egress:policy/decider@0.2.0";
