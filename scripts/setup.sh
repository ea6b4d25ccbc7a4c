#!/usr/bin/env bash
# Installs what building and testing Trident needs on Debian, skipping what is there.
#   scripts/setup.sh          build deps (cmake: Pingora's zlib-ng needs it)
#   scripts/setup.sh --tests  also the real-Triton conformance suite's Python venv
# The venv lives in $TRIDENT_VENV (default ~/.cache/trident/venv). It must be made
# from Debian's /usr/bin/python3: PyTriton's Python-backend stub breaks under pyenv.
set -euo pipefail
cd "$(dirname "$0")/.."

want_tests=false
[ "${1:-}" = "--tests" ] && want_tests=true

need=()
command -v cmake >/dev/null || need+=(cmake)
command -v cc >/dev/null || need+=(build-essential)
if $want_tests; then
  /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
fi
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${need[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi

if $want_tests; then
  venv="${TRIDENT_VENV:-$HOME/.cache/trident/venv}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv"
    /usr/bin/python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r tests/conformance/requirements.txt
fi
