"""Things tritonclient sends besides tensors: headers/metadata, request parameters, odd model
names, the other server-level APIs (shared-memory status, trace/log settings, repository
control errors) and errors inside a gRPC stream."""

import json

import numpy as np
import pytest

from helpers import (
    StreamCollector,
    assert_outputs_equal,
    assert_pb_equal,
    assert_same_error,
    call_error,
    describe_error,
    grpc_infer,
    grpc_inputs,
    http_infer,
    outputs_of,
    sample_inputs,
)

# serve_models.py sets --http/grpc-header-forward-pattern=^trident-fwd-.* ; "whoami" returns
# the request parameters (forwarded headers + client parameters) as JSON in PARAMS.
# Fresh dicts per call: tritonclient.http adds its own entries (e.g. an int
# Inference-Header-Content-Length) to the headers dict it is given.
def fwd_headers():
    return {"trident-fwd-token": "s3cr3t", "trident-fwd-tenant": "team-42", "x-not-forwarded": "nope"}


def request_params():
    return {"p_str": "v1", "p_int": 3, "p_bool": True}



def _params(result):
    return json.loads(result.as_numpy("PARAMS").reshape(-1)[0])


@pytest.mark.routing
def test_http_headers_and_parameters_pass_through(proxy, triton_b):
    x = sample_inputs("whoami")
    got = _params(http_infer(proxy.http_client(), "whoami", x, headers=fwd_headers(), parameters=request_params()))
    want = _params(http_infer(triton_b.http_client(), "whoami", x, headers=fwd_headers(), parameters=request_params()))
    assert want["trident-fwd-token"] == "s3cr3t", f"premise: Triton forwards headers: {want}"
    assert got == want, f"request parameters seen by the model: proxy {got} != direct {want}"


@pytest.mark.routing
def test_grpc_metadata_and_parameters_pass_through(proxy, triton_b):
    x = sample_inputs("whoami")
    got = _params(grpc_infer(proxy.grpc_client(), "whoami", x, headers=fwd_headers(), parameters=request_params()))
    want = _params(grpc_infer(triton_b.grpc_client(), "whoami", x, headers=fwd_headers(), parameters=request_params()))
    assert want["trident-fwd-token"] == "s3cr3t", f"premise: Triton forwards metadata: {want}"
    assert got == want, f"request parameters seen by the model: proxy {got} != direct {want}"


@pytest.mark.routing
def test_http_header_name_case_preserved(proxy, triton_b):
    """Triton matches forwarded header names case-sensitively; HTTP/1.1 header case must survive."""
    x = sample_inputs("whoami")
    got = _params(http_infer(proxy.http_client(), "whoami", x, headers={"Trident-Fwd-MixedCase": "v"}))
    want = _params(http_infer(triton_b.http_client(), "whoami", x, headers={"Trident-Fwd-MixedCase": "v"}))
    assert got == want, f"mixed-case header: proxy {got} != direct {want}"


@pytest.mark.routing
def test_grpc_stream_metadata_passes_through(proxy, triton_b):
    results = {}
    for name, ep in (("proxy", proxy), ("direct", triton_b)):
        c = ep.grpc_client()
        col = StreamCollector()
        c.start_stream(callback=col, headers=fwd_headers())
        try:
            c.async_stream_infer("whoami", grpc_inputs(sample_inputs("whoami")), request_id="s1", parameters=request_params())
            items = col.collect(lambda it: len(it) >= 1, f"stream whoami via {name}")
        finally:
            c.stop_stream()
            c.close()
        results[name] = _params(items[0])
    assert results["direct"].get("trident-fwd-token") == "s3cr3t", f"premise: {results['direct']}"
    assert results["proxy"] == results["direct"], f"stream: proxy {results['proxy']} != direct {results['direct']}"


# --------------------------------------------------------------------------- model names


@pytest.mark.routing
@pytest.mark.parametrize("version", ["", "1"], ids=["noversion", "v1"])
def test_dotted_model_name(proxy, triton_b, version):
    m = "dotted.model-b"
    x = sample_inputs(m)
    assert proxy.http_client().is_model_ready(m, model_version=version) is True
    assert proxy.grpc_client().is_model_ready(m, model_version=version) is True
    assert proxy.http_client().get_model_metadata(m, model_version=version) == triton_b.http_client().get_model_metadata(
        m, model_version=version
    )
    got = http_infer(proxy.http_client(), m, x, model_version=version)
    want = http_infer(triton_b.http_client(), m, x, model_version=version)
    assert_outputs_equal(outputs_of(got, ["OUTPUT"]), outputs_of(want, ["OUTPUT"]), f"HTTP {m}")
    got = grpc_infer(proxy.grpc_client(), m, x, model_version=version)
    want = grpc_infer(triton_b.grpc_client(), m, x, model_version=version)
    assert_outputs_equal(outputs_of(got, ["OUTPUT"]), outputs_of(want, ["OUTPUT"]), f"gRPC {m}")


# --------------------------------------------------------------------------- other server-level APIs


def test_http_other_server_apis(proxy, triton_a):
    p, d = proxy.http_client(), triton_a.http_client()
    assert p.get_system_shared_memory_status() == d.get_system_shared_memory_status()
    assert p.get_cuda_shared_memory_status() == d.get_cuda_shared_memory_status()
    assert p.get_trace_settings() == d.get_trace_settings()
    assert p.get_trace_settings(model_name="identity_fp32") == d.get_trace_settings(model_name="identity_fp32")
    assert p.get_log_settings() == d.get_log_settings()


def test_grpc_other_server_apis(proxy, triton_a):
    p, d = proxy.grpc_client(), triton_a.grpc_client()
    assert_pb_equal(p.get_system_shared_memory_status(), d.get_system_shared_memory_status(), "gRPC shm status")
    assert_pb_equal(p.get_cuda_shared_memory_status(), d.get_cuda_shared_memory_status(), "gRPC cuda shm status")
    assert_pb_equal(p.get_trace_settings(), d.get_trace_settings(), "gRPC trace settings")
    assert_pb_equal(
        p.get_trace_settings(model_name="identity_fp32"),
        d.get_trace_settings(model_name="identity_fp32"),
        "gRPC model trace settings",
    )
    assert_pb_equal(p.get_log_settings(), d.get_log_settings(), "gRPC log settings")


def test_http_repository_load_error(proxy, triton_a):
    """repo_marker_a is in A's repository but cannot load: Triton's error comes back unchanged."""
    want = call_error(lambda: triton_a.http_client().load_model("repo_marker_a"))
    got = call_error(lambda: proxy.http_client().load_model("repo_marker_a"))
    assert_same_error(got, want, "HTTP load_model(repo_marker_a)")


def test_grpc_repository_load_error(proxy, triton_a):
    want = call_error(lambda: triton_a.grpc_client().load_model("repo_marker_a"))
    got = call_error(lambda: proxy.grpc_client().load_model("repo_marker_a"))
    assert_same_error(got, want, "gRPC load_model(repo_marker_a)")


# --------------------------------------------------------------------------- errors inside a stream


def _stream_errors(endpoint, requests):
    """Send requests on one stream; return [(kind, text)] per callback in arrival order."""
    c = endpoint.grpc_client()
    q = StreamCollector()
    c.start_stream(callback=q)
    out = []
    try:
        for model, arrays, rid in requests:
            c.async_stream_infer(model, grpc_inputs(arrays), request_id=rid)
        while len(out) < len(requests):
            result, error = q.q.get(timeout=60)
            if error is not None:
                out.append(("error", error.message() if hasattr(error, "message") else describe_error(error)))
            else:
                out.append(("ok", result.get_response().id))
    finally:
        c.stop_stream()
        c.close()
    return out


def test_grpc_stream_in_stream_errors(proxy, direct):
    """Triton reports per-request errors inside the stream and keeps the stream open."""
    reqs = [
        ("identity_fp32", sample_inputs("identity_fp32"), "ok1"),
        ("identity_fp32", {"NOT_AN_INPUT": np.zeros((1, 4), dtype=np.float32)}, "bad-input"),
        ("identity_fp32", sample_inputs("identity_fp32", seed=2), "ok2"),
    ]
    want = _stream_errors(direct("identity_fp32"), reqs)
    got = _stream_errors(proxy, reqs)
    assert sorted(got) == sorted(want), f"stream with a bad request: proxy {got} != direct {want}"


def test_grpc_stream_unknown_model(proxy, triton_a):
    reqs = [("no_such_model_xyz", {"INPUT": np.zeros((1, 4), dtype=np.float32)}, "u1")]
    want = _stream_errors(triton_a, reqs)
    got = _stream_errors(proxy, reqs)
    assert got == want, f"stream to unknown model: proxy {got} != direct {want}"
