"""Inference over HTTP (JSON, binary tensors, compression) and gRPC: proxy outputs == direct outputs."""

import gzip
import http.client
import json
import queue
import zlib

import numpy as np
import pytest

from helpers import (
    GRPC_TIMEOUT_S,
    OUTPUTS,
    assert_outputs_equal,
    grpc_infer,
    grpc_inputs,
    http_infer,
    outputs_of,
    sample_inputs,
)

INFER_MODELS = [
    "identity_fp32",
    "add_sub",
    "echo_bytes",
    pytest.param("whoami", marks=pytest.mark.routing),
    pytest.param("scale_b", marks=pytest.mark.routing),
]


def _both_http(proxy, direct, model, arrays, **kw):
    got = http_infer(proxy.http_client(), model, arrays, **kw)
    want = http_infer(direct(model).http_client(), model, arrays, **kw)
    return got, want


# --------------------------------------------------------------------------- HTTP


@pytest.mark.parametrize(
    "binary_in,binary_out",
    [(False, False), (True, True), (True, False), (False, True)],
    ids=["json", "binary", "binin-jsonout", "jsonin-binout"],
)
@pytest.mark.parametrize("model", INFER_MODELS)
def test_http_infer(proxy, direct, model, binary_in, binary_out):
    arrays = sample_inputs(model)
    got, want = _both_http(proxy, direct, model, arrays, binary_in=binary_in, binary_out=binary_out)
    names = OUTPUTS[model]
    assert_outputs_equal(outputs_of(got, names), outputs_of(want, names), f"HTTP infer {model}")
    g, w = got.get_response(), want.get_response()
    assert g == w, f"HTTP infer {model}: response header JSON differs: proxy {g} != direct {w}"


def test_http_infer_output_subset(proxy, direct):
    arrays = sample_inputs("add_sub")
    got, want = _both_http(proxy, direct, "add_sub", arrays, outputs=["OUTPUT1"])
    assert got.as_numpy("OUTPUT0") is None, "unrequested output OUTPUT0 came back through proxy"
    assert_outputs_equal(outputs_of(got, ["OUTPUT1"]), outputs_of(want, ["OUTPUT1"]), "HTTP add_sub OUTPUT1 only")
    np.testing.assert_array_equal(got.as_numpy("OUTPUT1"), arrays["INPUT0"] - arrays["INPUT1"])


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_request_id(proxy, direct, binary):
    arrays = sample_inputs("identity_fp32")
    got, want = _both_http(
        proxy, direct, "identity_fp32", arrays, binary_in=binary, binary_out=binary, request_id="abc"
    )
    assert want.get_response().get("id") == "abc"
    assert got.get_response().get("id") == "abc", f"request id through proxy: {got.get_response()}"


@pytest.mark.parametrize(
    "req_alg,resp_alg",
    [("gzip", "gzip"), ("deflate", "deflate"), ("gzip", None), (None, "deflate"), ("deflate", "gzip")],
    ids=["gzip", "deflate", "gzip-req-only", "deflate-resp-only", "deflate-req-gzip-resp"],
)
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_http_compression(proxy, direct, req_alg, resp_alg, binary):
    arrays = sample_inputs("add_sub", n=4096)
    got, want = _both_http(
        proxy,
        direct,
        "add_sub",
        arrays,
        binary_in=binary,
        binary_out=binary,
        request_compression_algorithm=req_alg,
        response_compression_algorithm=resp_alg,
    )
    assert_outputs_equal(
        outputs_of(got, OUTPUTS["add_sub"]),
        outputs_of(want, OUTPUTS["add_sub"]),
        f"HTTP add_sub compression req={req_alg} resp={resp_alg}",
    )


def test_http_async_infer_concurrency(proxy, direct):
    """Several in-flight requests on a pooled client (concurrency=4)."""
    import tritonclient.http as httpclient

    p = proxy.http_client(concurrency=4)
    d = direct("identity_fp32").http_client(concurrency=4)

    def submit(client, seed):
        arr = sample_inputs("identity_fp32", n=1000, seed=seed)["INPUT"]
        i = httpclient.InferInput("INPUT", list(arr.shape), "FP32")
        i.set_data_from_numpy(arr)
        return client.async_infer("identity_fp32", [i], request_id=f"r{seed}")

    pending = [(seed, submit(p, seed), submit(d, seed)) for seed in range(8)]
    for seed, pg, dg in pending:
        got, want = pg.get_result(timeout=60), dg.get_result(timeout=60)
        assert got.get_response()["id"] == f"r{seed}"
        assert_outputs_equal(outputs_of(got, ["OUTPUT"]), outputs_of(want, ["OUTPUT"]), f"async infer r{seed}")


# --------------------------------------------------------------------------- raw HTTP (wire level)


def _raw_post(hostport, path, body, headers):
    host, port = hostport.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _binary_request_body():
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    header = json.dumps(
        {
            "id": "raw-1",
            "inputs": [
                {"name": "INPUT", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": x.nbytes}}
            ],
            "outputs": [{"name": "OUTPUT", "parameters": {"binary_data": True}}],
        }
    ).encode()
    return header, header + x.tobytes()


def test_http_raw_binary_tensor_headers(proxy, direct):
    """Binary-tensor extension on the wire: Inference-Header-Content-Length and body bytes unchanged."""
    header, body = _binary_request_body()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}
    path = "/v2/models/identity_fp32/infer"
    g_status, g_hdrs, g_body = _raw_post(proxy.http, path, body, headers)
    w_status, w_hdrs, w_body = _raw_post(direct("identity_fp32").http, path, body, headers)
    assert w_status == 200, f"direct raw binary infer failed: {w_status} {w_body[:300]!r}"
    assert g_status == w_status, f"proxy status {g_status} != direct {w_status}: {g_body[:300]!r}"
    assert "inference-header-content-length" in g_hdrs, f"proxy dropped Inference-Header-Content-Length: {g_hdrs}"
    assert g_hdrs["inference-header-content-length"] == w_hdrs["inference-header-content-length"]
    assert g_body == w_body, "binary infer response body bytes differ between proxy and direct"


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_http_raw_response_encoding(proxy, direct, encoding):
    """Accept-Encoding is honoured end to end: same Content-Encoding, same decoded body."""
    body = json.dumps(
        {
            "id": "raw-2",
            "inputs": [{"name": "INPUT", "shape": [1, 512], "datatype": "FP32", "data": [float(i) for i in range(512)]}],
        }
    ).encode()
    path = "/v2/models/identity_fp32/infer"
    hdrs = {"Content-Type": "application/json", "Accept-Encoding": encoding}
    g_status, g_hdrs, g_body = _raw_post(proxy.http, path, body, hdrs)
    w_status, w_hdrs, w_body = _raw_post(direct("identity_fp32").http, path, body, hdrs)
    assert (g_status, w_status) == (200, 200), f"status proxy {g_status} direct {w_status}: {g_body[:300]!r}"
    assert g_hdrs.get("content-encoding") == w_hdrs.get("content-encoding") == encoding, (
        f"Content-Encoding proxy {g_hdrs.get('content-encoding')!r} direct {w_hdrs.get('content-encoding')!r}"
    )

    def decode(b):
        return gzip.decompress(b) if encoding == "gzip" else zlib.decompress(b)

    assert json.loads(decode(g_body)) == json.loads(decode(w_body))


def test_http_raw_request_encoding_gzip(proxy, direct):
    """A gzip Content-Encoding request body reaches Triton intact."""
    body = json.dumps(
        {"inputs": [{"name": "INPUT", "shape": [1, 8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}
    ).encode()
    hdrs = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    path = "/v2/models/identity_fp32/infer"
    g_status, _, g_body = _raw_post(proxy.http, path, gzip.compress(body), hdrs)
    w_status, _, w_body = _raw_post(direct("identity_fp32").http, path, gzip.compress(body), hdrs)
    assert (g_status, w_status) == (200, 200), f"status proxy {g_status} direct {w_status}: {g_body[:300]!r}"
    assert json.loads(g_body) == json.loads(w_body)


# --------------------------------------------------------------------------- gRPC


@pytest.mark.parametrize("model", INFER_MODELS)
def test_grpc_infer(proxy, direct, model):
    arrays = sample_inputs(model)
    got = grpc_infer(proxy.grpc_client(), model, arrays)
    want = grpc_infer(direct(model).grpc_client(), model, arrays)
    names = OUTPUTS[model]
    assert_outputs_equal(outputs_of(got, names), outputs_of(want, names), f"gRPC infer {model}")
    g, w = got.get_response(), want.get_response()
    assert (g.model_name, g.model_version) == (w.model_name, w.model_version)
    assert [(o.name, o.datatype, list(o.shape)) for o in g.outputs] == [
        (o.name, o.datatype, list(o.shape)) for o in w.outputs
    ]


def test_grpc_request_id(proxy, direct):
    arrays = sample_inputs("identity_fp32")
    got = grpc_infer(proxy.grpc_client(), "identity_fp32", arrays, request_id="abc")
    want = grpc_infer(direct("identity_fp32").grpc_client(), "identity_fp32", arrays, request_id="abc")
    assert want.get_response().id == "abc"
    assert got.get_response().id == "abc", f"gRPC request id through proxy: {got.get_response().id!r}"


@pytest.mark.parametrize("alg", ["gzip", "deflate"])
def test_grpc_compression(proxy, direct, alg):
    arrays = sample_inputs("add_sub", n=4096)
    got = grpc_infer(proxy.grpc_client(), "add_sub", arrays, compression_algorithm=alg)
    want = grpc_infer(direct("add_sub").grpc_client(), "add_sub", arrays, compression_algorithm=alg)
    assert_outputs_equal(
        outputs_of(got, OUTPUTS["add_sub"]), outputs_of(want, OUTPUTS["add_sub"]), f"gRPC add_sub {alg}"
    )


def test_grpc_async_infer(proxy, direct):
    """Several concurrent unary calls multiplexed on one channel."""
    results = {"proxy": queue.Queue(), "direct": queue.Queue()}
    clients = {"proxy": proxy.grpc_client(), "direct": direct("identity_fp32").grpc_client()}
    n = 8
    for seed in range(n):
        arrays = sample_inputs("identity_fp32", n=1000, seed=seed)
        for side, client in clients.items():
            client.async_infer(
                "identity_fp32",
                grpc_inputs(arrays),
                callback=lambda result, error, q=results[side]: q.put((result, error)),
                request_id=f"r{seed}",
                client_timeout=GRPC_TIMEOUT_S,
            )
    collected = {}
    for side, q in results.items():
        collected[side] = {}
        for _ in range(n):
            result, error = q.get(timeout=GRPC_TIMEOUT_S)
            assert error is None, f"gRPC async_infer via {side}: {error}"
            collected[side][result.get_response().id] = outputs_of(result, ["OUTPUT"])
    assert sorted(collected["proxy"]) == sorted(collected["direct"]) == sorted(f"r{s}" for s in range(n))
    for rid, want in collected["direct"].items():
        assert_outputs_equal(collected["proxy"][rid], want, f"gRPC async_infer {rid}")


def test_grpc_infer_with_parameters(proxy, direct):
    """Custom request parameters are carried (Triton ignores unknown ones for Python models)."""
    arrays = sample_inputs("identity_fp32")
    kw = {"parameters": {"trident_test": "yes", "n": 3}}
    got = grpc_infer(proxy.grpc_client(), "identity_fp32", arrays, **kw)
    want = grpc_infer(direct("identity_fp32").grpc_client(), "identity_fp32", arrays, **kw)
    assert_outputs_equal(outputs_of(got, ["OUTPUT"]), outputs_of(want, ["OUTPUT"]), "gRPC infer with parameters")

