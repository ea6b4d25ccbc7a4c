"""gRPC bidirectional streaming (ModelStreamInfer): start_stream / async_stream_infer / stop_stream."""

import pytest

from helpers import assert_outputs_equal, grpc_stream, sample_inputs


def _compare(got, want, what):
    assert sorted(got) == sorted(want), f"{what}: response ids proxy {sorted(got)} != direct {sorted(want)}"
    for rid in sorted(want):
        assert len(got[rid]) == len(want[rid]), (
            f"{what}: request {rid}: {len(got[rid])} responses through proxy, {len(want[rid])} direct"
        )
        for k, (g, w) in enumerate(zip(got[rid], want[rid])):
            assert_outputs_equal(g, w, f"{what}: request {rid} response #{k}")


def test_grpc_stream_infer(proxy, direct):
    reqs = [("identity_fp32", sample_inputs("identity_fp32", seed=i), str(i)) for i in range(6)]
    got, got_order = grpc_stream(proxy, reqs)
    want, _ = grpc_stream(direct("identity_fp32"), reqs)
    assert sorted(got_order, key=int) == [str(i) for i in range(6)], f"one response per request id: {got_order}"
    _compare(got, want, "gRPC stream identity_fp32")


def test_grpc_stream_several_models_same_pool(proxy, direct):
    """One stream carrying requests for two models that live on the same Triton."""
    reqs = []
    for i in range(3):
        reqs.append(("identity_fp32", sample_inputs("identity_fp32", seed=i), f"id{i}"))
        reqs.append(("add_sub", sample_inputs("add_sub", seed=i), f"as{i}"))
    got, _ = grpc_stream(proxy, reqs)
    want, _ = grpc_stream(direct("identity_fp32"), reqs)
    _compare(got, want, "gRPC stream identity_fp32+add_sub")


def test_grpc_stream_decoupled(proxy, direct):
    """Decoupled model: several responses per request plus an empty final response."""
    reqs = [("repeat_decoupled", sample_inputs("repeat_decoupled", seed=i), f"d{i}") for i in range(3)]
    got, got_order = grpc_stream(proxy, reqs, decoupled=True)
    want, want_order = grpc_stream(direct("repeat_decoupled"), reqs, decoupled=True)
    assert len(got_order) == len(want_order), (
        f"decoupled stream: {len(got_order)} messages through proxy, {len(want_order)} direct"
    )
    _compare(got, want, "gRPC stream repeat_decoupled")
    assert all(len(v) == 3 for v in want.values()), f"direct decoupled answers unexpected: {want}"


@pytest.mark.parametrize("alg", ["gzip", "deflate"])
def test_grpc_stream_compression(proxy, direct, alg):
    reqs = [("identity_fp32", sample_inputs("identity_fp32", n=4096, seed=i), str(i)) for i in range(3)]
    got, _ = grpc_stream(proxy, reqs, compression_algorithm=alg)
    want, _ = grpc_stream(direct("identity_fp32"), reqs, compression_algorithm=alg)
    _compare(got, want, f"gRPC stream {alg}")


@pytest.mark.routing
def test_grpc_stream_to_pool_b(proxy, direct):
    """A stream whose requests are for a pool-b model reaches Triton B."""
    reqs = [("scale_b", sample_inputs("scale_b", seed=i), str(i)) for i in range(3)]
    got, _ = grpc_stream(proxy, reqs)
    want, _ = grpc_stream(direct("scale_b"), reqs)
    _compare(got, want, "gRPC stream scale_b")
