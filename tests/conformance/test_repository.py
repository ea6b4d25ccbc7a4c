"""Model repository calls across a pool: a Trident whose pool "ab" holds Triton A and
Triton B sends load / unload to both and merges their repository index.

The models used live in the Tritons' own repositories and are not loaded at start
(serve_models.py: "repo_identity" on A and B, "repo_only_b" on B); every test leaves
them unloaded again, so the other tests see the servers as they started."""

import time

import pytest
from tritonclient.utils import InferenceServerException

BOTH = "repo_identity"
ONLY_B = "repo_only_b"
# Triton unloads in the background: the longest to wait for a model to go.
UNLOAD_WAIT_S = 30.0


@pytest.fixture
def unloaded_after(tritons):
    yield
    for srv in tritons.values():
        client = srv.http_client()
        for model in (BOTH, ONLY_B):
            try:
                client.unload_model(model)
            except InferenceServerException:
                pass


def wait_unready(srv, model):
    client = srv.http_client()
    deadline = time.monotonic() + UNLOAD_WAIT_S
    while client.is_model_ready(model):
        assert time.monotonic() < deadline, f"{model} still ready on {srv.name}"
        time.sleep(0.2)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_load_and_unload_reach_every_triton_of_the_pool(repo_trident, tritons, protocol, unloaded_after):
    client = getattr(repo_trident, f"{protocol}_client")()
    client.load_model(BOTH)
    for srv in tritons.values():
        assert srv.http_client().is_model_ready(BOTH), f"{BOTH} not loaded on {srv.name}"
    assert client.is_model_ready(BOTH)
    client.unload_model(BOTH)
    for srv in tritons.values():
        wait_unready(srv, BOTH)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_model_missing_on_one_triton_names_it(repo_trident, tritons, protocol, unloaded_after):
    client = getattr(repo_trident, f"{protocol}_client")()
    with pytest.raises(InferenceServerException) as raised:
        client.load_model(ONLY_B)
    message = str(raised.value)
    a, b = tritons["a"], tritons["b"]
    a_address, b_address = (a.http, b.http) if protocol == "http" else (a.grpc, b.grpc)
    assert f"load of model '{ONLY_B}' failed on 1 of 2 endpoints of pool 'ab'" in message, message
    assert f"{a_address}: " in message, message
    assert b_address not in message, message
    # Where the model is, it was loaded.
    assert b.http_client().is_model_ready(ONLY_B)


def test_the_index_merges_both_tritons(repo_trident, tritons):
    index = repo_trident.http_client().get_model_repository_index()
    by_name = {entry["name"]: entry for entry in index}
    # Each server's marker (never loaded: no state) is missing on the other.
    a, b = tritons["a"], tritons["b"]
    marker_a = by_name["repo_marker_a"]
    assert marker_a["state"] == "UNAVAILABLE", marker_a
    assert marker_a["reason"] == f"{a.http}: not loaded; {b.http}: UNAVAILABLE (not in its index)", marker_a
    assert "repo_marker_b" in by_name
    # Listed alike by both (present, not loaded): as Triton lists it.
    direct = {e["name"]: e for e in tritons["a"].http_client().get_model_repository_index()}
    assert by_name[BOTH] == direct[BOTH]
