"""Mirrors and splits against real Triton answers (see `canary` in conftest): a mirror
to the same server agrees with the primary on every representation tritonclient uses;
a mirror to another server does not; a header split reaches B at a rewritten version."""

import time
import urllib.request

import numpy as np

from helpers import grpc_infer, http_infer, sample_inputs


def metric(server, series):
    text = urllib.request.urlopen(f"http://{server.admin}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def wait_metric(server, series, value, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metric(server, series) >= value:
            return True
        time.sleep(0.05)
    return False


def comparisons(model, result, version="1"):
    return (f'trident_mirror_comparisons_total{{model="{model}",result="{result}",'
            f'route="{model}",version="{version}"}}')


def test_mirrors_of_the_same_triton_agree(canary):
    http, grpc = canary.http_client(), canary.grpc_client()
    for model in ["add_sub", "echo_bytes"]:
        inputs = sample_inputs(model)
        http_infer(http, model, inputs)  # binary tensors both ways
        http_infer(http, model, inputs, binary_in=False, binary_out=False)  # JSON
        grpc_infer(grpc, model, inputs)
        assert wait_metric(canary, comparisons(model, "match"), 3), model
        assert metric(canary, comparisons(model, "mismatch")) == 0, model
        assert metric(canary, comparisons(model, "error", "-")) == 0, model


def test_a_mirror_to_another_server_disagrees(canary):
    inputs = sample_inputs("whoami")
    got = http_infer(canary.http_client(), "whoami", inputs).as_numpy("SERVER").reshape(-1)[0]
    assert got == b"a", "the primary answers"
    got = grpc_infer(canary.grpc_client(), "whoami", inputs).as_numpy("SERVER").reshape(-1)[0]
    assert got == b"a"
    assert wait_metric(canary, comparisons("whoami", "mismatch"), 2)


def test_a_header_split_reaches_the_other_side_at_its_version(canary):
    inputs = sample_inputs("whoami")
    # tritonclient adds its own headers to the dict it is given: a fresh one per call.
    http = http_infer(canary.http_client(), "whoami", inputs, headers={"x-to-b": "1"})
    assert http.as_numpy("SERVER").reshape(-1)[0] == b"b"
    assert http.get_response()["model_version"] == "1"
    grpc = grpc_infer(canary.grpc_client(), "whoami", inputs, headers={"x-to-b": "1"})
    assert grpc.as_numpy("SERVER").reshape(-1)[0] == b"b"
    assert grpc.get_response().model_version == "1"
    plain = http_infer(canary.http_client(), "whoami", inputs)
    assert plain.as_numpy("SERVER").reshape(-1)[0] == b"a"
    assert np.array_equal(plain.as_numpy("PARAMS").shape, http.as_numpy("PARAMS").shape)
