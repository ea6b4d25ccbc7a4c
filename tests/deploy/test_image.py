"""deploy/Containerfile: hadolint-clean; its runtime stage builds with podman from a
rootfs that deploy/image/rootfs.sh collects around the test's Trident binary (a debug
build here; the Containerfile's own build stage makes a release one), and the image's
filesystem, exported, runs `trident check` on the shipped config and serves a demo
request. Containers cannot run on the CI machines (setrlimit is refused), so the image
is run by chrooting into its exported filesystem (as root; otherwise through its own
dynamic loader, see `entrypoint`).
"""

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import DEPLOY, run, venv_tool

CONTAINERFILE = DEPLOY / "Containerfile"
USER = "65532:65532"
READY_TIMEOUT_SECS = 30


def test_containerfile_is_hadolint_clean():
    run(venv_tool("hadolint"), CONTAINERFILE)


def test_default_config_passes_trident_check(trident_bin):
    """Also where podman is missing and the image tests below are skipped."""
    run(trident_bin, "check", "--config", DEPLOY / "image" / "trident.toml")


@pytest.fixture(scope="module")
def image(trident_bin, tmp_path_factory):
    """(image config, exported filesystem directory)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/setup.sh --tests installs it)")
    work = tmp_path_factory.mktemp("image")
    rootfs = work / "rootfs"
    run(DEPLOY / "image" / "rootfs.sh", trident_bin, DEPLOY / "image" / "trident.toml", rootfs)
    # Private storage (vfs works on any filesystem), removed with the rest of `work`.
    podman = [
        "podman",
        "--root", work / "storage",
        "--runroot", work / "run",
        "--storage-driver", "vfs",
    ]
    tag = "localhost/trident-deploy-test"
    context = work / "context"
    context.mkdir()
    # The `rootfs` build context stands in for the build stages: nothing is pulled or run.
    run(*podman, "build", "--pull=never", "--build-context", f"rootfs={rootfs}",
        "-f", CONTAINERFILE, "-t", tag, context)
    config = json.loads(run(*podman, "image", "inspect", tag, "--format", "{{json .Config}}").stdout)
    container = run(*podman, "create", tag).stdout.strip()
    run(*podman, "export", "-o", work / "image.tar", container)
    filesystem = work / "filesystem"
    filesystem.mkdir()
    # tar keeps the owners and modes (/tmp's sticky bit) that Python's tarfile may not.
    run("tar", "-xf", work / "image.tar", "-C", filesystem)
    yield config, filesystem
    subprocess.run([*podman, "rm", "-f", container], capture_output=True)
    # Several copies of the binary (vfs layers, the export): not kept for pytest's
    # last-three-runs history.
    shutil.rmtree(work, ignore_errors=True)


def test_image_metadata(image):
    config, _ = image
    assert config["User"] == USER
    assert config["Entrypoint"] == ["/usr/local/bin/trident"]
    assert config["Cmd"] == ["run", "--config", "/etc/trident/trident.toml"]
    assert set(config["ExposedPorts"]) == {"8000/tcp", "8001/tcp", "9901/tcp"}


def test_image_holds_only_the_runtime(image):
    _, filesystem = image
    files = sorted(
        str(p.relative_to(filesystem)) for p in filesystem.rglob("*") if not p.is_dir()
    )
    assert "usr/local/bin/trident" in files
    assert "etc/trident/trident.toml" in files
    assert "etc/ssl/certs/ca-certificates.crt" in files
    # No shell, no package manager: the binary, its libraries, the loader, users, CAs.
    assert not (filesystem / "bin" / "sh").exists()
    others = [f for f in files if not f.startswith(("usr/local/bin/", "etc/", "lib", "usr/lib"))]
    assert others == [], others
    passwd = (filesystem / "etc" / "passwd").read_text()
    assert ":65532:65532:" in passwd and ":0:" not in passwd
    assert (filesystem / "tmp").stat().st_mode & 0o1777 == 0o1777


def entrypoint(filesystem, *args, **popen):
    """The image's entrypoint with `args`. As root: chrooted into the image's filesystem,
    as its user, with a /proc of its own (Trident reads /proc/self). Otherwise: the
    image's binary through the image's dynamic loader and libraries, with the image's
    paths in `args` taken inside the filesystem."""
    if os.geteuid() == 0:
        uid, gid = USER.split(":")
        # Where a container runtime would mount /proc.
        (filesystem / "proc").mkdir(exist_ok=True)
        command = [
            "unshare", "--pid", "--fork", "--mount-proc",
            f"--root={filesystem}", f"--setuid={uid}", f"--setgid={gid}",
            "/usr/local/bin/trident", *args,
        ]
        return subprocess.Popen(command, **popen)
    (loader,) = [p for p in filesystem.rglob("ld-linux*.so*") if not p.is_symlink()]
    libraries = sorted({str(p.parent) for p in filesystem.rglob("*.so*")})
    image_paths = [str(filesystem) + a if a.startswith("/etc/") else a for a in args]
    command = [
        loader, "--library-path", ":".join(libraries),
        filesystem / "usr" / "local" / "bin" / "trident", *image_paths,
    ]
    # `run` and `demo` execute themselves again to set this unless it is set, and
    # would execute the loader without the binary.
    env = {**os.environ, "MIMALLOC_PURGE_DELAY": "1"}
    return subprocess.Popen(command, env=env, **popen)


def stop(process):
    """Stops an `entrypoint` process at once (SIGINT). Under unshare it goes to Trident,
    the init of its PID namespace: unshare ignores SIGTERM while it waits, and its
    --kill-child does not survive the change of user."""
    children = pathlib.Path(f"/proc/{process.pid}/task/{process.pid}/children")
    pids = [int(pid) for pid in children.read_text().split()] if os.geteuid() == 0 else []
    for pid in pids or [process.pid]:
        os.kill(pid, signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        for pid in pids or [process.pid]:
            os.kill(pid, signal.SIGKILL)
        process.wait(timeout=30)
        raise


def test_image_checks_its_shipped_config(image):
    _, filesystem = image
    check = entrypoint(
        filesystem, "check", "--config", "/etc/trident/trident.toml",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    output, _ = check.communicate(timeout=60)
    assert check.returncode == 0, output


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_image_serves_the_demo(image, tmp_path):
    _, filesystem = image
    http, grpc, admin = (f"127.0.0.1:{free_port()}" for _ in range(3))
    log = (tmp_path / "demo.log").open("w")
    demo = entrypoint(
        filesystem, "demo", "--http-listen", http, "--grpc-listen", grpc,
        "--admin-listen", admin, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECS
        while True:
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()
            try:
                with urllib.request.urlopen(f"http://{admin}/ready", timeout=2) as ready:
                    if ready.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "demo.log").read_text()
            time.sleep(0.2)
        body = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 4],
                            "data": [1, 2, 3, 4]}]}
        request = urllib.request.Request(
            f"http://{http}/v2/models/resnet50/infer",
            data=json.dumps(body).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
            answer = json.loads(response.read())
        assert answer["model_name"] == "resnet50"
        assert answer["outputs"][0]["data"] == [1, 2, 3, 4]
    finally:
        stop(demo)
        log.close()
