#!/usr/bin/env bash
# Builds and tests the policy examples end to end, as a user would:
#
#   examples/policy-rust    cargo fmt --check; cargo test;
#                           cargo build --release --target wasm32-wasip2;
#                           egress-proxy policy test on its cases.yaml
#   examples/policy-python  a venv with the pinned componentize-py; python -m unittest;
#                           componentize-py componentize; egress-proxy policy test
#
# Needs the toolchain of rust-toolchain.toml (with wasm32-wasip2), python3 with venv
# and pip, and crates.io and PyPI; no root. Builds target/debug/egress-proxy if it is
# missing or stale (set EGRESS_PROXY to use another binary, PYTHON another python3).
# Leaves its artifacts in examples/*/target and the venv in target/ci-venv-examples.
# Exits non-zero on the first failure.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The examples' README commands assume the default target directories.
unset CARGO_TARGET_DIR CARGO_BUILD_TARGET

python=${PYTHON:-python3}
venv=$root/target/ci-venv-examples
started=$SECONDS

step() {
    echo "--- examples: $* (at $((SECONDS - started)) s)"
}

if [ -n "${EGRESS_PROXY:-}" ]; then
    proxy=$EGRESS_PROXY
else
    step "cargo build --locked -p egress-proxy"
    cargo build --locked -p egress-proxy
    proxy=$root/target/debug/egress-proxy
fi

cd "$root/examples/policy-rust"
step "policy-rust: cargo fmt --check"
cargo fmt --check
step "policy-rust: cargo test"
cargo test --locked
step "policy-rust: cargo build --release --target wasm32-wasip2"
cargo build --locked --release --target wasm32-wasip2
wasm=target/wasm32-wasip2/release/example_policy.wasm
echo "$wasm: $(wc -c <"$wasm") bytes"
step "policy-rust: egress-proxy policy test"
"$proxy" policy test --policy "$wasm" --routes routes.yaml cases.yaml

step "policy-python: venv with $(sed -n 's/^\(componentize-py==.*\)/\1/p' "$root/examples/policy-python/requirements.txt")"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv" || {
        echo "error: '$python -m venv' failed (on Debian's own python3: apt-get install python3-venv)" >&2
        exit 1
    }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$root/examples/policy-python/requirements.txt"

cd "$root/examples/policy-python"
step "policy-python: python -m unittest"
PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m unittest
step "policy-python: componentize-py componentize"
mkdir -p target
# VIRTUAL_ENV: componentize-py adds that venv's site-packages to the component's path
# (without it, the build machine's own site-packages).
VIRTUAL_ENV=$venv "$venv/bin/componentize-py" --quiet -d ../../wit -w policy \
    componentize app -o target/policy.wasm
echo "target/policy.wasm: $(wc -c <target/policy.wasm) bytes"
step "policy-python: egress-proxy policy test"
"$proxy" policy test --policy target/policy.wasm --routes routes.yaml cases.yaml

step "done"
