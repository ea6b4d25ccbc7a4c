"""Messages above gRPC's 4 MiB default and a 64 MiB request, both protocols."""

import numpy as np
import pytest

from helpers import assert_outputs_equal, grpc_infer, grpc_stream, http_infer, outputs_of

pytestmark = pytest.mark.large

MIB = 1024 * 1024


def _tensor(nbytes, seed):
    rng = np.random.default_rng(seed)
    return {"INPUT": rng.standard_normal((1, nbytes // 4), dtype=np.float32)}


def _check(got, want, arrays, what):
    assert_outputs_equal(outputs_of(got, ["OUTPUT"]), outputs_of(want, ["OUTPUT"]), what)
    assert np.array_equal(got.as_numpy("OUTPUT"), arrays["INPUT"]), f"{what}: identity output != input"


@pytest.mark.parametrize("size_mib", [8, 64])
def test_http_large_binary(proxy, direct, size_mib):
    arrays = _tensor(size_mib * MIB, seed=size_mib)
    got = http_infer(proxy.http_client(), "identity_fp32", arrays)
    want = http_infer(direct("identity_fp32").http_client(), "identity_fp32", arrays)
    _check(got, want, arrays, f"HTTP binary {size_mib} MiB")


def test_http_large_gzip(proxy, direct):
    arrays = {"INPUT": np.tile(np.arange(1024, dtype=np.float32), 2 * 1024).reshape(1, -1)}  # 8 MiB
    kw = {"request_compression_algorithm": "gzip", "response_compression_algorithm": "gzip"}
    got = http_infer(proxy.http_client(), "identity_fp32", arrays, **kw)
    want = http_infer(direct("identity_fp32").http_client(), "identity_fp32", arrays, **kw)
    _check(got, want, arrays, "HTTP binary 8 MiB gzip both ways")


@pytest.mark.parametrize("size_mib", [8, 64])
def test_grpc_large(proxy, direct, size_mib):
    arrays = _tensor(size_mib * MIB, seed=100 + size_mib)
    got = grpc_infer(proxy.grpc_client(), "identity_fp32", arrays)
    want = grpc_infer(direct("identity_fp32").grpc_client(), "identity_fp32", arrays)
    _check(got, want, arrays, f"gRPC {size_mib} MiB")


def test_grpc_stream_large(proxy, direct):
    reqs = [("identity_fp32", _tensor(8 * MIB, seed=200 + i), f"big{i}") for i in range(2)]
    got, _ = grpc_stream(proxy, reqs)
    want, _ = grpc_stream(direct("identity_fp32"), reqs)
    assert sorted(got) == sorted(want) == ["big0", "big1"], f"stream ids proxy {sorted(got)} direct {sorted(want)}"
    for rid in want:
        assert len(got[rid]) == 1
        assert_outputs_equal(got[rid][0], want[rid][0], f"gRPC stream 8 MiB {rid}")
