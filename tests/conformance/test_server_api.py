"""Health, metadata, config, repository index and statistics: proxy answer == direct answer."""

import pytest

from helpers import assert_pb_equal

# Models routed to pool "b" need Trident's routing (skipped in SELFTEST mode).
ALL_MODELS = [
    "identity_fp32",
    "add_sub",
    "echo_bytes",
    "repeat_decoupled",
    pytest.param("whoami", marks=pytest.mark.routing),
    pytest.param("scale_b", marks=pytest.mark.routing),
]


# --------------------------------------------------------------------------- HTTP


def test_http_server_live_ready(proxy, triton_a):
    p, d = proxy.http_client(), triton_a.http_client()
    assert d.is_server_live() is True and d.is_server_ready() is True, "direct Triton A not live/ready"
    assert p.is_server_live() is True, "is_server_live through Trident is not True"
    assert p.is_server_ready() is True, "is_server_ready through Trident is not True"


def test_http_server_metadata(proxy, triton_a):
    got = proxy.http_client().get_server_metadata()
    want = triton_a.http_client().get_server_metadata()
    assert got == want, f"server metadata through proxy {got} != direct Triton A (default route) {want}"
    assert got["name"] == "triton-a", f"server-level call not answered by Triton A: {got}"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_http_model_ready(proxy, direct, model):
    assert direct(model).http_client().is_model_ready(model) is True
    assert proxy.http_client().is_model_ready(model) is True, f"is_model_ready({model}) through proxy is not True"
    assert proxy.http_client().is_model_ready(model, model_version="1") is True


@pytest.mark.parametrize("version", ["", "1"], ids=["noversion", "v1"])
@pytest.mark.parametrize("model", ALL_MODELS)
def test_http_model_metadata(proxy, direct, model, version):
    got = proxy.http_client().get_model_metadata(model, model_version=version)
    want = direct(model).http_client().get_model_metadata(model, model_version=version)
    assert got == want, f"model metadata {model} v{version!r}: proxy {got} != direct {want}"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_http_model_config(proxy, direct, model):
    got = proxy.http_client().get_model_config(model)
    want = direct(model).http_client().get_model_config(model)
    assert got == want, f"model config {model}: proxy {got} != direct {want}"


def test_http_repository_index(proxy, triton_a):
    got = proxy.http_client().get_model_repository_index()
    want = triton_a.http_client().get_model_repository_index()
    assert got == want, f"repository index: proxy {got} != direct Triton A (default route) {want}"
    assert {"name": "repo_marker_a"} in got, f"repository index not from Triton A: {got}"


def _http_stats_shape(stats):
    return sorted(
        (s["name"], s["version"], tuple(sorted(s)), tuple(sorted(s.get("inference_stats", {}))))
        for s in stats["model_stats"]
    )


def test_http_inference_statistics_all(proxy, triton_a):
    got = proxy.http_client().get_inference_statistics()
    want = triton_a.http_client().get_inference_statistics()
    assert _http_stats_shape(got) == _http_stats_shape(want), (
        f"statistics (all models) structure differs: proxy {_http_stats_shape(got)} "
        f"!= direct A {_http_stats_shape(want)}"
    )


@pytest.mark.parametrize("model", ALL_MODELS)
def test_http_inference_statistics_model(proxy, direct, model):
    got = proxy.http_client().get_inference_statistics(model)
    want = direct(model).http_client().get_inference_statistics(model)
    assert _http_stats_shape(got) == _http_stats_shape(want), (
        f"statistics {model}: proxy {_http_stats_shape(got)} != direct {_http_stats_shape(want)}"
    )
    assert [s["name"] for s in got["model_stats"]] == [model]


# --------------------------------------------------------------------------- gRPC


def test_grpc_server_live_ready(proxy, triton_a):
    p, d = proxy.grpc_client(), triton_a.grpc_client()
    assert d.is_server_live() is True and d.is_server_ready() is True, "direct Triton A not live/ready"
    assert p.is_server_live() is True, "gRPC is_server_live through Trident is not True"
    assert p.is_server_ready() is True, "gRPC is_server_ready through Trident is not True"


def test_grpc_server_metadata(proxy, triton_a):
    got = proxy.grpc_client().get_server_metadata()
    want = triton_a.grpc_client().get_server_metadata()
    assert_pb_equal(got, want, "gRPC server metadata (default route -> A)")
    assert got.name == "triton-a"


@pytest.mark.parametrize("model", ALL_MODELS)
def test_grpc_model_ready(proxy, direct, model):
    assert direct(model).grpc_client().is_model_ready(model) is True
    assert proxy.grpc_client().is_model_ready(model) is True, f"gRPC is_model_ready({model}) through proxy not True"
    assert proxy.grpc_client().is_model_ready(model, model_version="1") is True


@pytest.mark.parametrize("version", ["", "1"], ids=["noversion", "v1"])
@pytest.mark.parametrize("model", ALL_MODELS)
def test_grpc_model_metadata(proxy, direct, model, version):
    got = proxy.grpc_client().get_model_metadata(model, model_version=version)
    want = direct(model).grpc_client().get_model_metadata(model, model_version=version)
    assert_pb_equal(got, want, f"gRPC model metadata {model} v{version!r}")


@pytest.mark.parametrize("model", ALL_MODELS)
def test_grpc_model_config(proxy, direct, model):
    got = proxy.grpc_client().get_model_config(model)
    want = direct(model).grpc_client().get_model_config(model)
    assert_pb_equal(got, want, f"gRPC model config {model}")


def test_grpc_repository_index(proxy, triton_a):
    got = proxy.grpc_client().get_model_repository_index()
    want = triton_a.grpc_client().get_model_repository_index()
    assert_pb_equal(got, want, "gRPC repository index (default route -> A)")
    assert "repo_marker_a" in [m.name for m in got.models]


def _grpc_stats_shape(stats):
    return sorted((s.name, s.version) for s in stats.model_stats)


def test_grpc_inference_statistics_all(proxy, triton_a):
    got = proxy.grpc_client().get_inference_statistics()
    want = triton_a.grpc_client().get_inference_statistics()
    assert type(got) is type(want)
    assert _grpc_stats_shape(got) == _grpc_stats_shape(want), (
        f"gRPC statistics (all): proxy {_grpc_stats_shape(got)} != direct A {_grpc_stats_shape(want)}"
    )


@pytest.mark.parametrize("model", ALL_MODELS)
def test_grpc_inference_statistics_model(proxy, direct, model):
    got = proxy.grpc_client().get_inference_statistics(model)
    want = direct(model).grpc_client().get_inference_statistics(model)
    assert _grpc_stats_shape(got) == _grpc_stats_shape(want) == [(model, "1")], (
        f"gRPC statistics {model}: proxy {_grpc_stats_shape(got)} != direct {_grpc_stats_shape(want)}"
    )
