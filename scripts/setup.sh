#!/usr/bin/env bash
# Everything a fresh machine needs to build and test Palisade, installed through this one
# script (CI and the README call it). Idempotent, and quick when everything is present.
set -euo pipefail

log() { echo "setup: $*" >&2; }

if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install Rust with rustup (https://rustup.rs), then run this again"
    exit 1
fi

# rustfmt and clippy: CI checks formatting and lints.
installed=$(rustup component list --installed 2>/dev/null || true)
for component in rustfmt clippy; do
    if ! grep -q "^${component}" <<<"$installed"; then
        log "installing rust component ${component}"
        rustup component add "$component"
    fi
done

# Python's grpcio and grpcio-reflection: the independent reflection client the tests use in
# place of grpcurl (no grpcurl package exists for this machine).
if ! python3 -c 'import grpc, grpc_reflection' >/dev/null 2>&1; then
    log "installing grpcio and grpcio-reflection (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-reflection
fi

# prometheus_client's parsers: the tests read the controller's and agent's /metrics with them
# (an independent check that the exposition follows the format it claims).
if ! python3 -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1; then
    log "installing prometheus-client (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check prometheus-client
fi

# deploy/check.py renders deploy/ with `kubectl kustomize` and validates it offline with
# kubernetes-validate (PyPI; it bundles the Kubernetes schemas it checks against).
KUBERNETES_VALIDATE_VERSION=1.37.0
if [ "$(python3 -c 'import kubernetes_validate.version as v; print(v.__version__)' 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (PyPI)"
    python3 -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
if ! kubectl kustomize --help >/dev/null 2>&1; then
    log "kubectl with kustomize (\`kubectl kustomize\`) not found: install a current kubectl" \
        "(https://kubernetes.io/docs/tasks/tools/; Debian's kubernetes-client is too old), then run this again"
    exit 1
fi

# The eBPF programs (dataplane-ebpf/ebpf) are built by the agent's build script with the
# nightly toolchain (`-Z build-std=core` needs its rust-src) and linked by bpf-linker. The
# linker is built against the nightly toolchain's own LLVM, so no system LLVM is needed (see
# docs/architecture.md, "Building the eBPF programs").
if ! rustc +nightly --version >/dev/null 2>&1; then
    log "installing the nightly toolchain (the eBPF programs need it)"
    rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    log "installing rust-src for nightly"
    rustup component add rust-src --toolchain nightly
fi
BPF_LINKER_VERSION=0.13.0
if ! bpf-linker --version 2>/dev/null | grep -qF "$BPF_LINKER_VERSION"; then
    nightly_lib="$(rustc +nightly --print sysroot)/lib"
    llvm_lib=$(find "$nightly_lib" -maxdepth 1 -name 'libLLVM.so.*-rust-*' | head -n1)
    if [ -z "$llvm_lib" ]; then
        log "no libLLVM in $nightly_lib: cannot build bpf-linker against nightly's LLVM"
        exit 1
    fi
    llvm_major=$(basename "$llvm_lib" | sed -E 's/^libLLVM\.so\.([0-9]+).*/\1/')
    prefix=$(mktemp -d)
    mkdir -p "$prefix/lib"
    ln -sf "$llvm_lib" "$prefix/lib/libLLVM.so"
    log "building bpf-linker $BPF_LINKER_VERSION against nightly's LLVM $llvm_major (about a minute)"
    LLVM_PREFIX="$prefix" RUSTFLAGS="-C link-arg=-Wl,-rpath,$nightly_lib" \
        cargo install bpf-linker --version "$BPF_LINKER_VERSION" --locked --force \
        --no-default-features --features "llvm-$llvm_major"
    rm -rf "$prefix"
fi

# Debian packages the end-to-end tests and the quick start use: iproute2 (`ip netns`, veth,
# tc), iperf3 (the throughput benchmark) and fonts-dejavu-core (the text of the load tests'
# plots). Installing them needs root; without it, say so and go on (the in-memory dataplane
# works without them).
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iperf3 >/dev/null 2>&1 || missing+=(iperf3)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing ${missing[*]} (Debian)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }
    else
        log "not root: skipping ${missing[*]} (needed only by the network-namespace tests and plots)"
    fi
fi

log "ready: $(cargo --version), $(rustc +nightly --version), $(bpf-linker --version), $(python3 -c 'import grpc; print("grpcio", grpc.__version__)'), kubernetes-validate $KUBERNETES_VALIDATE_VERSION, $(kubectl version --client 2>/dev/null | grep -i kustomize)"
