"""Two pools on two Triton processes behind one Trident endpoint: every call reaches the right one."""

import queue

import numpy as np
import pytest

from helpers import (
    GRPC_TIMEOUT_S,
    assert_outputs_equal,
    assert_pb_equal,
    call_error,
    grpc_infer,
    grpc_inputs,
    http_infer,
    outputs_of,
    sample_inputs,
)

pytestmark = pytest.mark.routing


def _whoami_http(client):
    return http_infer(client, "whoami", sample_inputs("whoami")).as_numpy("SERVER").reshape(-1)[0]


def _whoami_grpc(client):
    return grpc_infer(client, "whoami", sample_inputs("whoami")).as_numpy("SERVER").reshape(-1)[0]


def test_sanity_model_placement(triton_a, triton_b):
    """The premise: scale_b exists only on B, whoami answers differently on A and B."""
    assert triton_b.http_client().is_model_ready("scale_b") is True
    assert triton_a.http_client().is_model_ready("scale_b") is False
    assert triton_b.http_client().is_model_ready("identity_fp32") is False
    assert _whoami_http(triton_a.http_client()) == b"a"
    assert _whoami_http(triton_b.http_client()) == b"b"


def test_http_exact_route_to_b(proxy):
    assert _whoami_http(proxy.http_client()) == b"b", "HTTP whoami (routed to pool b) not answered by Triton B"


def test_grpc_exact_route_to_b(proxy):
    assert _whoami_grpc(proxy.grpc_client()) == b"b", "gRPC whoami (routed to pool b) not answered by Triton B"


@pytest.mark.parametrize("version", ["", "1"], ids=["noversion", "v1"])
def test_http_infer_a_and_b(proxy, triton_a, triton_b, version):
    c = proxy.http_client()
    a_in, b_in = sample_inputs("identity_fp32", seed=1), sample_inputs("scale_b", seed=2)
    a_got = http_infer(c, "identity_fp32", a_in, model_version=version)
    b_got = http_infer(c, "scale_b", b_in, model_version=version)
    a_want = http_infer(triton_a.http_client(), "identity_fp32", a_in, model_version=version)
    b_want = http_infer(triton_b.http_client(), "scale_b", b_in, model_version=version)
    assert_outputs_equal(outputs_of(a_got, ["OUTPUT"]), outputs_of(a_want, ["OUTPUT"]), "HTTP identity_fp32 (A)")
    assert_outputs_equal(outputs_of(b_got, ["OUTPUT"]), outputs_of(b_want, ["OUTPUT"]), "HTTP scale_b (B)")
    np.testing.assert_array_equal(b_got.as_numpy("OUTPUT"), b_in["INPUT"] * 2)


@pytest.mark.parametrize("version", ["", "1"], ids=["noversion", "v1"])
def test_grpc_infer_a_and_b(proxy, triton_a, triton_b, version):
    c = proxy.grpc_client()
    a_in, b_in = sample_inputs("identity_fp32", seed=3), sample_inputs("scale_b", seed=4)
    a_got = grpc_infer(c, "identity_fp32", a_in, model_version=version)
    b_got = grpc_infer(c, "scale_b", b_in, model_version=version)
    a_want = grpc_infer(triton_a.grpc_client(), "identity_fp32", a_in, model_version=version)
    b_want = grpc_infer(triton_b.grpc_client(), "scale_b", b_in, model_version=version)
    assert_outputs_equal(outputs_of(a_got, ["OUTPUT"]), outputs_of(a_want, ["OUTPUT"]), "gRPC identity_fp32 (A)")
    assert_outputs_equal(outputs_of(b_got, ["OUTPUT"]), outputs_of(b_want, ["OUTPUT"]), "gRPC scale_b (B)")
    np.testing.assert_array_equal(b_got.as_numpy("OUTPUT"), b_in["INPUT"] * 2)


def test_http_metadata_from_b(proxy, triton_a, triton_b):
    got = proxy.http_client().get_model_metadata("scale_b")
    assert got == triton_b.http_client().get_model_metadata("scale_b")
    assert proxy.http_client().get_model_config("whoami") == triton_b.http_client().get_model_config("whoami")
    # and A really does not know scale_b, so the answer cannot have come from A
    call_error(lambda: triton_a.http_client().get_model_metadata("scale_b"))


def test_grpc_metadata_from_b(proxy, triton_b):
    assert_pb_equal(
        proxy.grpc_client().get_model_metadata("scale_b"),
        triton_b.grpc_client().get_model_metadata("scale_b"),
        "gRPC scale_b metadata",
    )
    assert_pb_equal(
        proxy.grpc_client().get_model_config("whoami"),
        triton_b.grpc_client().get_model_config("whoami"),
        "gRPC whoami config",
    )


def test_server_level_calls_go_to_default_pool(proxy, triton_a, triton_b):
    assert proxy.http_client().get_server_metadata()["name"] == "triton-a"
    assert proxy.grpc_client().get_server_metadata().name == "triton-a"
    assert triton_b.http_client().get_server_metadata()["name"] == "triton-b"


def test_http_interleaved_on_one_connection(proxy):
    """Routing is per request, not per (keep-alive) connection."""
    c = proxy.http_client()
    for i in range(4):
        x = sample_inputs("identity_fp32", seed=10 + i)
        np.testing.assert_array_equal(http_infer(c, "identity_fp32", x).as_numpy("OUTPUT"), x["INPUT"])
        assert _whoami_http(c) == b"b", f"round {i}: whoami not from B"
        y = sample_inputs("scale_b", seed=20 + i)
        np.testing.assert_array_equal(http_infer(c, "scale_b", y).as_numpy("OUTPUT"), y["INPUT"] * 2)
        assert c.get_server_metadata()["name"] == "triton-a", f"round {i}: server metadata not from A"


def test_grpc_interleaved_on_one_channel(proxy):
    """Routing is per RPC, not per HTTP/2 connection."""
    c = proxy.grpc_client()
    for i in range(4):
        x = sample_inputs("identity_fp32", seed=30 + i)
        np.testing.assert_array_equal(grpc_infer(c, "identity_fp32", x).as_numpy("OUTPUT"), x["INPUT"])
        assert _whoami_grpc(c) == b"b", f"round {i}: whoami not from B"
        y = sample_inputs("scale_b", seed=40 + i)
        np.testing.assert_array_equal(grpc_infer(c, "scale_b", y).as_numpy("OUTPUT"), y["INPUT"] * 2)
        assert c.get_server_metadata().name == "triton-a", f"round {i}: server metadata not from A"


def test_grpc_concurrent_mixed_pools(proxy):
    """Concurrent calls to both pools multiplexed on one channel."""
    c = proxy.grpc_client()
    q = queue.Queue()
    expected = {}
    for i in range(12):
        model = ("identity_fp32", "scale_b", "whoami")[i % 3]
        x = sample_inputs(model, seed=50 + i)
        rid = f"{model}-{i}"
        expected[rid] = (model, x)
        c.async_infer(
            model,
            grpc_inputs(x),
            callback=lambda result, error: q.put((result, error)),
            request_id=rid,
            client_timeout=GRPC_TIMEOUT_S,
        )
    seen = set()
    for _ in expected:
        result, error = q.get(timeout=GRPC_TIMEOUT_S)
        assert error is None, f"concurrent mixed-pool call failed: {error}"
        rid = result.get_response().id
        model, x = expected[rid]
        seen.add(rid)
        if model == "identity_fp32":
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x["INPUT"])
        elif model == "scale_b":
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x["INPUT"] * 2)
        else:
            assert result.as_numpy("SERVER").reshape(-1)[0] == b"b", f"{rid} answered by A"
    assert seen == set(expected)


def test_http_concurrent_mixed_pools(proxy):
    import tritonclient.http as httpclient

    c = proxy.http_client(concurrency=4)
    pending = []
    for i in range(12):
        model = ("identity_fp32", "scale_b", "whoami")[i % 3]
        x = sample_inputs(model, seed=70 + i)
        inputs = []
        for name, arr in x.items():
            inp = httpclient.InferInput(name, list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        pending.append((model, x, c.async_infer(model, inputs, request_id=f"{model}-{i}")))
    for model, x, fut in pending:
        result = fut.get_result(timeout=60)
        if model == "identity_fp32":
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x["INPUT"])
        elif model == "scale_b":
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x["INPUT"] * 2)
        else:
            assert result.as_numpy("SERVER").reshape(-1)[0] == b"b", "whoami answered by A"
