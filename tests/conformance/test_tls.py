"""TLS (issue 16): tritonclient over TLS to Trident, and Trident over gRPC TLS (mutual) to a
real Triton. Each check makes the same call through Trident and directly, and compares:

    client --TLS--> tls_trident --plain------------> Triton A  (identity_fp32, the default route)
                                --gRPC TLS + mTLS--> Triton T  (identity_tls, whoami; its HTTP is plain)

Direct calls go to Triton T over gRPC TLS (with a client certificate) or to the plain HTTP
ports. `tls_trident` verifies client certificates when sent but does not require them: every
downstream check runs with and without one. `tls_strict` requires one, speaks TLS 1.3 only,
serves a second certificate by SNI and sends the verified client identity upstream.
See conftest.py for the configurations and certs.py for the certificates.
"""

import json
import socket
import ssl
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

import certs
from conftest import CLIENT_IDENTITY_HEADER, TRIDENT_READY_TIMEOUT, TlsClient
from helpers import (
    OUTPUTS,
    assert_outputs_equal,
    assert_pb_equal,
    assert_same_error,
    call_error,
    describe_error,
    grpc_infer,
    grpc_stream,
    http_infer,
    outputs_of,
    sample_inputs,
)

pytestmark = pytest.mark.tls

# identity_fp32: pool a (plain Triton A); identity_tls: pool t (gRPC over mutual TLS to Triton T).
MODELS = ["identity_fp32", "identity_tls"]
UNKNOWN = "no_such_model_xyz"


@pytest.fixture(params=["client-cert", "no-client-cert"])
def tls_proxy(request, tls_trident, tls_certs):
    """tls_trident as a tritonclient with a certificate (mTLS) and one with none (server auth only)."""
    if request.param == "client-cert":
        return tls_trident
    return tls_trident.as_client(TlsClient(tls_certs["ca"].cert))


def _params(result):
    return json.loads(result.as_numpy("PARAMS").reshape(-1)[0])


def refused(fn):
    """Run fn (a call that must not get an answer); return a description of how it failed."""
    try:
        value = fn()
    except InferenceServerException as e:
        return describe_error(e)
    except Exception as e:  # ssl.SSLError, ConnectionResetError, geventhttpclient's parse errors...
        return f"{type(e).__module__}.{type(e).__name__}: {e}"
    raise AssertionError(f"expected the connection to be refused, the call returned {value!r}")


def tls_connect(hostport, ca, client=None, server_name="localhost", alpn=None, max_version=None):
    """One raw TLS connection verifying the server against ca (SNI server_name); returns
    (TLS version, ALPN protocol, peer certificate, first bytes of the answer to an HTTP/1.1
    GET, b"" on EOF). The GET is sent only when the ALPN result is not h2."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    host, port = hostport.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
            version, proto, peer = tls.version(), tls.selected_alpn_protocol(), tls.getpeercert()
            answer = None
            if proto != "h2":
                tls.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
                answer = tls.recv(64)
            return version, proto, peer, answer


def _cn(peer):
    return dict(x[0] for x in peer["subject"])["commonName"]


# --------------------------------------------------------------------------- premises (no Trident)


def test_certificates(tls_certs):
    c = tls_certs
    for name, purpose in [
        ("trident", "sslserver"),
        ("trident_alt", "sslserver"),
        ("triton", "sslserver"),
        ("client", "sslclient"),
        ("proxy", "sslclient"),
    ]:
        ok, out = certs.verify(c["ca"].cert, c[name].cert, purpose)
        assert ok, f"{name}: {out}"
    ok, out = certs.verify(c["other_ca"].cert, c["other_client"].cert, "sslclient")
    assert ok, out
    ok, out = certs.verify(c["ca"].cert, c["other_client"].cert, "sslclient")
    assert not ok, f"the stranger's certificate must not verify against the test CA: {out}"
    assert "DNS:localhost, IP Address:127.0.0.1" in certs.san_of(c["trident"].cert)
    assert f"DNS:{certs.TRITON_NAME}, IP Address:127.0.0.1" in certs.san_of(c["triton"].cert)


def test_triton_t_grpc_is_mutual_tls(triton_t, tls_certs):
    """Premise of the upstream checks: T's gRPC port answers only TLS clients with a certificate
    of the test CA (Trident's "proxy" one included)."""
    c = tls_certs
    assert triton_t.grpc_client().get_server_metadata().name == "triton-t"
    as_proxy = triton_t.as_client(TlsClient(c["ca"].cert, c["proxy"].cert, c["proxy"].key))
    assert as_proxy.grpc_client().is_server_ready() is True
    for what, tls in [
        ("plain", None),
        ("no client certificate", TlsClient(c["ca"].cert)),
        ("a stranger's certificate", TlsClient(c["ca"].cert, c["other_client"].cert, c["other_client"].key)),
    ]:
        err = call_error(lambda: triton_t.as_client(tls).grpc_client().is_server_live(client_timeout=10))
        assert err.status() == "StatusCode.UNAVAILABLE", f"T with {what}: {describe_error(err)}"


# --------------------------------------------------------------------------- HTTP over TLS


def test_https_live_ready(tls_proxy):
    p = tls_proxy.http_client()
    assert p.is_server_live() is True, "is_server_live over TLS through Trident is not True"
    assert p.is_server_ready() is True, "is_server_ready over TLS through Trident is not True"


def test_https_server_metadata(tls_proxy, triton_a):
    got = tls_proxy.http_client().get_server_metadata()
    want = triton_a.http_client().get_server_metadata()
    assert got == want, f"server metadata over TLS {got} != direct Triton A {want}"


@pytest.mark.parametrize("model", MODELS)
def test_https_model_metadata(tls_proxy, tls_direct, model):
    assert tls_proxy.http_client().is_model_ready(model) is True
    got = tls_proxy.http_client().get_model_metadata(model)
    want = tls_direct(model).http_client().get_model_metadata(model)
    assert got == want, f"model metadata {model} over TLS: proxy {got} != direct {want}"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", MODELS)
def test_https_infer(tls_proxy, tls_direct, model, binary):
    arrays = sample_inputs(model)
    got = http_infer(tls_proxy.http_client(), model, arrays, binary_in=binary, binary_out=binary)
    want = http_infer(tls_direct(model).http_client(), model, arrays, binary_in=binary, binary_out=binary)
    names = OUTPUTS[model]
    assert_outputs_equal(outputs_of(got, names), outputs_of(want, names), f"HTTPS infer {model}")
    g, w = got.get_response(), want.get_response()
    assert g == w, f"HTTPS infer {model}: response header JSON differs: proxy {g} != direct {w}"


def test_https_errors(tls_proxy, tls_direct):
    x = {"INPUT": np.zeros((1, 4), dtype=np.float32)}
    want = call_error(lambda: http_infer(tls_direct(UNKNOWN).http_client(), UNKNOWN, x, outputs=[]))
    got = call_error(lambda: http_infer(tls_proxy.http_client(), UNKNOWN, x, outputs=[]))
    assert_same_error(got, want, "HTTPS infer on unknown model")
    bad = {"NOT_AN_INPUT": np.zeros((1, 4), dtype=np.float32)}
    want = call_error(lambda: http_infer(tls_direct("identity_tls").http_client(), "identity_tls", bad, outputs=[]))
    got = call_error(lambda: http_infer(tls_proxy.http_client(), "identity_tls", bad, outputs=[]))
    assert_same_error(got, want, "HTTPS infer identity_tls with a wrong input name")


# --------------------------------------------------------------------------- gRPC over TLS


def test_grpcs_live_ready(tls_proxy):
    p = tls_proxy.grpc_client()
    assert p.is_server_live() is True, "gRPC is_server_live over TLS through Trident is not True"
    assert p.is_server_ready() is True, "gRPC is_server_ready over TLS through Trident is not True"


def test_grpcs_server_metadata(tls_proxy, triton_a):
    got = tls_proxy.grpc_client().get_server_metadata()
    want = triton_a.grpc_client().get_server_metadata()
    assert_pb_equal(got, want, "gRPC server metadata over TLS (default route -> A)")


@pytest.mark.parametrize("model", MODELS)
def test_grpcs_model_metadata_config(tls_proxy, tls_direct, model):
    p, d = tls_proxy.grpc_client(), tls_direct(model).grpc_client()
    assert p.is_model_ready(model) is True, f"gRPC is_model_ready({model}) over TLS not True"
    assert_pb_equal(p.get_model_metadata(model), d.get_model_metadata(model), f"gRPC model metadata {model} over TLS")
    assert_pb_equal(p.get_model_config(model), d.get_model_config(model), f"gRPC model config {model} over TLS")


@pytest.mark.parametrize("model", MODELS)
def test_grpcs_infer(tls_proxy, tls_direct, model):
    arrays = sample_inputs(model)
    got = grpc_infer(tls_proxy.grpc_client(), model, arrays, request_id="tls-1")
    want = grpc_infer(tls_direct(model).grpc_client(), model, arrays, request_id="tls-1")
    assert_outputs_equal(outputs_of(got, OUTPUTS[model]), outputs_of(want, OUTPUTS[model]), f"gRPC infer {model}")
    assert_pb_equal(got.get_response(), want.get_response(), f"gRPC infer {model} over TLS")


@pytest.mark.parametrize("model", MODELS)
def test_grpcs_stream(tls_proxy, tls_direct, model):
    reqs = [(model, sample_inputs(model, seed=i), str(i)) for i in range(4)]
    got, _ = grpc_stream(tls_proxy, reqs)
    want, _ = grpc_stream(tls_direct(model), reqs)
    assert sorted(got) == sorted(want) == [str(i) for i in range(4)], f"stream ids: proxy {sorted(got)}"
    for rid in want:
        assert_outputs_equal(got[rid][0], want[rid][0], f"gRPC stream {model} over TLS, request {rid}")


def test_grpcs_errors(tls_proxy, tls_direct):
    x = {"INPUT": np.zeros((1, 4), dtype=np.float32)}
    want = call_error(lambda: grpc_infer(tls_direct(UNKNOWN).grpc_client(), UNKNOWN, x, outputs=[]))
    got = call_error(lambda: grpc_infer(tls_proxy.grpc_client(), UNKNOWN, x, outputs=[]))
    assert_same_error(got, want, "gRPC infer on unknown model over TLS")
    bad = {"NOT_AN_INPUT": np.zeros((1, 4), dtype=np.float32)}
    want = call_error(lambda: grpc_infer(tls_direct("identity_tls").grpc_client(), "identity_tls", bad, outputs=[]))
    got = call_error(lambda: grpc_infer(tls_proxy.grpc_client(), "identity_tls", bad, outputs=[]))
    assert_same_error(got, want, "gRPC infer identity_tls with a wrong input name (error from T over TLS)")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_whoami_on_t_with_forwarded_headers(tls_proxy, triton_t, protocol):
    """The route to pool t reaches T (gRPC over TLS, HTTP plain), client headers included."""
    infer = http_infer if protocol == "http" else grpc_infer
    x = sample_inputs("whoami")
    got = infer(getattr(tls_proxy, f"{protocol}_client")(), "whoami", x, headers={"trident-fwd-token": "s3cr3t"})
    want = infer(getattr(triton_t, f"{protocol}_client")(), "whoami", x, headers={"trident-fwd-token": "s3cr3t"})
    assert want.as_numpy("SERVER").reshape(-1)[0] == b"t"
    assert got.as_numpy("SERVER").reshape(-1)[0] == b"t", "whoami through Trident not answered by Triton T"
    assert _params(want)["trident-fwd-token"] == "s3cr3t", f"premise: Triton forwards headers: {_params(want)}"
    assert _params(got) == _params(want), f"parameters seen by T: proxy {_params(got)} != direct {_params(want)}"


# --------------------------------------------------------------------------- handshakes


def test_plain_clients_are_refused(tls_trident):
    plain = tls_trident.as_client(None)
    how = refused(lambda: plain.http_client(connection_timeout=10, network_timeout=10).get_server_metadata())
    assert "InferenceServerException" not in how, f"plain HTTP got an HTTP answer from the TLS listener: {how}"
    err = call_error(lambda: plain.grpc_client().is_server_live(client_timeout=10))
    assert err.status() == "StatusCode.UNAVAILABLE", f"plain gRPC to the TLS listener: {describe_error(err)}"


@pytest.mark.parametrize(
    "listener,offer,selected",
    [
        ("http", ["h2", "http/1.1"], "h2"),
        ("http", ["http/1.1"], "http/1.1"),
        ("http", None, None),
        ("grpc", ["h2"], "h2"),
    ],
    ids=["http-h2", "http-http1", "http-no-alpn", "grpc-h2"],
)
def test_alpn(tls_trident, tls_certs, listener, offer, selected):
    version, proto, peer, answer = tls_connect(getattr(tls_trident, listener), tls_certs["ca"].cert, alpn=offer)
    assert proto == selected, f"{listener} listener, ALPN offer {offer}: selected {proto!r}, expected {selected!r}"
    assert _cn(peer) == "localhost", f"certificate served: {peer['subject']}"
    if answer is not None:
        assert answer.startswith(b"HTTP/1.1 200"), f"GET /v2/health/live over TLS answered {answer!r}"


def test_tls12_accepted_by_default(tls_trident, tls_certs):
    for listener in ("http", "grpc"):
        version, _, _, _ = tls_connect(
            getattr(tls_trident, listener), tls_certs["ca"].cert, alpn=["h2"], max_version=ssl.TLSVersion.TLSv1_2
        )
        assert version == "TLSv1.2", f"{listener}: {version}"


# --------------------------------------------------------------------------- tls_strict


def test_strict_requires_a_client_certificate(tls_strict, tls_certs):
    c = tls_certs
    assert tls_strict.http_client().is_server_live() is True, "the client certificate of the test CA is accepted"
    assert tls_strict.grpc_client().is_server_live() is True
    for what, tls in [
        ("no client certificate", TlsClient(c["ca"].cert)),
        ("a stranger's certificate", TlsClient(c["ca"].cert, c["other_client"].cert, c["other_client"].key)),
    ]:
        client = tls_strict.as_client(tls)
        how = refused(lambda: client.http_client(connection_timeout=10, network_timeout=10).get_server_metadata())
        assert "InferenceServerException" not in how, f"HTTP with {what} got an HTTP answer: {how}"
        err = call_error(lambda: client.grpc_client().is_server_live(client_timeout=10))
        assert err.status() == "StatusCode.UNAVAILABLE", f"gRPC with {what}: {describe_error(err)}"


def test_strict_raw_handshakes(tls_strict, tls_certs):
    c = tls_certs
    _, _, _, answer = tls_connect(tls_strict.http, c["ca"].cert, client=c["client"])
    assert answer.startswith(b"HTTP/1.1 200"), answer

    def get_without_certificate():
        answer = tls_connect(tls_strict.http, c["ca"].cert)[3]
        if answer == b"":
            raise ConnectionResetError("EOF after the handshake")
        return answer

    refused(get_without_certificate)


@pytest.mark.parametrize("listener", ["http", "grpc"])
def test_strict_tls13_only(tls_strict, tls_certs, listener):
    c = tls_certs
    version, _, _, _ = tls_connect(getattr(tls_strict, listener), c["ca"].cert, client=c["client"], alpn=["h2"])
    assert version == "TLSv1.3"
    how = refused(
        lambda: tls_connect(
            getattr(tls_strict, listener), c["ca"].cert, client=c["client"], alpn=["h2"],
            max_version=ssl.TLSVersion.TLSv1_2,
        )
    )
    assert "SSL" in how, f"a TLS 1.2 client to min_version 1.3: {how}"


@pytest.mark.parametrize("listener", ["http", "grpc"])
def test_strict_sni_certificate(tls_strict, tls_certs, listener):
    c = tls_certs
    addr = getattr(tls_strict, listener)
    _, _, peer, _ = tls_connect(addr, c["ca"].cert, client=c["client"], server_name=certs.ALT_NAME, alpn=["h2"])
    assert _cn(peer) == certs.ALT_NAME, f"SNI {certs.ALT_NAME}: certificate {peer['subject']}"
    _, _, peer, _ = tls_connect(addr, c["ca"].cert, client=c["client"], server_name="localhost", alpn=["h2"])
    assert _cn(peer) == "localhost", f"SNI localhost: certificate {peer['subject']}"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_strict_client_identity_header(tls_strict, protocol):
    """The verified client identity reaches T in CLIENT_IDENTITY_HEADER; a client's own copy is dropped."""
    infer = http_infer if protocol == "http" else grpc_infer
    client = getattr(tls_strict, f"{protocol}_client")()
    got = infer(client, "whoami", sample_inputs("whoami"), headers={CLIENT_IDENTITY_HEADER: "forged-admin"})
    assert got.as_numpy("SERVER").reshape(-1)[0] == b"t"
    params = _params(got)
    assert CLIENT_IDENTITY_HEADER in params, f"no {CLIENT_IDENTITY_HEADER} reached Triton: {params}"
    assert "forged-admin" not in str(params[CLIENT_IDENTITY_HEADER]), f"client's own header passed: {params}"
    assert certs.CLIENT_NAME in str(params[CLIENT_IDENTITY_HEADER]), f"identity is not the client's: {params}"


# --------------------------------------------------------------------------- tls_grpc_only


def _admin_ready(server):
    try:
        with urllib.request.urlopen(f"http://{server.admin}/ready", timeout=5) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def _health_checks(server, model):
    """{result: count} of trident_health_checks_total for pool tg and model."""
    text = urllib.request.urlopen(f"http://{server.admin}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("trident_health_checks_total{") and 'pool="tg"' in line and f'model="{model}"' in line:
            result = line.split('result="', 1)[1].split('"', 1)[0]
            out[result] = out.get(result, 0) + float(line.split()[-1])
    return out


def test_grpc_only_tls_pool(tls_grpc_only, triton_t):
    """A pool listing T by its gRPC address alone: its readiness checks are gRPC calls, which must
    use the pool's TLS too (and the default server name, 127.0.0.1 as written, verifies)."""
    deadline = time.monotonic() + TRIDENT_READY_TIMEOUT
    while sum((checks := _health_checks(tls_grpc_only, "_all")).values()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sum(checks.values()) >= 3, f"fewer than 3 readiness checks of T in {TRIDENT_READY_TIMEOUT:.0f}s: {checks}"
    assert checks.get("failed", 0) == 0, (
        f"readiness checks (gRPC ServerReady) of T's TLS gRPC port failed: {checks}; "
        f"admin /ready: {_admin_ready(tls_grpc_only)}"
    )
    assert _admin_ready(tls_grpc_only)[0] == 200
    p, d = tls_grpc_only.grpc_client(), triton_t.grpc_client()
    assert_pb_equal(p.get_server_metadata(), d.get_server_metadata(), "gRPC server metadata via a gRPC-only TLS pool")
    arrays = sample_inputs("identity_tls")
    got, want = grpc_infer(p, "identity_tls", arrays), grpc_infer(d, "identity_tls", arrays)
    assert_pb_equal(got.get_response(), want.get_response(), "gRPC infer via a gRPC-only TLS pool")


# --------------------------------------------------------------------------- tls_refused


@pytest.mark.parametrize(
    "model,why",
    [("identity_tls", "T's certificate does not name the pool's server_name"), ("whoami", "no client certificate")],
    ids=["wrong-server-name", "no-client-certificate"],
)
def test_upstream_handshake_failures(tls_refused, model, why):
    """Trident verifies T's certificate against server_name, and T requires Trident's client
    certificate: with either wrong, the call fails (UNAVAILABLE) instead of reaching T."""
    err = call_error(lambda: grpc_infer(tls_refused.grpc_client(), model, sample_inputs(model)))
    assert err.status() == "StatusCode.UNAVAILABLE", f"{why}: {describe_error(err)}"
    if model == "identity_tls":
        # Trident's own verification fails, so it can say why. (A missing client certificate
        # shows only later in TLS 1.3, as T closing the connection.)
        assert "certificate" in err.message(), f"{why}: {describe_error(err)}"
