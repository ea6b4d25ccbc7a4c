#!/usr/bin/env bash
# Starts Trident in front of three in-process mock Triton servers (nothing else needed).
# Extra arguments go to `trident demo`, e.g. --http-listen 127.0.0.1:18000
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --bin trident -- demo "$@"
