#!/usr/bin/env bash
# The quick start: install what the build needs (scripts/setup.sh), build everything, and run
# `palisade-lab demo`: nodes and pods in network namespaces, three controller replicas (the
# leader is killed midway) and an eBPF agent per node, the seed microservices policies, reachability measured with real connections
# beside what `palisadectl evaluate` predicts. Without root or BPF the demo says so and runs
# the in-memory dataplane. Arguments go to `palisade-lab demo` (see its --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "quickstart: building (release; a few minutes the first time)" >&2
# Cargo's own progress: a bar on a terminal, one line a crate otherwise.
cargo build --release --bins
exec target/release/palisade-lab demo "$@"
