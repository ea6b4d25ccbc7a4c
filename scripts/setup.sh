#!/usr/bin/env bash
# Installs what building and testing Trident needs on Debian, skipping what is there.
#   scripts/setup.sh          build deps (cmake: Pingora's zlib-ng needs it)
#   scripts/setup.sh --tests  also the real-Triton conformance suite's Python venv, and
#                             what the load harness's smoke mode drives: wrk, h2load,
#                             nginx and haproxy (Debian's), and openssl (test certificates);
#                             for deploy/'s checks podman and promtool (Debian's), and
#                             hadolint, kubernetes-validate and yamllint (into the venv)
#   scripts/setup.sh --bench  the harness's full mode: also strace (Debian's; system calls
#                             per request) and oha (from crates.io)
#   scripts/setup.sh --fuzz   cargo-fuzz (from crates.io, ~2 min), when a nightly toolchain
#                             is installed; --tests does it too, for scripts/fuzz.sh --smoke
# The venv lives in $TRIDENT_VENV (default ~/.cache/trident/venv). It must be made
# from Debian's /usr/bin/python3: PyTriton's Python-backend stub breaks under pyenv.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=false
want_bench=false
want_fuzz=false
[ "${1:-}" = "--tests" ] && want_tests=true && want_fuzz=true
[ "${1:-}" = "--bench" ] && want_bench=true
[ "${1:-}" = "--fuzz" ] && want_fuzz=true

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
if $want_tests; then
  /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
if $want_tests || $want_bench; then
  command -v wrk >/dev/null || need+=(wrk)
  command -v h2load >/dev/null || need+=(nghttp2-client)
  [ -x /usr/sbin/nginx ] || need+=(nginx-light)
  [ -x /usr/sbin/haproxy ] || need+=(haproxy)
  # Test certificates: the conformance suite's TLS checks and the harness's TLS setting.
  command -v openssl >/dev/null || need+=(openssl)
fi
# promtool comes with the Prometheus server, whose package starts it where systemd runs:
# installed without its recommended exporters, and stopped again (tests/deploy needs
# only promtool).
need_promtool=false
if $want_tests; then
  command -v podman >/dev/null || need+=(podman)
  command -v promtool >/dev/null || need_promtool=true
fi
if $want_bench; then
  command -v strace >/dev/null || need+=(strace)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
if $need_promtool; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing prometheus (for promtool)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi

if $want_tests; then
  venv="${TRIDENT_VENV:-$HOME/.cache/trident/venv}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    /usr/bin/python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/conformance/requirements.txt -r tests/deploy/requirements.txt
fi

if $want_bench && ! command -v oha >/dev/null; then
  echo "setup: installing oha (fixed-rate load with latency correction)"
  cargo install --locked oha
fi

# Fuzzing needs nightly, which a machine without it cannot fetch offline: then skip.
if $want_fuzz && rustup run nightly rustc --version >/dev/null 2>&1 \
  && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "setup: installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
