#!/usr/bin/env bash
# The README's first command: set up, build, and run the demo on its bundled examples.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -q -p palisade-cli
exec target/release/palisade demo "$@"
