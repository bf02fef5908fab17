#!/usr/bin/env bash
# Builds Dockerfile.egress-proxy and runs the image the way production runs it, on a
# machine with no image registry. Called by .ci/run; needs root (apt-get, dockerd,
# debootstrap), x86_64, python3, openssl and curl, Debian's archive, and crates.io.
#
#  1. Installs docker.io and debootstrap with apt-get if they are missing.
#  2. Starts its own dockerd (its own data root, socket and containerd under a
#     temporary directory; no bridge network, no iptables rules) and stops it by its
#     pid when the script exits, whatever happened; the directory is removed, so every
#     run builds on an empty engine: no layer or cargo cache.
#  3. Builds stand-ins for the two base images from Debian bookworm's packages:
#     builder  debootstrap (minbase + gcc, libc6-dev, ca-certificates, tzdata) and the
#              toolchain of rust-toolchain.toml with wasm32-wasip2, copied from this
#              machine's rustup (none can be downloaded into an image here), laid out
#              as in the official rust image (RUSTUP_HOME=/usr/local/rustup,
#              CARGO_HOME=/usr/local/cargo);
#     runtime  as close to distroless cc as Debian's packages allow: only the files of
#              libc6, libgcc-s1, ca-certificates (with the bundle its maintainer script
#              generates) and tzdata, /etc/passwd and /etc/group with nonroot (65532),
#              /etc/nsswitch.conf, /tmp and /home/nonroot; no shell (checked).
#  4. Builds the repository's Dockerfile, unchanged, with those as BUILDER_IMAGE and
#     RUNTIME_IMAGE, and checks that the binary links only libraries the runtime has.
#  5. Runs the image like production: --network host (everything on 127.0.0.1),
#     --read-only, --cap-drop ALL, --security-opt no-new-privileges, the image's own
#     ENTRYPOINT and CMD with only the listen addresses changed; the CA (made with the
#     image's `ca init`), the routes directory and the secrets directory mounted where
#     deploy/README.md says; the test upstream's settings through EGRESS_PROXY_*
#     variables. Checks the process's uid, capabilities, no_new_privs and read-only
#     root; /healthz and /readyz; an allowed request to an HTTPS upstream this script
#     runs on 127.0.0.1 (the agent's Authorization replaced by the injected token); a
#     denied path (403 JSON, never reaching the upstream) and a denied host (CONNECT
#     403); a hot reload through the mounted policy directory; /metrics; and that
#     `docker stop` ends it with exit status 0 within the drain timeout.
#
# Prints the duration of each step, the image's size and its start-up time. Exits
# non-zero if anything fails, after stopping the container, the upstream and dockerd.
#
# Settings (environment): CI_CONTAINER_CACHE, the cache directory (default
# ${XDG_CACHE_HOME:-~/.cache}/egress-proxy-ci-container); DEBIAN_MIRROR (default
# http://deb.debian.org/debian). The only thing cached between runs is debootstrap's
# tarball of downloaded .debs, keyed by the UTC date, suite, architecture, mirror and
# package list (so it is refreshed daily) and verified by its sha256 before use: the
# stand-ins are rebuilt from it, and the image from the current sources, every run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

DOCKER=/usr/bin/docker   # Debian's 20.10 client: BuildKit without buildx
SUITE=bookworm
ARCH=amd64
TRIPLE=x86_64-unknown-linux-gnu
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILDER_PACKAGES=gcc,libc6-dev,ca-certificates,tzdata
RUNTIME_PACKAGES=(libc6 libgcc-s1 ca-certificates tzdata)
BUILDER_IMAGE=egress-proxy-ci/rust:bookworm-stand-in
RUNTIME_IMAGE=egress-proxy-ci/distroless-cc-debian12:nonroot-stand-in
IMAGE=egress-proxy:ci
CONTAINER=egress-proxy-ci
NONROOT=65532
CACHE=${CI_CONTAINER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/egress-proxy-ci-container}

started=$SECONDS
timings=()
phase_name=""
phase_start=0

die() {
    echo "ci-container: FAILED: $*" >&2
    exit 1
}

phase() {
    phase_end
    phase_name=$1
    phase_start=$SECONDS
    echo "--- container: $1 (at $((SECONDS - started)) s)"
}

phase_end() {
    if [ -n "$phase_name" ]; then
        timings+=("$(printf '%5d s  %s' $((SECONDS - phase_start)) "$phase_name")")
    fi
    phase_name=""
}

now_ms() {
    echo $(($(date +%s%N) / 1000000))
}

# --- preconditions -----------------------------------------------------------------

[ "$(id -u)" -eq 0 ] || die "needs root (apt-get, dockerd, debootstrap); CI runs as root"
[ "$(uname -m)" = x86_64 ] || die "the stand-ins are built for x86_64, not $(uname -m)"
for tool in python3 openssl curl tar sha256sum; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
[ -n "$channel" ] || die "no channel in rust-toolchain.toml"
toolchain_dir=${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$channel-$TRIPLE
[ -d "$toolchain_dir" ] || die "toolchain $channel is not installed in ${RUSTUP_HOME:-$HOME/.rustup} (rustup toolchain install $channel)"
[ -d "$toolchain_dir/lib/rustlib/wasm32-wasip2" ] ||
    die "toolchain $channel has no wasm32-wasip2 (rustup target add --toolchain $channel wasm32-wasip2)"
rustup_bin=$(command -v rustup) || die "rustup is not on PATH"

# --- clean-up: whatever happens, leave nothing running -------------------------------

work=$(mktemp -d /tmp/ci-container.XXXXXX)
dockerd_pid=""
upstream_pid=""

docker() {
    "$DOCKER" "$@"
}

cleanup() {
    local status=$? cleanup_start=$SECONDS
    phase_end
    set +e
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        if [ "$status" -ne 0 ] && docker inspect "$CONTAINER" >/dev/null 2>&1; then
            echo "--- container: the proxy's log (last 40 lines)" >&2
            docker logs --tail 40 "$CONTAINER" >&2 2>&1
        fi
        docker ps -aq | xargs -r "$DOCKER" rm -f >/dev/null 2>&1
        # dockerd's own containerd is its child; it is stopped with dockerd, or by pid.
        local containerd_pids
        containerd_pids=$(ps -o pid= --ppid "$dockerd_pid" 2>/dev/null)
        kill -TERM "$dockerd_pid"
        for _ in $(seq 1 60); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$dockerd_pid" 2>/dev/null; then
            echo "ci-container: dockerd $dockerd_pid did not stop in 30 s; killing it" >&2
            kill -KILL "$dockerd_pid"
        fi
        for pid in $containerd_pids; do
            kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        done
        if [ "$status" -ne 0 ] && [ -f "$work/dockerd.log" ]; then
            echo "--- container: dockerd's log (last 20 lines)" >&2
            tail -n 20 "$work/dockerd.log" >&2
        fi
    fi
    if [ -n "$upstream_pid" ]; then
        kill -TERM "$upstream_pid" 2>/dev/null
        wait "$upstream_pid" 2>/dev/null
    fi
    # Anything still mounted below the work directory (overlays, a debootstrap cut
    # short with /proc mounted in its target), deepest first.
    awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mount; do umount -l "$mount"; done
    rm -rf "$work"
    timings+=("$(printf '%5d s  %s' $((SECONDS - cleanup_start)) "clean-up: stop dockerd, remove $work")")
    if [ "$status" -eq 0 ]; then
        echo "--- container: timings"
        printf '%s\n' "${timings[@]}"
        printf '%5d s  total\n' $((SECONDS - started))
    else
        echo "ci-container: FAILED (exit $status) after $((SECONDS - started)) s" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. tools ------------------------------------------------------------------------

phase "tools"
missing=()
if [ ! -x "$DOCKER" ] || ! command -v dockerd >/dev/null 2>&1; then missing+=(docker.io); fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v readelf >/dev/null 2>&1 || missing+=(binutils)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
docker --version
dockerd --version

# --- 2. dockerd ----------------------------------------------------------------------

phase "start dockerd"
export DOCKER_HOST="unix://$work/docker.sock"
export DOCKER_CONFIG="$work/docker-config"
export DOCKER_BUILDKIT=1
mkdir -p "$DOCKER_CONFIG"
dockerd --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
    --host "$DOCKER_HOST" --bridge none --iptables=false --ip-forward=false \
    --storage-driver overlay2 --log-level warn >"$work/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 120); do
    docker version >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || die "dockerd exited: $(tail -n 5 "$work/dockerd.log")"
    sleep 0.25
done
docker version --format 'dockerd {{.Server.Version}} (pid '"$dockerd_pid"'), storage driver '"$(docker info --format '{{.Driver}}' 2>/dev/null)" ||
    die "dockerd did not answer within 30 s"

# --- 3a. the Debian base (debootstrap, cached by day) --------------------------------

phase "debootstrap $SUITE"
mkdir -p "$CACHE"
key=$(printf '%s\n' "$SUITE" "$ARCH" "$MIRROR" minbase "$BUILDER_PACKAGES" "$(debootstrap --version)" |
    sha256sum | cut -c1-16)
tarball="$CACHE/debootstrap-$SUITE-$ARCH-$(date -u +%F)-$key.tar.gz"
if [ -f "$tarball" ] && ! (cd "$CACHE" && sha256sum --quiet -c "$(basename "$tarball").sha256" 2>/dev/null); then
    echo "the cached $tarball does not match its checksum; downloading again"
    rm -f "$tarball" "$tarball.sha256"
fi
if [ -f "$tarball" ]; then
    echo "packages from the cache: $tarball"
else
    echo "downloading the packages (cache: $tarball)"
    debootstrap --arch="$ARCH" --variant=minbase --include="$BUILDER_PACKAGES" \
        --make-tarball="$work/debs.tar.gz" "$SUITE" "$work/make-tarball" "$MIRROR" \
        >"$work/debootstrap.log" 2>&1 || die "debootstrap --make-tarball: $(tail -n 5 "$work/debootstrap.log")"
    rm -f "$CACHE"/debootstrap-*.tar.gz "$CACHE"/debootstrap-*.tar.gz.sha256
    mv "$work/debs.tar.gz" "$tarball"
    (cd "$CACHE" && sha256sum "$(basename "$tarball")" >"$(basename "$tarball").sha256")
fi
rootfs=$work/builder-root
debootstrap --arch="$ARCH" --variant=minbase --include="$BUILDER_PACKAGES" \
    --unpack-tarball="$tarball" "$SUITE" "$rootfs" "$MIRROR" \
    >"$work/debootstrap.log" 2>&1 || die "debootstrap: $(tail -n 5 "$work/debootstrap.log")"
echo "$SUITE $(cat "$rootfs/etc/debian_version"), $(du -sm "$rootfs" | cut -f1) MiB"
# Debian's CA bundle, for the runtime, before the builder gets this machine's CAs.
cp "$rootfs/etc/ssl/certs/ca-certificates.crt" "$work/debian-ca-certificates.crt"

# --- 3b. the builder stand-in --------------------------------------------------------

phase "builder stand-in: Debian + toolchain $channel"
rustup_home=$rootfs/usr/local/rustup
cargo_home=$rootfs/usr/local/cargo
tc=$channel-$TRIPLE
mkdir -p "$rustup_home/toolchains/$tc" "$cargo_home/bin"
# The CAs this machine adds to Debian's (Debian's place for local CAs): where the way to
# crates.io passes a TLS-intercepting proxy, cargo in the builder needs them, as it
# would behind such a proxy anywhere. The runtime gets Debian's bundle alone.
local_cas=(/usr/local/share/ca-certificates/*.crt)
if [ -f "${local_cas[0]}" ]; then
    cp "${local_cas[@]}" "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
    echo "the builder also trusts this machine's ${local_cas[*]}"
fi
# The toolchain as rustup installed it here, without the HTML documentation (rustup
# then removes the rust-docs component itself, so its records stay consistent).
tar -C "$toolchain_dir/" --exclude='./share/doc/rust/html/*' -cf - . | tar -C "$rustup_home/toolchains/$tc" -xf -
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$tc" >"$rustup_home/settings.toml"
cp "$rustup_bin" "$cargo_home/bin/rustup"
for proxy in cargo cargo-clippy cargo-fmt clippy-driver rustc rustdoc rustfmt rust-gdb rust-lldb; do
    ln "$cargo_home/bin/rustup" "$cargo_home/bin/$proxy"
done
if RUSTUP_HOME=$rustup_home "$rustup_bin" component list --installed --toolchain "$tc" | grep -q '^rust-docs'; then
    RUSTUP_HOME=$rustup_home "$rustup_bin" component remove --toolchain "$tc" rust-docs 2>&1
fi
components=$(RUSTUP_HOME=$rustup_home "$rustup_bin" component list --installed --toolchain "$tc" | tr '\n' ' ')
echo "components: $components"
case " $components " in
    *" rust-std-wasm32-wasip2 "*) ;;
    *) die "the copied toolchain lacks rust-std-wasm32-wasip2" ;;
esac
builder_start=$(now_ms)
tar -C "$rootfs" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' \
    --exclude='./var/cache/apt/archives/*.deb' -cf - . |
    docker import \
        --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
        --change 'ENV CARGO_HOME=/usr/local/cargo' \
        --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change "ENV RUST_VERSION=$channel" \
        --change 'CMD ["bash"]' \
        - "$BUILDER_IMAGE" >/dev/null
echo "$BUILDER_IMAGE: $(($(docker image inspect --format '{{.Size}}' "$BUILDER_IMAGE") / 1000000)) MB, imported in $(($(now_ms) - builder_start)) ms"
docker run --rm --network none "$BUILDER_IMAGE" sh -c 'rustc --version && cargo --version && gcc --version | head -n 1'

# --- 3c. the runtime stand-in --------------------------------------------------------

phase "runtime stand-in: ${RUNTIME_PACKAGES[*]}"
runtime=$work/runtime-root
mkdir -p "$runtime"
for package in "${RUNTIME_PACKAGES[@]}"; do
    debs=("$rootfs/var/cache/apt/archives/${package}_"*"_"*.deb)
    if [ ${#debs[@]} -ne 1 ] || [ ! -f "${debs[0]}" ]; then
        die "expected one .deb of $package in the debootstrap cache, found: ${debs[*]}"
    fi
    dpkg-deb -x "${debs[0]}" "$runtime"
    basename "${debs[0]}"
done
# ca-certificates ships the certificates; its maintainer script builds the bundle
# (ran inside the debootstrap), which is what TLS clients read.
install -D -m 0644 "$work/debian-ca-certificates.crt" "$runtime/etc/ssl/certs/ca-certificates.crt"
bundle_certs=$(grep -c 'BEGIN CERTIFICATE' "$runtime/etc/ssl/certs/ca-certificates.crt")
[ "$bundle_certs" -gt 100 ] || die "the CA bundle holds only $bundle_certs certificates"
# Maintainer tools that are shell scripts (update-ca-certificates): nothing could run them.
scripts=$(find "$runtime" -type f -perm -u+x -exec sh -c 'head -c 2 "$1" | grep -q "^#!"' _ {} \; -print)
if [ -n "$scripts" ]; then
    echo "dropped scripts (no interpreter in the image): ${scripts//$runtime/}"
    # shellcheck disable=SC2086 # one path per word; Debian's paths have no spaces
    rm -f $scripts
fi
# The accounts and directories distroless has: root, nobody and nonroot (65532).
cat >"$runtime/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:$NONROOT:$NONROOT:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$runtime/etc/group" <<EOF
root:x:0:
nobody:x:65534:
nonroot:x:$NONROOT:
EOF
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n' \
    >"$runtime/etc/nsswitch.conf"
install -d -m 1777 "$runtime/tmp"
install -d -m 0700 -o "$NONROOT" -g "$NONROOT" "$runtime/home/nonroot"
install -d -m 0700 "$runtime/root"
shells=$(find "$runtime" \( -name sh -o -name bash -o -name dash -o -name ash -o -name zsh -o -name busybox \) -print)
[ -z "$shells" ] || die "the runtime stand-in has a shell: $shells"
tar -C "$runtime" --numeric-owner -cf - . |
    docker import \
        --change "USER $NONROOT:$NONROOT" \
        --change 'WORKDIR /home/nonroot' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$RUNTIME_IMAGE" >/dev/null
echo "$RUNTIME_IMAGE: $(($(docker image inspect --format '{{.Size}}' "$RUNTIME_IMAGE") / 1000000)) MB, $(find "$runtime" -type f | wc -l) files"
set +e
docker run --rm --network none --entrypoint /bin/sh "$RUNTIME_IMAGE" -c true >"$work/sh.log" 2>&1
sh_status=$?
set -e
[ "$sh_status" -eq 127 ] || die "the runtime stand-in ran /bin/sh (exit $sh_status): $(cat "$work/sh.log")"
echo "no shell: /bin/sh cannot be started (exit 127)"

# --- 4. the image --------------------------------------------------------------------

phase "docker build -f Dockerfile.egress-proxy"
build_start=$SECONDS
# --network host: cargo fetches from crates.io; this engine has no bridge network.
docker build --network host --progress plain \
    --build-arg "BUILDER_IMAGE=$BUILDER_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE" \
    -f Dockerfile.egress-proxy -t "$IMAGE" . >"$work/build.log" 2>&1 || {
    tail -n 60 "$work/build.log" >&2
    die "docker build failed"
}
build_seconds=$((SECONDS - build_start))
grep -E 'transferring context|Finished .release|DONE [0-9.]+s$' "$work/build.log" | grep -v 'DONE 0\.' | tail -n 8 || true
image_bytes=$(docker image inspect --format '{{.Size}}' "$IMAGE")
echo "$IMAGE: built in ${build_seconds} s, $((image_bytes / 1000000)) MB"

phase "the binary's libraries"
docker create --name "$CONTAINER-copy" "$IMAGE" >/dev/null
docker cp "$CONTAINER-copy:/usr/local/bin/egress-proxy" "$work/egress-proxy"
docker rm "$CONTAINER-copy" >/dev/null
interpreter=$(readelf -l "$work/egress-proxy" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
needed=$(readelf -d "$work/egress-proxy" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
if [ -z "$interpreter" ] || [ -z "$needed" ]; then
    die "readelf found no interpreter or NEEDED entries"
fi
for lib in "$interpreter" $needed; do
    name=$(basename "$lib")
    found=$(find "$runtime/lib" "$runtime/lib64" "$runtime/usr/lib" -name "$name" 2>/dev/null | head -n 1)
    [ -n "$found" ] || die "the binary needs $lib, which none of ${RUNTIME_PACKAGES[*]} provides: add its package to RUNTIME_PACKAGES (and check distroless cc has it)"
    echo "$lib: ${found#"$runtime"}"
done

# --- 5. run it like production -------------------------------------------------------

phase "run: set-up"
# clap prints `[default: …]` on the line after `[env: …]`.
drain=$(docker run --rm --network none "$IMAGE" run --help |
    sed -n '/\[env: EGRESS_PROXY_DRAIN_TIMEOUT=\]/{n;s/.*\[default: \([0-9]*\)s\].*/\1/p;}')
[ -n "$drain" ] || die "cannot read the default --drain-timeout (in whole seconds) from \`run --help\`"
read -r proxy_port admin_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
[ -n "${admin_port:-}" ] || die "could not pick two free loopback ports"

# The proxy's CA, made by the image as deploy/README.md shows, then given to its user.
mkdir -p "$work/ca"
docker run --rm --network none --user "$(id -u):$(id -g)" -v "$work/ca:/out" "$IMAGE" ca init --out /out
chown -R "$NONROOT:$NONROOT" "$work/ca"

# A test CA and the upstream's certificate for upstream.test, which the proxy dials at
# 127.0.0.1 (EGRESS_PROXY_CONNECT_TO: no DNS) and trusts through EGRESS_PROXY_UPSTREAM_CA.
up=$work/upstream
mkdir -p "$up/ca"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj '/CN=egress-proxy CI upstream CA' -keyout "$up/ca.key" -out "$up/ca/ca.crt" \
    -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign' 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=upstream.test' \
    -keyout "$up/server.key" -out "$up/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:upstream.test\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n' >"$up/ext"
openssl x509 -req -in "$up/server.csr" -CA "$up/ca/ca.crt" -CAkey "$up/ca.key" -CAcreateserial \
    -days 1 -extfile "$up/ext" -out "$up/server.crt" 2>/dev/null
python3 "$root/scripts/ci-container-upstream.py" "$up/server.crt" "$up/server.key" \
    "$up/port" "$up/requests.jsonl" 2>"$up/stderr.log" &
upstream_pid=$!
for _ in $(seq 1 100); do
    [ -s "$up/port" ] && break
    kill -0 "$upstream_pid" 2>/dev/null || die "the upstream exited: $(cat "$up/stderr.log")"
    sleep 0.1
done
[ -s "$up/port" ] || die "the upstream did not start"
upstream_port=$(cat "$up/port")
echo "upstream https://upstream.test -> 127.0.0.1:$upstream_port; proxy 127.0.0.1:$proxy_port, admin 127.0.0.1:$admin_port"

# The policy directory and the secrets directory, mounted read-only like compose does.
token="ci-token-$(openssl rand -hex 8)"
mkdir -p "$work/policy" "$work/secrets"
write_routes() {
    cat >"$work/policy/routes.yaml.new" <<EOF
routes:
  - host: upstream.test
    path_allowlist:
      - /$1/
    auth:
      scheme: Bearer
      token_ref: CI_TOKEN
EOF
    chmod 0644 "$work/policy/routes.yaml.new"
    mv "$work/policy/routes.yaml.new" "$work/policy/routes.yaml"   # rename into place, as editors do
}
write_routes allowed
printf '%s' "$token" >"$work/secrets/CI_TOKEN"
chown "$NONROOT" "$work/secrets/CI_TOKEN"
chmod 0400 "$work/secrets/CI_TOKEN"

# The image's ENTRYPOINT and CMD, with only the listen addresses changed to loopback.
mapfile -t command < <(docker image inspect --format '{{json .Config.Cmd}}' "$IMAGE" |
    python3 -c '
import json, sys
cmd = json.load(sys.stdin)
listen = {"--listen": sys.argv[1], "--admin-listen": sys.argv[2]}
for flag, value in listen.items():
    if cmd.count(flag) != 1:
        sys.exit(f"the image CMD has no single {flag}: {cmd}")
    cmd[cmd.index(flag) + 1] = value
print("\n".join(cmd))' "127.0.0.1:$proxy_port" "127.0.0.1:$admin_port")
[ ${#command[@]} -gt 4 ] || die "could not read the image's CMD"
echo "command: ${command[*]}"

phase "run: start"
run_start=$(now_ms)
docker run -d --name "$CONTAINER" --network host --read-only --cap-drop ALL \
    --security-opt no-new-privileges \
    -v "$work/policy:/etc/egress-proxy/policy:ro" \
    -v "$work/ca:/etc/egress-proxy/ca:ro" \
    -v "$work/secrets:/run/secrets/egress-proxy:ro" \
    -v "$up/ca:/etc/egress-proxy/upstream-ca:ro" \
    -e EGRESS_PROXY_UPSTREAM_CA=/etc/egress-proxy/upstream-ca/ca.crt \
    -e "EGRESS_PROXY_CONNECT_TO=upstream.test:443:127.0.0.1:$upstream_port" \
    -e EGRESS_PROXY_ALLOW_UPSTREAM_CIDR=127.0.0.1/32 \
    -e 'EGRESS_PROXY_LOG=info,egress_proxy::proxy::upstream=debug' \
    "$IMAGE" "${command[@]}" >/dev/null
admin=http://127.0.0.1:$admin_port
ready=""
for _ in $(seq 1 600); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' --noproxy '*' "$admin/readyz")" = 200 ]; then
        ready=$(($(now_ms) - run_start))
        break
    fi
    [ "$(docker inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || die "the proxy exited"
    sleep 0.05
done
[ -n "$ready" ] || die "/readyz did not answer 200 within 30 s"
echo "/readyz 200 after $ready ms (from \`docker run\`)"

phase "run: checks"
check() {
    echo "ok: $*"
}
pid=$(docker inspect --format '{{.State.Pid}}' "$CONTAINER")
uids=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
[ "$uids" = "$NONROOT $NONROOT $NONROOT $NONROOT" ] || die "the proxy runs with uids $uids"
check "the proxy runs as $NONROOT"
cap_eff=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status")
[ "$cap_eff" = 0000000000000000 ] || die "the proxy has capabilities $cap_eff"
[ "$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$pid/status")" = 1 ] || die "no_new_privs is not set"
awk '$5 == "/" { split($6, o, ","); print o[1] }' "/proc/$pid/mountinfo" | grep -qx ro ||
    die "the root file system is not read-only"
check "no capabilities, no_new_privs, read-only root"
[ "$(curl -sS --noproxy '*' "$admin/healthz")" = ok ] || die "/healthz did not answer ok"
check "/healthz"

agent() {   # agent PATH [HOST]: a request through the proxy, as an agent sends it
    curl -sS --max-time 10 --noproxy '' --proxy "http://127.0.0.1:$proxy_port" \
        --cacert "$work/ca/ca.crt" -H 'authorization: Bearer agent-own-credential' \
        -o "$work/body" -w '%{http_code} %{http_connect} %{content_type}' "https://${2:-upstream.test}$1"
}

expect_allowed() {   # expect_allowed PATH
    local got
    got=$(agent "$1") || die "GET $1 through the proxy failed"
    [ "${got%% *}" = 200 ] || die "GET $1: expected 200, got $got: $(cat "$work/body")"
    python3 - "$work/body" "$1" "Bearer $token" <<'PY' || die "GET $1: the upstream did not get the injected token"
import json, sys
seen = json.load(open(sys.argv[1]))
if seen != {"path": sys.argv[2], "authorization": sys.argv[3]}:
    sys.exit(f"the upstream saw {seen}")
PY
    check "GET $1: 200, the upstream got the injected token and not the agent's"
}

expect_denied() {   # expect_denied PATH
    local got reached
    reached=$(wc -l <"$up/requests.jsonl")
    got=$(agent "$1") || die "GET $1 through the proxy failed"
    case $got in
        "403 200 application/json"*) ;;
        *) die "GET $1: expected a 403 JSON denial inside the tunnel, got $got: $(cat "$work/body")" ;;
    esac
    python3 - "$work/body" <<'PY' || die "GET $1: not the proxy's denial: $(cat "$work/body")"
import json, sys
body = json.load(open(sys.argv[1]))
if body.get("error") != "denied_by_egress_policy" or body.get("kind") != "policy":
    sys.exit(1)
PY
    [ "$(wc -l <"$up/requests.jsonl")" -eq "$reached" ] || die "GET $1 reached the upstream"
    check "GET $1: 403 denied_by_egress_policy, never reached the upstream"
}

expect_allowed /allowed/widget
expect_denied /elsewhere/widget
docker logs "$CONTAINER" 2>&1 | grep 'system root certificates loaded' | grep -Eq 'added=[1-9][0-9]{2}' ||
    die "the proxy did not load the image's CA bundle: $(docker logs "$CONTAINER" 2>&1 | grep 'root certificates')"
check "the proxy loaded the system roots of the image's CA bundle"
got=$(agent / other.test 2>/dev/null) && die "CONNECT other.test was let through: $got"
[ "$(curl -s --max-time 10 --noproxy '' --proxy "http://127.0.0.1:$proxy_port" -o /dev/null \
    -w '%{http_connect}' https://other.test/)" = 403 ] || die "CONNECT other.test was not answered 403"
check "CONNECT other.test:443: 403"

policy_generation() {
    curl -sS --noproxy '*' "$admin/policy" | python3 -c 'import json, sys; print(json.load(sys.stdin)["generation"])'
}
[ "$(policy_generation)" = 1 ] || die "/policy: expected generation 1"
reload_start=$(now_ms)
write_routes reloaded
generation=1
for _ in $(seq 1 200); do
    generation=$(policy_generation)
    [ "$generation" = 2 ] && break
    sleep 0.05
done
[ "$generation" = 2 ] || die "the routes were not reloaded within 10 s (generation $generation)"
check "hot reload of the mounted policy directory: generation 2 after $(($(now_ms) - reload_start)) ms"
expect_allowed /reloaded/widget
expect_denied /allowed/widget

curl -sS --noproxy '*' "$admin/metrics" >"$work/metrics"
python3 - "$work/metrics" <<'PY' || die "/metrics does not show what was sent"
import re, sys
samples = {}
for line in open(sys.argv[1]):
    m = re.match(r'^(egress_proxy_[a-z_]+)(\{[^}]*\})? (\S+)$', line.strip())
    if m:
        samples[m.group(1) + (m.group(2) or "")] = float(m.group(3))
want = {
    'egress_proxy_requests_total{decision="inject",status="200"}': 2,
    'egress_proxy_requests_total{decision="deny",status="403"}': 2,
    "egress_proxy_reloads_succeeded_total": 1,
    "egress_proxy_policy_generation": 2,
}
bad = [f"{k} = {samples.get(k)}, expected >= {v}" for k, v in want.items() if samples.get(k, -1) < v]
if bad:
    sys.exit("\n".join(bad))
PY
check "/metrics: 2 injected, 2 denied, 1 reload, generation 2"

phase "run: docker stop"
stop_start=$(now_ms)
docker stop --time $((drain * 3)) "$CONTAINER" >/dev/null
stop_ms=$(($(now_ms) - stop_start))
exit_code=$(docker inspect --format '{{.State.ExitCode}}' "$CONTAINER")
[ "$exit_code" = 0 ] || die "the proxy exited with $exit_code after docker stop"
[ "$stop_ms" -lt $((drain * 1000)) ] || die "docker stop took $stop_ms ms, more than the ${drain} s drain timeout"
check "docker stop: exit 0 after $stop_ms ms (drain timeout ${drain} s)"
docker rm "$CONTAINER" >/dev/null

phase_end
echo "ci-container: image $IMAGE $((image_bytes / 1000000)) MB (built in ${build_seconds} s), ready $ready ms after docker run, stopped in $stop_ms ms"
