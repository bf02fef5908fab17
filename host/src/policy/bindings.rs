//! The generated bindings for `wit/policy.wit`, fenced off: nothing outside
//! `policy` sees these types; `convert` maps them to and from the domain types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "policy",
    ownership: Borrowing { duplicate_if_necessary: false },
    with: {
        "egress:policy/request-headers.headers": super::headers::RequestHeaders,
    },
});

pub use exports::egress::policy::decider as wit;

/// The WIT package this host speaks, with its version, e.g. `egress:policy@0.1.0`.
pub const PACKAGE: &str = "egress:policy@0.1.0";
/// The package name without a version.
pub const PACKAGE_NAME: &str = "egress:policy";
/// The interface a policy must export, as it appears in a component's export names.
pub const DECIDER_EXPORT: &str = "egress:policy/decider@0.1.0";
/// The export name without its version, to recognise a guest built for another one.
pub const DECIDER_UNVERSIONED: &str = "egress:policy/decider";
