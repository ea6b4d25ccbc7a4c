"""Shared paths and tools of the deploy/ checks.

Environment:
    TRIDENT_BIN   Trident binary (default: <repo>/target/debug/trident), as in tests/conformance.
The Python tools (hadolint, kubernetes-validate, yamllint) are taken from this venv;
promtool (Debian's `prometheus`) and podman from PATH: scripts/setup.sh --tests installs
them all.
"""

import os
import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = pathlib.Path(sys.executable).parent


def venv_tool(name):
    """A tool the venv installs (tests/deploy/requirements.txt)."""
    path = VENV_BIN / name
    assert path.exists(), f"{path} is missing: run scripts/setup.sh --tests"
    return str(path)


def run(*args, **kwargs):
    """Runs a command; fails the test with its output when it exits non-zero."""
    done = subprocess.run(args, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


@pytest.fixture(scope="session")
def trident_bin():
    path = pathlib.Path(os.environ.get("TRIDENT_BIN", REPO / "target" / "debug" / "trident"))
    assert path.exists(), f"no Trident binary at {path}: build it (cargo build) or set TRIDENT_BIN"
    return path


@pytest.fixture(scope="session")
def promtool():
    path = shutil.which("promtool")
    assert path, "promtool is missing: run scripts/setup.sh --tests (Debian's prometheus package)"
    return path
