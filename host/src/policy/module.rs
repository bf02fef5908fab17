//! Loading a policy component: compile it (here, or in a child process) or load its
//! precompiled artifact, check the WIT version it was built against, and link it (WASI
//! with an empty context) once per module.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::artifact::{self, Artifact};
use super::bindings::{DECIDER_EXPORT, DECIDER_UNVERSIONED, PACKAGE_NAME, VERSIONS, v1, v2};
use super::engine::{Shared, StoreData};
use super::{PolicyError, PolicyStats};

/// The default routes policy (`policy-guest`), compiled to wasm32-wasip2 by the build
/// script and embedded in the binary. The proxy normally loads its precompiled
/// artifact instead; these bytes are the fallback when that does not fit.
pub static BUILTIN_POLICY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/policy_guest.wasm"));

/// Hex sha256 of [`BUILTIN_POLICY`], computed by the build script.
const BUILTIN_SHA256: &str = env!("EGRESS_PROXY_BUILTIN_SHA256");

/// What the built-in policy is called in messages.
const BUILTIN_ORIGIN: &str = "the built-in policy";

/// How a module's machine code came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// The built-in policy's artifact, compiled when this binary was built.
    Builtin,
    /// Compiled by Cranelift in this process.
    InProcess,
    /// Compiled by a child process (`policy compile`) and loaded from its artifact.
    Child,
    /// A precompiled artifact the operator gave (`--policy policy.cwasm`).
    Artifact,
}

impl Code {
    /// A short name for logs, metrics and JSON: `build`, `in_process`, `child`,
    /// `artifact`.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Builtin => "build",
            Code::InProcess => "in_process",
            Code::Child => "child",
            Code::Artifact => "artifact",
        }
    }

    /// A phrase for `policy check`.
    pub fn describe(self) -> &'static str {
        match self {
            Code::Builtin => "at build time (the built-in policy's precompiled artifact)",
            Code::InProcess => "in this process",
            Code::Child => "in a child process (policy compile)",
            Code::Artifact => "ahead of time (a policy compile artifact)",
        }
    }
}

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
    code: Code,
}

impl std::fmt::Debug for PolicyModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyModule")
            .field("origin", &self.origin)
            .field("sha256", &self.sha256)
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

impl PolicyModule {
    /// Compile component bytes with Cranelift, here.
    pub(super) fn compile(
        shared: &Arc<Shared>,
        bytes: &[u8],
        origin: String,
    ) -> Result<Arc<Self>, PolicyError> {
        let sha256 = super::sha256_hex(bytes);
        PolicyStats::bump(&shared.stats.compiled_in_process);
        let component = Component::new(&shared.engine, bytes)
            .map_err(|e| compile_error(format!("{e:#}"), &origin))?;
        Self::link(shared, &component, sha256, origin, Code::InProcess)
    }

    /// Load a precompiled artifact. `sha256` identifies the module (the component's
    /// hash for the built-in policy and a child's output, the file's for an artifact
    /// the operator gave).
    pub(super) fn from_artifact(
        shared: &Arc<Shared>,
        artifact: Artifact<'_>,
        sha256: String,
        origin: String,
        code: Code,
    ) -> Result<Arc<Self>, PolicyError> {
        let component = artifact::deserialize(&shared.engine, artifact).map_err(|e| {
            let message = format!("{e:#}");
            if message.contains("exceeds the limit") {
                PolicyError::OverLimits {
                    origin: origin.clone(),
                    message,
                }
            } else {
                PolicyError::Artifact {
                    origin: origin.clone(),
                    message,
                }
            }
        })?;
        match code {
            Code::Child => PolicyStats::bump(&shared.stats.compiled_in_child),
            _ => PolicyStats::bump(&shared.stats.artifacts_loaded),
        }
        Self::link(shared, &component, sha256, origin, code)
    }

    /// The built-in policy from `artifact` (its precompiled code); on any mismatch,
    /// logged, compiled here from [`BUILTIN_POLICY`].
    pub(super) fn builtin(shared: &Arc<Shared>, artifact: &[u8]) -> Result<Arc<Self>, PolicyError> {
        let origin = BUILTIN_ORIGIN.to_owned();
        match Self::from_artifact(
            shared,
            Artifact::Bytes(artifact),
            BUILTIN_SHA256.to_owned(),
            origin.clone(),
            Code::Builtin,
        ) {
            Ok(module) => Ok(module),
            Err(err) => {
                tracing::warn!(
                    reason = %err,
                    "the built-in policy's precompiled code does not fit this host or build; \
                     compiling it at start-up instead (slower, and the process stays larger)"
                );
                Self::compile(shared, BUILTIN_POLICY, origin)
            }
        }
    }

    /// Check the contract version and link against the host's imports.
    fn link(
        shared: &Arc<Shared>,
        component: &Component,
        sha256: String,
        origin: String,
        code: Code,
    ) -> Result<Arc<Self>, PolicyError> {
        let version = check_version(&shared.engine, component, &origin)?;
        let link_error = |e: wasmtime::Error| PolicyError::Link {
            origin: origin.clone(),
            message: format!("{e:#}"),
        };
        let instance_pre = shared
            .linker
            .instantiate_pre(component)
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
            code,
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

    /// How its machine code came to be.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The contract version the component was built against, e.g. `0.2.0`.
    pub fn contract(&self) -> &'static str {
        match self.pre {
            Pre::V1(_) => "0.1.0",
            Pre::V2(_) => "0.2.0",
        }
    }
}

/// Compile component bytes to an artifact for this host (`policy compile`), with the
/// runtime's compiler settings and no instance pool (the pool's limits are checked
/// when the artifact is loaded). Returns the artifact and the contract version.
pub fn precompile(bytes: &[u8], origin: &str) -> Result<(Vec<u8>, &'static str), PolicyError> {
    let engine =
        Engine::new(&super::compiler_config::compiler_config()).map_err(PolicyError::engine)?;
    let component =
        Component::new(&engine, bytes).map_err(|e| compile_error(format!("{e:#}"), origin))?;
    let version = check_version(&engine, &component, origin)?;
    let artifact = component.serialize().map_err(PolicyError::engine)?;
    let contract = match version {
        Version::V1 => "0.1.0",
        Version::V2 => "0.2.0",
    };
    Ok((artifact, contract))
}

fn compile_error(message: String, origin: &str) -> PolicyError {
    // The pooling allocator checks memory sizes when the component is compiled.
    if message.contains("exceeds the limit") {
        PolicyError::OverLimits {
            origin: origin.to_owned(),
            message,
        }
    } else {
        PolicyError::Compile {
            origin: origin.to_owned(),
            message,
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
    engine: &Engine,
    component: &Component,
    origin: &str,
) -> Result<Version, PolicyError> {
    let ty = component.component_type();
    let exports: Vec<&str> = ty.exports(engine).map(|(name, _)| name).collect();
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
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::policy::engine::RuntimeConfig;
    use crate::policy::{Decision, Head, Request, Scheme};
    use crate::secrets::EnvSecrets;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(RuntimeConfig::default()).unwrap())
    }

    fn compiled_here(shared: &Shared) -> u64 {
        shared.stats.compiled_in_process.load(Ordering::Relaxed)
    }

    /// The module decides: allows the one routed host, denies another.
    fn assert_decides(module: &Arc<PolicyModule>) {
        let generation = module
            .configure(r#"{"routes":[{"host":"a.example"}]}"#, Arc::new(EnvSecrets))
            .unwrap();
        let request = |host: &str| Request {
            scheme: Scheme::Https,
            method: "GET".into(),
            host: host.into(),
            port: 443,
            path: "/".into(),
            headers: Vec::new().into(),
            client: "127.0.0.1:1".parse().unwrap(),
        };
        assert!(matches!(
            generation.decide(&request("a.example")),
            Head::Decided(Decision::Allow { .. })
        ));
        assert!(matches!(
            generation.decide(&request("b.example")),
            Head::Decided(Decision::Deny(_))
        ));
    }

    #[test]
    fn the_builtin_policy_loads_precompiled_without_compiling() {
        let shared = shared();
        let module = PolicyModule::builtin(&shared, artifact::BUILTIN_ARTIFACT).unwrap();
        assert_eq!(module.code(), Code::Builtin);
        assert_eq!(compiled_here(&shared), 0, "nothing compiled");
        assert_eq!(shared.stats.artifacts_loaded.load(Ordering::Relaxed), 1);
        assert_eq!(module.sha256(), crate::policy::sha256_hex(BUILTIN_POLICY));
        assert_eq!(module.contract(), "0.2.0");
        assert_decides(&module);
    }

    /// The engine section of an artifact: format byte 0, the length of wasmtime's
    /// version string (its major version), the string (`serialization.rs` in
    /// wasmtime).
    fn with_wasmtime_version(artifact: &[u8], from: &str, to: &str) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let mut needle = vec![0, u8::try_from(from.len()).unwrap()];
        needle.extend_from_slice(from.as_bytes());
        let at = artifact
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the artifact names its wasmtime version");
        let mut patched = artifact.to_vec();
        patched[at + 2..at + needle.len()].copy_from_slice(to.as_bytes());
        patched
    }

    #[test]
    fn a_mismatched_or_corrupt_builtin_artifact_falls_back_to_compiling() {
        // Compiled with other settings (no epoch interruption): valid, but not for
        // this engine.
        let mut other = super::super::compiler_config::compiler_config();
        other.epoch_interruption(false);
        let other = Engine::new(&other)
            .unwrap()
            .precompile_component(BUILTIN_POLICY)
            .unwrap();
        let version = with_wasmtime_version(artifact::BUILTIN_ARTIFACT, "48", "47");
        let mut truncated = artifact::BUILTIN_ARTIFACT.to_vec();
        truncated.truncate(truncated.len() / 2);
        let cases: [(&str, &[u8]); 5] = [
            (
                "no artifact (a build for a target wasmtime cannot compile for)",
                &[],
            ),
            ("another wasmtime version", &version),
            ("other engine settings", &other),
            ("truncated", &truncated),
            (
                "not an artifact",
                b"\x7fELF\x02\x01\x01 definitely not an artifact",
            ),
        ];
        for (i, (case, artifact)) in cases.into_iter().enumerate() {
            let shared = shared();
            let module =
                PolicyModule::builtin(&shared, artifact).unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(module.code(), Code::InProcess, "{case}");
            assert_eq!(compiled_here(&shared), 1, "{case}: compiled once");
            assert_eq!(module.sha256(), BUILTIN_SHA256, "{case}");
            if i < 2 {
                assert_decides(&module);
            }
        }
    }

    #[test]
    fn a_mismatched_artifact_file_is_a_clear_error() {
        let shared = shared();
        let version = with_wasmtime_version(artifact::BUILTIN_ARTIFACT, "48", "47");
        let err = PolicyModule::from_artifact(
            &shared,
            Artifact::Bytes(&version),
            String::new(),
            "policy.cwasm".into(),
            Code::Artifact,
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, PolicyError::Artifact { .. }), "{message}");
        assert!(
            message.contains("policy.cwasm is a precompiled artifact"),
            "{message}"
        );
        assert!(message.contains("incompatible version '47'"), "{message}");
        assert!(message.contains("policy compile"), "{message}");
    }

    #[test]
    fn precompile_refuses_what_is_not_a_policy() {
        let err = precompile(b"\0asm\x01\0\0\0", "core.wasm").unwrap_err();
        assert!(matches!(err, PolicyError::Compile { .. }), "{err}");
        let (artifact, contract) = precompile(BUILTIN_POLICY, "policy.wasm").unwrap();
        assert!(artifact::looks_like_artifact(&artifact));
        assert_eq!(contract, "0.2.0");
        // What `policy compile` writes (no pool, this CPU's features) loads into the
        // runtime's engine (pooling allocator) without compiling.
        let shared = shared();
        let module = PolicyModule::from_artifact(
            &shared,
            Artifact::Bytes(&artifact),
            "x".into(),
            "policy.cwasm".into(),
            Code::Artifact,
        )
        .unwrap();
        assert_eq!(compiled_here(&shared), 0);
        assert_decides(&module);
    }

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
