"""Fixtures for the real-Triton conformance suite.

Session layout (all loopback, all ports picked free at start-up):

    Triton A (serve_models.py --set a)  <-- pool "a": identity_fp32, add_sub, echo_bytes,
                                            repeat_decoupled, and the default route "*"
    Triton B (serve_models.py --set b)  <-- pool "b": scale_b, dotted.model-b, whoami
    Trident  (TRIDENT_BIN run --config generated.toml)

Only when TLS tests are collected (they use the `triton_t` fixture):

    Triton T (serve_models.py --set t, gRPC over mutual TLS) <-- pool "t" of the TLS Tridents:
                                            identity_tls, whoami
    Trident "tls_trident"  TLS listeners, client certificates optional, pools a and t
    Trident "tls_strict"   TLS 1.3 only, client certificate required, SNI certificate,
                           client identity header; pools a and t
    Certificates: certs.py, made with the openssl CLI in a session tmp dir.

Every test makes the same tritonclient call directly to Triton and through Trident and
compares the answers.

Environment:
    TRIDENT_BIN                    Trident binary (default: <repo>/target/debug/trident).
    TRIDENT_CONFORMANCE_SELFTEST=1 Harness development only: no Trident is started, the
                                   "proxy" endpoints are Triton A itself; tests that need
                                   routing to B or Trident's admin port are skipped.
    TRIDENT_READY_TIMEOUT          Seconds to wait for Trident's admin /ready (default 30).
    TRITON_READY_TIMEOUT           Seconds to wait for both Tritons + models (default 240).
"""

import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

import certs

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVE_SCRIPT = HERE / "serve_models.py"

MODELS_A = ["identity_fp32", "add_sub", "echo_bytes", "repeat_decoupled", "whoami"]
MODELS_B = ["scale_b", "dotted.model-b", "whoami"]
MODELS_T = ["identity_tls", "whoami"]
# Exact routes in the generated Trident config. "whoami" lives on both Tritons and is routed
# to "b" on purpose: its answer shows which server got the request.
ROUTES = {
    "identity_fp32": "a",
    "add_sub": "a",
    "echo_bytes": "a",
    "repeat_decoupled": "a",
    "scale_b": "b",
    "dotted.model-b": "b",
    "whoami": "b",
}
# Exact routes of the TLS Tridents; everything else goes to "a" (plain).
TLS_ROUTES = {"identity_tls": "t", "whoami": "t"}
# Header Trident's strict TLS listener fills with the verified client identity. It matches
# Triton's forward pattern, so `whoami` on T echoes it back.
CLIENT_IDENTITY_HEADER = "trident-fwd-client-identity"

SELFTEST = os.environ.get("TRIDENT_CONFORMANCE_SELFTEST") == "1"
TRIDENT_BIN = pathlib.Path(os.environ.get("TRIDENT_BIN", REPO / "target" / "debug" / "trident"))
TRIDENT_READY_TIMEOUT = float(os.environ.get("TRIDENT_READY_TIMEOUT", "30"))
TRITON_READY_TIMEOUT = float(os.environ.get("TRITON_READY_TIMEOUT", "240"))
LOG_TAIL_LINES = 40

# Log files of the processes started in this session, shown when a test fails.
_LOGS = {}


# --------------------------------------------------------------------------- processes


def free_ports(n):
    """n distinct free loopback ports (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _child_setup():
    """In the child: own process group (for group kill), and die with the pytest process."""
    os.setsid()
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def log_tail(path, lines=LOG_TAIL_LINES):
    try:
        text = pathlib.Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail)


@dataclasses.dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: pathlib.Path

    def alive(self):
        return self.popen.poll() is None

    def describe_exit(self):
        return f"{self.name} exited with code {self.popen.returncode}; log {self.log}:\n{log_tail(self.log)}"


def start_proc(name, argv, log, env=None):
    logf = open(log, "wb")
    try:
        popen = subprocess.Popen(
            argv,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=_child_setup,
            env=env,
            cwd=str(log.parent),
        )
    finally:
        logf.close()
    _LOGS[name] = log
    return Proc(name, popen, log)


def stop_proc(proc, term_timeout=20.0):
    """SIGTERM the whole process group, then SIGKILL what is left. Never leaves orphans."""
    pgid = proc.popen.pid  # setsid(): the child is its group leader
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.popen.wait(timeout=term_timeout)
    except subprocess.TimeoutExpired:
        pass
    # Children (tritonserver, python backend stubs) may outlive the leader: kill the group.
    deadline = time.monotonic() + term_timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.popen.wait(timeout=5)


def http_status(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- endpoints


@dataclasses.dataclass(frozen=True)
class TlsClient:
    """What a tritonclient brings to a TLS handshake: the CA it trusts, optionally its certificate."""

    ca: pathlib.Path
    cert: pathlib.Path = None
    key: pathlib.Path = None

    def http_kw(self):
        # tritonclient.http hands ssl_options to geventhttpclient, which builds an SSLContext
        # from ca_certs (verifying the host name) and loads certfile/keyfile when both are set.
        opts = {"ca_certs": str(self.ca)}
        if self.cert is not None:
            opts.update(certfile=str(self.cert), keyfile=str(self.key))
        return {"ssl": True, "ssl_options": opts}

    def grpc_kw(self):
        kw = {"ssl": True, "root_certificates": str(self.ca)}
        if self.cert is not None:
            kw.update(certificate_chain=str(self.cert), private_key=str(self.key))
        return kw


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where tritonclient connects: host:port strings as tritonclient wants them, and
    the TLS settings of each protocol (None: plain)."""

    name: str
    http: str
    grpc: str
    http_tls: TlsClient = None
    grpc_tls: TlsClient = None

    def http_client(self, **kw):
        import tritonclient.http as httpclient

        kw.setdefault("connection_timeout", 60.0)
        kw.setdefault("network_timeout", 120.0)
        if self.http_tls is not None:
            kw = {**self.http_tls.http_kw(), **kw}
        return httpclient.InferenceServerClient(self.http, **kw)

    def grpc_client(self, **kw):
        # tritonclient.grpc's default channel options already set
        # grpc.max_send_message_length / max_receive_message_length to INT32_MAX,
        # which is what the 64 MiB tests need; do not pass channel_args (it would replace them).
        import tritonclient.grpc as grpcclient

        if self.grpc_tls is not None:
            kw = {**self.grpc_tls.grpc_kw(), **kw}
        return grpcclient.InferenceServerClient(self.grpc, **kw)

    def as_client(self, tls):
        """The same endpoint for a client with other TLS settings (protocols that are plain stay plain)."""
        return dataclasses.replace(
            self,
            http_tls=tls if self.http_tls is not None else None,
            grpc_tls=tls if self.grpc_tls is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class TritonServer(Endpoint):
    metrics: str = ""
    set_name: str = ""


@dataclasses.dataclass(frozen=True)
class TridentServer(Endpoint):
    admin: str = ""
    config_path: pathlib.Path = None
    log: pathlib.Path = None


def _wait_tritons(procs_and_servers, models_by_set):
    deadline = time.monotonic() + TRITON_READY_TIMEOUT
    pending = {s.set_name for _, s in procs_and_servers}
    while pending:
        for proc, srv in procs_and_servers:
            if srv.set_name not in pending:
                continue
            if not proc.alive():
                pytest.fail(f"Triton set {srv.set_name} died during start-up. {proc.describe_exit()}", pytrace=False)
            base = f"http://{srv.http}"
            if http_status(base + "/v2/health/ready") != 200:
                continue
            if all(http_status(f"{base}/v2/models/{m}/ready") == 200 for m in models_by_set[srv.set_name]):
                pending.discard(srv.set_name)
        if not pending:
            break
        if time.monotonic() > deadline:
            tails = "\n\n".join(f"{p.name} log {p.log}:\n{log_tail(p.log, 60)}" for p, _ in procs_and_servers)
            pytest.fail(
                f"Triton set(s) {sorted(pending)} not ready (server + all models) after "
                f"{TRITON_READY_TIMEOUT:.0f}s (TRITON_READY_TIMEOUT).\n{tails}",
                pytrace=False,
            )
        time.sleep(0.5)


@pytest.fixture(scope="session")
def logdir(tmp_path_factory):
    return tmp_path_factory.mktemp("conformance-logs")


def _start_triton(set_name, logdir, extra_argv=(), **srv_kw):
    http_port, grpc_port, metrics_port = free_ports(3)
    srv = TritonServer(
        name=f"triton-{set_name}",
        http=f"127.0.0.1:{http_port}",
        grpc=f"127.0.0.1:{grpc_port}",
        metrics=f"127.0.0.1:{metrics_port}",
        set_name=set_name,
        **srv_kw,
    )
    argv = [
        sys.executable,
        str(SERVE_SCRIPT),
        "--set",
        set_name,
        "--http-port",
        str(http_port),
        "--grpc-port",
        str(grpc_port),
        "--metrics-port",
        str(metrics_port),
        *extra_argv,
    ]
    proc = start_proc(srv.name, argv, logdir / f"{srv.name}.log")
    return proc, srv


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory):
    """{name: certs.KeyPair} for ca, trident, trident_alt, triton, client, proxy, other_ca, other_client."""
    return certs.make_certs(tmp_path_factory.mktemp("conformance-certs"))


@pytest.fixture(scope="session")
def _triton_t_started(request, logdir):
    """Starts Triton T (gRPC over mutual TLS) without waiting for it, and only if a collected
    test needs it, so that its start-up overlaps A's and B's. `triton_t` waits for it."""
    if not any("triton_t" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    c = request.getfixturevalue("tls_certs")
    proc, srv = _start_triton(
        "t",
        logdir,
        [
            "--grpc-tls-cert", str(c["triton"].cert),
            "--grpc-tls-key", str(c["triton"].key),
            "--grpc-tls-root", str(c["ca"].cert),
        ],
        # Direct calls to T's gRPC port present the same client certificate as the
        # tritonclient that talks to Trident. T's HTTP port is plain.
        grpc_tls=TlsClient(c["ca"].cert, c["client"].cert, c["client"].key),
    )
    try:
        yield proc, srv
    finally:
        stop_proc(proc)


@pytest.fixture(scope="session")
def tritons(logdir, _triton_t_started):
    """Start Triton A and Triton B in parallel; yield {"a": TritonServer, "b": TritonServer}."""
    started = []
    try:
        for set_name in ("a", "b"):
            started.append(_start_triton(set_name, logdir))
        _wait_tritons(started, {"a": MODELS_A, "b": MODELS_B})
        yield {srv.set_name: srv for _, srv in started}
    finally:
        for proc, _ in started:
            stop_proc(proc)


@pytest.fixture(scope="session")
def triton_t(_triton_t_started):
    """Triton T, ready: gRPC only over TLS with a client certificate signed by the test CA."""
    assert _triton_t_started is not None, "Triton T was not started: no collected test uses triton_t"
    proc, srv = _triton_t_started
    _wait_tritons([(proc, srv)], {"t": MODELS_T})
    return srv


def trident_config_toml(http_port, grpc_port, admin_port, a, b):
    lines = [
        "# generated by tests/conformance/conftest.py",
        "[server]",
        f'http_listen  = "127.0.0.1:{http_port}"',
        f'grpc_listen  = "127.0.0.1:{grpc_port}"',
        f'admin_listen = "127.0.0.1:{admin_port}"',
        "",
    ]
    for pool, srv in (("a", a), ("b", b)):
        lines += [
            "[[pools]]",
            f'name = "{pool}"',
            f'endpoints = [ {{ http = "{srv.http}", grpc = "{srv.grpc}" }} ]',
            "",
        ]
    for model, pool in ROUTES.items():
        lines += ["[[routes]]", f'model = "{model}"', f'pool  = "{pool}"', ""]
    lines += ["[[routes]]", 'model = "*"', 'pool  = "a"', ""]
    return "\n".join(lines)


@pytest.fixture(scope="session")
def trident(request, logdir):
    """Start Trident in front of both Tritons. Fails (never skips) if the binary is missing."""
    if SELFTEST:
        a = request.getfixturevalue("tritons")["a"]
        yield TridentServer(name="selftest-direct-a", http=a.http, grpc=a.grpc)
        return

    servers = request.getfixturevalue("tritons")
    yield from _trident_process(
        "trident", logdir, lambda h, g, a: trident_config_toml(h, g, a, servers["a"], servers["b"])
    )


GUARDED_API_KEY = "conformance-key"
GUARDED_BURST = 3
GUARDED_CORS_ORIGIN = "https://app.example.com"


def guarded_config_toml(http_port, grpc_port, admin_port, a):
    """Trident with an API key on every call (and CORS for one origin) and a batch-size
    rate limit on identity_fp32."""
    return f"""# generated by tests/conformance/conftest.py
[server]
http_listen  = "127.0.0.1:{http_port}"
grpc_listen  = "127.0.0.1:{grpc_port}"
admin_listen = "127.0.0.1:{admin_port}"
filters = ["keys", "browsers"]

[filters.keys]
kind = "api_key"
keys = [ {{ tenant = "conformance", key = "{GUARDED_API_KEY}" }} ]

[filters.browsers]
kind = "cors"
allow_origins = ["{GUARDED_CORS_ORIGIN}"]

[filters.images]
kind = "rate_limit"
rate_per_second = 0.001
burst = {GUARDED_BURST}
key = ["tenant", "model", "header:x-bucket"]
cost = "batch_size"

[[pools]]
name = "a"
endpoints = [ {{ http = "{a.http}", grpc = "{a.grpc}" }} ]

[[routes]]
model = "identity_fp32"
pool = "a"
filters = ["images"]

[[routes]]
model = "*"
pool = "a"
"""


@pytest.fixture(scope="session")
def guarded(request, logdir):
    """A second Trident in front of Triton a, with filters (see guarded_config_toml)."""
    if SELFTEST:
        pytest.skip("filters exist only in Trident")
    a = request.getfixturevalue("tritons")["a"]
    yield from _trident_process("guarded", logdir, lambda h, g, ad: guarded_config_toml(h, g, ad, a))


def canary_config_toml(http_port, grpc_port, admin_port, a, b):
    """Trident mirroring add_sub and echo_bytes to the same Triton (answers must match),
    whoami from A to B (they must not), and splitting whoami to B at version 1 by header."""
    return f"""# generated by tests/conformance/conftest.py
[server]
http_listen  = "127.0.0.1:{http_port}"
grpc_listen  = "127.0.0.1:{grpc_port}"
admin_listen = "127.0.0.1:{admin_port}"

[[pools]]
name = "a"
endpoints = [ {{ http = "{a.http}", grpc = "{a.grpc}" }} ]

[[pools]]
name = "b"
endpoints = [ {{ http = "{b.http}", grpc = "{b.grpc}" }} ]

[[routes]]
model = "add_sub"
pool = "a"
[routes.mirror]
pool = "a"

[[routes]]
model = "echo_bytes"
pool = "a"
[routes.mirror]
pool = "a"

[[routes]]
model = "whoami"
pool = "a"
[[routes.splits]]
pool = "b"
version = "1"
header = "x-to-b"
[routes.mirror]
pool = "b"

[[routes]]
model = "*"
pool = "a"
"""


@pytest.fixture(scope="session")
def canary(request, logdir):
    """A third Trident over Tritons a and b, with mirrors and a split (see canary_config_toml)."""
    if SELFTEST:
        pytest.skip("mirrors and splits exist only in Trident")
    servers = request.getfixturevalue("tritons")
    yield from _trident_process(
        "canary", logdir, lambda h, g, ad: canary_config_toml(h, g, ad, servers["a"], servers["b"])
    )


def tls_config_toml(http_port, grpc_port, admin_port, a, t, c, strict=False):
    """Trident with TLS on both proxy listeners, pool "a" (plain Triton A, the default route)
    and pool "t" (Triton T: gRPC over TLS with Trident's own client certificate, HTTP plain).

    strict=False: client certificates are verified when sent, but not required.
    strict=True:  client certificate required, TLS 1.3 only, a second certificate for SNI
                  name certs.ALT_NAME, and the verified client identity in CLIENT_IDENTITY_HEADER.
    """
    tls = [
        "[server.tls]",
        f'cert_file = "{c["trident"].cert}"',
        f'key_file  = "{c["trident"].key}"',
        f'client_ca_file = "{c["ca"].cert}"',
    ]
    if strict:
        tls += [
            "require_client_cert = true",
            'min_version = "1.3"',
            f'client_identity_header = "{CLIENT_IDENTITY_HEADER}"',
            "",
            "[[server.tls.sni]]",
            f'server_names = ["{certs.ALT_NAME}"]',
            f'cert_file = "{c["trident_alt"].cert}"',
            f'key_file  = "{c["trident_alt"].key}"',
        ]
    else:
        tls += ["require_client_cert = false", 'listeners = ["http", "grpc"]']
    lines = [
        "# generated by tests/conformance/conftest.py",
        "[server]",
        f'http_listen  = "127.0.0.1:{http_port}"',
        f'grpc_listen  = "127.0.0.1:{grpc_port}"',
        f'admin_listen = "127.0.0.1:{admin_port}"',
        "drain_delay_secs = 0  # no load balancer to wait for: stops at the session's end take no 5 s",
        "",
        *tls,
        "",
        "[[pools]]",
        'name = "a"',
        f'endpoints = [ {{ http = "{a.http}", grpc = "{a.grpc}" }} ]',
        "",
        "[[pools]]",
        'name = "t"',
        f'endpoints = [ {{ http = "{t.http}", grpc = "{t.grpc}" }} ]',
        "",
        "[pools.tls]",
        f'ca_file = "{c["ca"].cert}"',
        f'server_name = "{certs.TRITON_NAME}"',
        f'client_cert_file = "{c["proxy"].cert}"',
        f'client_key_file  = "{c["proxy"].key}"',
        'protocols = ["grpc"]',
        "",
    ]
    for model, pool in TLS_ROUTES.items():
        lines += ["[[routes]]", f'model = "{model}"', f'pool  = "{pool}"', ""]
    lines += ["[[routes]]", 'model = "*"', 'pool  = "a"', ""]
    return "\n".join(lines)


def _tls_trident(logdir, name, strict, a, t, c):
    if SELFTEST:
        pytest.skip("TLS listeners and TLS pools exist only in Trident")
    for srv in _trident_process(
        name, logdir, lambda h, g, ad: tls_config_toml(h, g, ad, a, t, c, strict=strict)
    ):
        # The tritonclient of the TLS checks trusts the test CA and presents the "client" certificate.
        tls = TlsClient(c["ca"].cert, c["client"].cert, c["client"].key)
        yield dataclasses.replace(srv, http_tls=tls, grpc_tls=tls)


@pytest.fixture(scope="session")
def tls_trident(logdir, tritons, triton_t, tls_certs):
    """Trident with TLS on both listeners (client certificate optional) over pools a and t."""
    yield from _tls_trident(logdir, "tls_trident", False, tritons["a"], triton_t, tls_certs)


@pytest.fixture(scope="session")
def tls_strict(logdir, tritons, triton_t, tls_certs):
    """Trident with TLS 1.3 only, client certificate required, SNI, client identity header."""
    yield from _tls_trident(logdir, "tls_strict", True, tritons["a"], triton_t, tls_certs)


TLS_GRPC_ONLY_HEALTH_MS = 500


def tls_grpc_only_config_toml(http_port, grpc_port, admin_port, t, c):
    """Plain Trident whose only pool lists Triton T by its gRPC address alone, over TLS with
    the default server name (the address as written, 127.0.0.1): readiness is asked over gRPC,
    every TLS_GRPC_ONLY_HEALTH_MS."""
    return f"""# generated by tests/conformance/conftest.py
[server]
http_listen  = "127.0.0.1:{http_port}"
grpc_listen  = "127.0.0.1:{grpc_port}"
admin_listen = "127.0.0.1:{admin_port}"
drain_delay_secs = 0

[[pools]]
name = "tg"
endpoints = [ {{ grpc = "{t.grpc}" }} ]

[pools.tls]
ca_file = "{c["ca"].cert}"
client_cert_file = "{c["proxy"].cert}"
client_key_file  = "{c["proxy"].key}"
protocols = ["grpc"]

[pools.health]
interval_ms = {TLS_GRPC_ONLY_HEALTH_MS}
timeout_ms  = {TLS_GRPC_ONLY_HEALTH_MS}

[[routes]]
model = "*"
pool  = "tg"
"""


@pytest.fixture(scope="session")
def tls_grpc_only(logdir, triton_t, tls_certs):
    """Trident over a gRPC-only TLS pool (see tls_grpc_only_config_toml). Yielded once it
    listens, ready or not: the test itself waits for /ready."""
    if SELFTEST:
        pytest.skip("TLS pools exist only in Trident")
    t, c = triton_t, tls_certs
    yield from _trident_process(
        "tls_grpc_only", logdir, lambda h, g, ad: tls_grpc_only_config_toml(h, g, ad, t, c), wait_ready=False
    )


def tls_refused_config_toml(http_port, grpc_port, admin_port, t, c):
    """Plain Trident with two TLS pools to Triton T that must fail: identity_tls goes to one
    verifying a name T's certificate lacks, whoami to one without Trident's client certificate."""
    return f"""# generated by tests/conformance/conftest.py
[server]
http_listen  = "127.0.0.1:{http_port}"
grpc_listen  = "127.0.0.1:{grpc_port}"
admin_listen = "127.0.0.1:{admin_port}"
drain_delay_secs = 0

[[pools]]
name = "wrong_name"
endpoints = [ {{ http = "{t.http}", grpc = "{t.grpc}" }} ]

[pools.tls]
ca_file = "{c["ca"].cert}"
server_name = "not-{certs.TRITON_NAME}"
client_cert_file = "{c["proxy"].cert}"
client_key_file  = "{c["proxy"].key}"
protocols = ["grpc"]

[[pools]]
name = "no_client_cert"
endpoints = [ {{ http = "{t.http}", grpc = "{t.grpc}" }} ]

[pools.tls]
ca_file = "{c["ca"].cert}"
server_name = "{certs.TRITON_NAME}"
protocols = ["grpc"]

[[routes]]
model = "identity_tls"
pool  = "wrong_name"

[[routes]]
model = "*"
pool  = "no_client_cert"
"""


@pytest.fixture(scope="session")
def tls_refused(logdir, triton_t, tls_certs):
    """Trident over TLS pools to T that fail the handshake (see tls_refused_config_toml)."""
    if SELFTEST:
        pytest.skip("TLS pools exist only in Trident")
    t, c = triton_t, tls_certs
    yield from _trident_process("tls_refused", logdir, lambda h, g, ad: tls_refused_config_toml(h, g, ad, t, c))


@pytest.fixture(scope="session")
def tls_direct(tritons, triton_t):
    """Direct Triton endpoint the TLS Tridents route a model to: T (gRPC over TLS) or plain A."""

    def for_model(model):
        return triton_t if TLS_ROUTES.get(model) == "t" else tritons["a"]

    return for_model


def _trident_process(name, logdir, make_config, wait_ready=True):
    """Runs Trident on a generated config until the session ends. Yields once its admin
    /ready answers 200 (wait_ready=False: once the admin listener answers at all)."""
    if not TRIDENT_BIN.is_file() or not os.access(TRIDENT_BIN, os.X_OK):
        pytest.fail(
            f"Trident binary not found or not executable: {TRIDENT_BIN}\n"
            "Build it (cargo build) or point TRIDENT_BIN at it. "
            "(TRIDENT_CONFORMANCE_SELFTEST=1 runs the harness against Triton directly.)",
            pytrace=False,
        )
    http_port, grpc_port, admin_port = free_ports(3)
    cfg = logdir / f"{name}.toml"
    cfg.write_text(make_config(http_port, grpc_port, admin_port))
    log = logdir / f"{name}.log"
    env = dict(os.environ)
    env.setdefault("RUST_BACKTRACE", "1")
    proc = start_proc(name, [str(TRIDENT_BIN), "run", "--config", str(cfg)], log, env=env)
    srv = TridentServer(
        name=name,
        http=f"127.0.0.1:{http_port}",
        grpc=f"127.0.0.1:{grpc_port}",
        admin=f"127.0.0.1:{admin_port}",
        config_path=cfg,
        log=log,
    )
    try:
        deadline = time.monotonic() + TRIDENT_READY_TIMEOUT
        while True:
            if not proc.alive():
                pytest.fail(
                    f"Trident ({TRIDENT_BIN}) exited before its admin /ready answered 200. "
                    f"Config {cfg}:\n{cfg.read_text()}\n{proc.describe_exit()}",
                    pytrace=False,
                )
            status = http_status(f"http://{srv.admin}/ready")
            if status == 200 or (status is not None and not wait_ready):
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"Trident admin http://{srv.admin}/ready not 200 after {TRIDENT_READY_TIMEOUT:.0f}s "
                    f"(TRIDENT_READY_TIMEOUT). Config {cfg}:\n{cfg.read_text()}\nlog {log}:\n{log_tail(log)}",
                    pytrace=False,
                )
            time.sleep(0.2)
        yield srv
        if not proc.alive():
            # Surfaces as a teardown error of the last test.
            pytest.fail(f"Trident died during the session. {proc.describe_exit()}", pytrace=False)
    finally:
        stop_proc(proc, term_timeout=10.0)


# --------------------------------------------------------------------------- convenience


@pytest.fixture(scope="session")
def triton_a(tritons):
    return tritons["a"]


@pytest.fixture(scope="session")
def triton_b(tritons):
    return tritons["b"]


@pytest.fixture(scope="session")
def direct(tritons):
    """Direct Triton endpoint a model is served from (what Trident should route to)."""

    def for_model(model):
        if model == "*" or model not in ROUTES:
            return tritons["a"]
        return tritons[ROUTES[model]]

    return for_model


@pytest.fixture(scope="session")
def proxy(trident):
    return trident


# --------------------------------------------------------------------------- hooks


def pytest_collection_modifyitems(config, items):
    if not SELFTEST:
        return
    skip = pytest.mark.skip(reason="TRIDENT_CONFORMANCE_SELFTEST=1: proxy is Triton A directly")
    for item in items:
        if "routing" in item.keywords or "admin" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and not SELFTEST:
        # The TLS Tridents' own logs for the TLS checks, the main Trident's for the others.
        tls = ("tls_trident", "tls_strict", "tls_grpc_only", "tls_refused")
        names = [n for n in tls if n in getattr(item, "fixturenames", ())] or ["trident"]
        for name in names:
            if name in _LOGS:
                log = _LOGS[name]
                report.sections.append((f"{name} log tail ({log})", log_tail(log)))


def pytest_terminal_summary(terminalreporter):
    if _LOGS:
        terminalreporter.write_sep("-", "conformance process logs")
        for name, path in _LOGS.items():
            terminalreporter.write_line(f"{name}: {path}")
    if SELFTEST:
        terminalreporter.write_sep("!", "SELFTEST mode: Trident was NOT tested (proxy = Triton A)")


def repository_config_toml(http_port, grpc_port, admin_port, a, b):
    """Trident with one pool "ab" holding Triton A and Triton B: repository calls fan out."""
    lines = trident_config_toml(http_port, grpc_port, admin_port, a, b).split("\n[[pools]]")[0]
    endpoints = ", ".join(f'{{ http = "{s.http}", grpc = "{s.grpc}" }}' for s in (a, b))
    return f'{lines}\n[[pools]]\nname = "ab"\nendpoints = [ {endpoints} ]\n\n[[routes]]\nmodel = "*"\npool  = "ab"\n'



@pytest.fixture(scope="session")
def repo_trident(request, logdir):
    """Trident whose pool "ab" holds both Tritons (model repository fan-out)."""
    servers = request.getfixturevalue("tritons")
    yield from _trident_process(
        "repo_trident", logdir, lambda h, g, a: repository_config_toml(h, g, a, servers["a"], servers["b"])
    )
