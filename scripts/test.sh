#!/usr/bin/env bash
# The README's test command, and what CI runs: set up, then every test of the workspace.
# Root-only tests (network namespaces, nftables) must run here: PALISADE_REQUIRE_ROOT_TESTS
# turns their "skip when not root" into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
if [ -x scripts/build-k8s.sh ]; then
  scripts/build-k8s.sh
fi
export PALISADE_REQUIRE_ROOT_TESTS=1
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace --release
