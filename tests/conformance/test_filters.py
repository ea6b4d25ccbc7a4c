"""Filter denials reach tritonclient as its usual exceptions: HTTP status + Triton-style
JSON error, gRPC status codes. Runs against the `guarded` Trident (see conftest)."""

import numpy as np
import pytest

from conftest import GUARDED_API_KEY, GUARDED_BURST
from helpers import call_error, grpc_infer, http_infer

KEY = {"x-api-key": GUARDED_API_KEY}


def batch(n):
    return {"INPUT": np.ones((n, 4), dtype=np.float32)}


def test_http_without_key_is_401(guarded):
    assert guarded.http_client().is_server_live() is False
    err = call_error(lambda: http_infer(guarded.http_client(), "add_sub", {
        "INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.ones((1, 4), np.float32)}))
    assert (err.status(), err.message()) == ("401", "missing API key in header 'x-api-key'")
    err = call_error(lambda: http_infer(guarded.http_client(), "add_sub", {
        "INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.ones((1, 4), np.float32)},
        headers={"x-api-key": "wrong"}))
    assert (err.status(), err.message()) == ("401", "invalid API key")


def test_grpc_without_key_is_unauthenticated(guarded):
    err = call_error(lambda: guarded.grpc_client().get_server_metadata())
    assert (err.status(), err.message()) == (
        "StatusCode.UNAUTHENTICATED", "missing API key in header 'x-api-key'")


def test_with_key_everything_works(guarded):
    http = guarded.http_client()
    assert http.is_server_live(headers=KEY)
    assert http.get_model_metadata("add_sub", headers=KEY)["name"] == "add_sub"
    grpc = guarded.grpc_client()
    assert grpc.is_server_ready(headers=KEY)
    out = grpc_infer(grpc, "add_sub", {
        "INPUT0": np.ones((1, 4), np.float32), "INPUT1": np.ones((1, 4), np.float32)}, headers=KEY)
    np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), np.full((1, 4), 2, np.float32))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_batch_size_rate_limit(guarded, protocol):
    headers = {**KEY, "x-bucket": protocol}  # one bucket per protocol
    if protocol == "http":
        client, infer, refused = guarded.http_client(), http_infer, "429"
    else:
        client, infer, refused = guarded.grpc_client(), grpc_infer, "StatusCode.RESOURCE_EXHAUSTED"
    out = infer(client, "identity_fp32", batch(2), headers=headers)
    np.testing.assert_array_equal(out.as_numpy("OUTPUT"), batch(2)["INPUT"])
    # One token of the burst of 3 is left: a batch of 2 must wait...
    err = call_error(lambda: infer(client, "identity_fp32", batch(2), headers=headers))
    assert err.status() == refused
    assert err.message().startswith("rate limit exceeded: 2 token(s) available in "), err.message()
    # ...and a batch larger than the burst can never pass.
    err = call_error(lambda: infer(client, "identity_fp32", batch(GUARDED_BURST + 1), headers=headers))
    assert (err.status(), err.message()) == (
        refused, f"request costs {GUARDED_BURST + 1} tokens (its batch size), more than the rate limit's burst of {GUARDED_BURST}")
    infer(client, "identity_fp32", batch(1), headers=headers)
