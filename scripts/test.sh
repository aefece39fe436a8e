#!/usr/bin/env bash
# The README's test command, and what CI runs: set up, then every test of the workspace.
# Root-only tests (network namespaces, nftables) must run here: PALISADE_REQUIRE_ROOT_TESTS
# turns their "skip when not root" into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# The real kube-apiserver and etcd for the agent's end-to-end tests (built once per machine).
scripts/build-k8s.sh
export PALISADE_REQUIRE_ROOT_TESTS=1
# The agent end-to-end tests run the `palisade` binary that this very `cargo test` builds
# for palisade-cli's own tests (all test targets are built before any runs).
export PALISADE_BIN="$PWD/target/release/palisade"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace --release --no-fail-fast
