#!/usr/bin/env bash
# Trident's whole test suite, from a fresh Debian machine: installs what it needs,
# then runs the unit and integration tests (in-process mock Triton), the checks of
# deploy/ (image, manifests, dashboard, alerts) and the conformance suite against
# real Triton servers (nvidia-pytriton) with tritonclient.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
venv="${TRIDENT_VENV:-$HOME/.cache/trident/venv}"

echo "== cargo test (unit + integration, mock Triton)"
# One build, no edits to follow: incremental state would only take disk (GBs of it).
export CARGO_INCREMENTAL=0
cargo test --workspace --all-targets

echo "== deploy: container image (podman), Kubernetes manifests, dashboard and alert rules (promtool)"
# The image test packs the debug binary `cargo test` built (the Containerfile builds release).
TRIDENT_BIN="$PWD/target/debug/trident" "$venv/bin/python" -m pytest tests/deploy -q -p no:cacheprovider

echo "== fuzz smoke: every cargo-fuzz target replays its corpus, then fuzzes 20 s (needs nightly)"
scripts/fuzz.sh --smoke

echo "== load smoke: release Trident against direct, nginx and haproxy (seconds; a floor, not a target)"
cargo bench --bench load -- --smoke

echo "== conformance: tritonclient through Trident vs. direct, real Triton"
# `cargo test` above built target/debug/trident for the integration tests.
TRIDENT_BIN="$PWD/target/debug/trident" "$venv/bin/python" -m pytest tests/conformance -q -p no:cacheprovider
