"""Trident's own admin listener (not a Triton API): /ready and /metrics answer."""

import urllib.request

import pytest

pytestmark = pytest.mark.admin


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read().decode(errors="replace")


def test_admin_ready(proxy):
    status, _, _ = _get(f"http://{proxy.admin}/ready")
    assert status == 200


def test_admin_metrics(proxy):
    # make sure at least one proxied request happened
    assert proxy.http_client().is_server_live()
    status, ctype, body = _get(f"http://{proxy.admin}/metrics")
    assert status == 200, f"/metrics status {status}"
    assert body.strip(), "/metrics body is empty"
    assert "# TYPE" in body or "# HELP" in body, f"/metrics is not Prometheus text: {body[:300]!r}"
