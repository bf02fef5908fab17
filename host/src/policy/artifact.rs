//! Precompiled policy code: loading a wasmtime artifact (`.cwasm`) instead of
//! compiling a component, and the one place in this crate allowed `unsafe`.
//!
//! An artifact is native code. wasmtime checks that it was written by the same
//! wasmtime version with compatible settings for a compatible CPU (a mismatch is an
//! error, never a crash), but it cannot check that the code is what the compiler
//! produced: a tampered artifact runs whatever it contains, outside the sandbox. So
//! this process deserialises only artifacts whose origin it knows ([`Artifact`]):
//!
//! - the built-in policy's, compiled by `host/build.rs` and embedded in the binary;
//! - one a child process running this binary (`policy compile`) wrote into a private
//!   directory (mode 0700) this process created for it ([`super::child`]);
//! - a file the operator named explicitly (`--policy policy.cwasm`): trusted like the
//!   binary itself, so it must be as protected (same owner, not writable by the agent).

use wasmtime::Engine;
use wasmtime::component::Component;

use super::child::Staged;

/// The built-in policy, precompiled by the build script for this binary's wasmtime
/// and engine settings (baseline CPU features of the target). Empty if the build
/// could not precompile for the target; the runtime then compiles the component.
pub(super) static BUILTIN_ARTIFACT: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/policy_guest.cwasm"));

/// An artifact this process may load: the only sources [`deserialize`] accepts.
#[derive(Debug, Clone, Copy)]
pub(super) enum Artifact<'a> {
    /// Built into this binary by its build script, or read from a file the operator
    /// named (`--policy policy.cwasm`).
    Bytes(&'a [u8]),
    /// In a private directory this process created: written there by a child process
    /// running this binary, or copied there from a file the operator named.
    Staged(&'a Staged),
}

/// Whether a file's first bytes are an artifact's (an ELF file) rather than a
/// component's (`\0asm`).
pub(super) fn looks_like_artifact(prefix: &[u8]) -> bool {
    prefix.starts_with(b"\x7fELF")
}

/// Load an artifact's code without compiling. A mismatch (another wasmtime version,
/// other engine settings, CPU features this host lacks, not an artifact at all) is
/// an error; the caller falls back to compiling or reports it.
#[expect(
    unsafe_code,
    reason = "wasmtime's deserialize is unsafe: it runs the artifact's native code; \
              only artifacts of known origin reach here (see the module docs)"
)]
pub(super) fn deserialize(engine: &Engine, artifact: Artifact<'_>) -> wasmtime::Result<Component> {
    match artifact {
        Artifact::Bytes([]) => Err(wasmtime::Error::msg(
            "this binary was built without a precompiled artifact for its target",
        )),
        // SAFETY: the bytes are the artifact this binary's build script compiled, or a
        // file the operator passed as precompiled policy code: both trusted as the
        // binary is (module docs). wasmtime copies them into its own mapping and checks
        // version, settings and CPU features before using any of it.
        Artifact::Bytes(bytes) => unsafe { Component::deserialize(engine, bytes) },
        // SAFETY: written by this binary's own `policy compile`, or copied from a file
        // the operator passed, into a directory only this user can write, which this
        // process created and removes; the file is never modified after that (wasmtime
        // maps it, so an in-place change would change the code).
        Artifact::Staged(staged) => unsafe {
            Component::deserialize_file(engine, staged.artifact())
        },
    }
}
