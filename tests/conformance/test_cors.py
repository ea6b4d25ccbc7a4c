"""CORS in front of real Triton (which has none), through the `guarded` Trident: its
`cors` filter runs before its API key filter. A preflight is answered by Trident; a
browser-shaped infer call gets Triton's answer plus the CORS headers."""

import json
import urllib.error
import urllib.request

from conftest import GUARDED_API_KEY, GUARDED_CORS_ORIGIN

INFER = "/v2/models/identity_fp32/infer"


def call(guarded, method, path, headers, body=None):
    """(status, headers, body) of a plain urllib call, errors included."""
    request = urllib.request.Request(
        f"http://{guarded.http}{path}", data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def test_preflight_is_answered_by_trident_without_credentials(guarded):
    status, headers, body = call(guarded, "OPTIONS", INFER, {
        "Origin": GUARDED_CORS_ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-api-key",
    })
    assert status == 204, body
    assert headers["access-control-allow-origin"] == GUARDED_CORS_ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert "x-api-key" in headers["access-control-allow-headers"]
    assert headers["access-control-max-age"] == "600"


def test_preflight_from_another_origin_is_refused(guarded):
    status, headers, _ = call(guarded, "OPTIONS", INFER, {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
    })
    assert status == 403
    assert headers.get("access-control-allow-origin") is None


def test_browser_shaped_infer_gets_tritons_answer_and_cors_headers(guarded):
    infer = json.dumps({"inputs": [
        {"name": "INPUT", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}).encode()
    browser = {"Origin": GUARDED_CORS_ORIGIN, "Content-Type": "application/json",
               "x-bucket": "cors"}
    status, headers, body = call(guarded, "POST", INFER, {**browser, "x-api-key": GUARDED_API_KEY},
                                 infer)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["model_name"] == "identity_fp32"
    assert answer["outputs"][0]["data"] == [1, 2, 3, 4]
    assert headers["access-control-allow-origin"] == GUARDED_CORS_ORIGIN
    assert "inference-header-content-length" in headers["access-control-expose-headers"]
    # Refused by the API key filter: the page can still read why.
    status, headers, body = call(guarded, "POST", INFER, browser, infer)
    assert status == 401
    assert headers["access-control-allow-origin"] == GUARDED_CORS_ORIGIN
    assert json.loads(body)["error"] == "missing API key in header 'x-api-key'"


def test_tritonclient_still_works_behind_the_cors_filter(guarded):
    key = {"x-api-key": GUARDED_API_KEY}
    assert guarded.http_client().is_server_live(headers=key)
    assert guarded.grpc_client().is_server_ready(headers=key)
