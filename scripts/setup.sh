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

log "ready: $(cargo --version), $(python3 -c 'import grpc; print("grpcio", grpc.__version__)')"
