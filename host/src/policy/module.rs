//! Loading a policy component: compile, check the WIT version it was built
//! against, and link it (WASI with an empty context) once per module.

use std::sync::Arc;

use wasmtime::component::Component;

use super::PolicyError;
use super::bindings::{DECIDER_EXPORT, DECIDER_UNVERSIONED, PACKAGE_NAME, VERSIONS, v1, v2};
use super::engine::{Shared, StoreData};

/// The default routes policy (`policy-guest`), compiled to wasm32-wasip2 by the build
/// script and embedded in the binary.
pub static BUILTIN_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policy_guest.wasm"));

/// A linked component of one contract version, ready to instantiate.
pub(super) enum Pre {
    /// Built against 0.1.0: head-only.
    V1(v1::PolicyPre<StoreData>),
    /// Built against 0.2.0.
    V2(v2::PolicyPre<StoreData>),
}

/// A compiled, linked policy component, ready to instantiate. Build generations from
/// it with [`PolicyModule::configure`].
pub struct PolicyModule {
    pub(super) shared: Arc<Shared>,
    pub(super) pre: Pre,
    sha256: String,
    origin: String,
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModule")
            .field("origin", &self.origin)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl PolicyModule {
    pub(super) fn compile(
        shared: &Arc<Shared>,
        bytes: &[u8],
        origin: String,
    ) -> Result<Arc<Self>, PolicyError> {
        let sha256 = super::sha256_hex(bytes);
        let component = Component::new(&shared.engine, bytes).map_err(|e| {
            let message = format!("{e:#}");
            // The pooling allocator checks memory sizes when the component is compiled.
            if message.contains("exceeds the limit") {
                PolicyError::OverLimits {
                    origin: origin.clone(),
                    message,
                }
            } else {
                PolicyError::Compile {
                    origin: origin.clone(),
                    message,
                }
            }
        })?;
        let version = check_version(shared, &component, &origin)?;
        let link_error = |e: wasmtime::Error| PolicyError::Link {
            origin: origin.clone(),
            message: format!("{e:#}"),
        };
        let instance_pre = shared
            .linker
            .instantiate_pre(&component)
            .map_err(link_error)?;
        let pre = match version {
            Version::V1 => Pre::V1(v1::PolicyPre::new(instance_pre).map_err(link_error)?),
            Version::V2 => Pre::V2(v2::PolicyPre::new(instance_pre).map_err(link_error)?),
        };
        Ok(Arc::new(Self {
            shared: Arc::clone(shared),
            pre,
            sha256,
            origin,
        }))
    }

    /// Hex SHA-256 of the component bytes: the policy's version in deny responses
    /// and status output.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Where the module came from (a path, or "the built-in policy").
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The contract version the component was built against, e.g. `0.2.0`.
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Pre::V1(_) => "0.1.0",
            Pre::V2(_) => "0.2.0",
        }
    }
}

/// Which contract a component speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Which of the contract versions this host speaks a component was built against;
/// any other is refused with a message naming them. Export lookups are semver-aware
/// (0.x: the minor is breaking), so `0.1.3` passes for `0.1.0` and `0.3.0` does not.
fn check_version(
    shared: &Shared,
    component: &Component,
    origin: &str,
) -> Result<Version, PolicyError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(&shared.engine).map(|(name, _)| name).collect();
    let prefix = format!("{DECIDER_UNVERSIONED}@");
    let found = exports.iter().find_map(|name| name.strip_prefix(&prefix));
    match found {
        Some(version) if compatible(version, "0.2.0") => Ok(Version::V2),
        Some(version) if compatible(version, "0.1.0") => Ok(Version::V1),
        Some(version) => Err(PolicyError::WrongVersion {
            origin: origin.to_owned(),
            found: format!("{PACKAGE_NAME}@{version}"),
            expected: speaks(),
        }),
        None => Err(PolicyError::MissingExport {
            origin: origin.to_owned(),
            expected: DECIDER_EXPORT,
            exports: if exports.is_empty() {
                "nothing".to_owned()
            } else {
                exports.join(", ")
            },
        }),
    }
}

/// The versions this host speaks, for messages: `egress:policy@0.2.0 or @0.1.0`.
fn speaks() -> String {
    let mut text = String::new();
    for (i, version) in VERSIONS.iter().enumerate() {
        if i == 0 {
            text.push_str(PACKAGE_NAME);
        } else {
            text.push_str(" or ");
        }
        text.push('@');
        text.push_str(version);
    }
    text
}

/// Semver compatibility as the component model applies it: same major, and for 0.x
/// the same minor.
fn compatible(found: &str, expected: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut it = v.split(['.', '-', '+']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    };
    match (parse(found), parse(expected)) {
        (Some((0, a)), Some((0, b))) => a == b,
        (Some((a, _)), Some((b, _))) => a == b,
        _ => false,
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::compatible;

    #[test]
    fn semver_rules() {
        assert!(compatible("0.1.3", "0.1.0"));
        assert!(!compatible("0.2.0", "0.1.0"));
        assert!(!compatible("1.0.0", "0.1.0"));
        assert!(compatible("1.4.0", "1.0.0"));
        assert!(!compatible("garbage", "0.1.0"));
    }

    #[test]
    fn messages_name_every_version() {
        assert_eq!(super::speaks(), "egress:policy@0.2.0 or @0.1.0");
    }
}
