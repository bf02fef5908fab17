// The wasmtime settings that decide what machine code a policy component compiles to.
//
// One file, two users: the runtime (`policy::engine` builds its engine on this) and the
// build script (`host/build.rs` `include!`s this file to precompile the built-in
// policy), so that the artifact shipped in the binary is compiled with exactly the
// settings the runtime checks it against. `//` comments only: an `include!`d file
// cannot carry inner doc comments.
//
// Left out on purpose: the pooling allocator and the profiler. They change how
// instances are allocated and observed, not the code, and wasmtime does not compare
// them when it loads an artifact (`Engine::precompile_compatibility_hash` covers the
// target, Cranelift's flags, the tunables and the wasm features: all set here or
// wasmtime's defaults).

/// A wasmtime [`Config`](wasmtime::Config) with every setting that shapes compiled
/// policy code: the component model, and epoch interruption (each guest call is
/// bounded by an epoch deadline, which the compiled code checks).
pub fn compiler_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model(true).epoch_interruption(true);
    config
}
