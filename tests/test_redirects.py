"""No redirect names a host the client chose: a trailing slash, with any Host header, is the coded
404 of any unknown path, never a 307 to `http://<Host>/...`, and it is answered before authentication
has anything to say about it."""

from __future__ import annotations

import hashlib

import httpx
import pytest

from tests.test_errors import CHAT, assert_coded_error

KEY = "wg-redirect-test-key"
HOSTILE_HOST = "evil.example"


@pytest.fixture(scope="module")
def keyed_gateway(start_gateway, upstream, tmp_path_factory):
    config = tmp_path_factory.mktemp("redirects") / "wardgate.yaml"
    config.write_text(f"api_keys:\n  - {{id: ci, tenant: acme, sha256: {hashlib.sha256(KEY.encode()).hexdigest()}}}\n")
    return start_gateway("--config", str(config), "--upstream", upstream.url)


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/v1/chat/completions/"),
    ("POST", "/v1/completions/"),
    ("GET", "/v1/models/"),
    ("GET", "/healthz/"),
    ("GET", "/admin/audit/"),
])
@pytest.mark.parametrize("authorized", [False, True])
def test_a_trailing_slash_is_not_redirected_to_the_clients_host(keyed_gateway, method, path, authorized):
    headers = {"Host": HOSTILE_HOST, **({"Authorization": f"Bearer {KEY}"} if authorized else {})}
    response = httpx.request(method, keyed_gateway.url + path, json=CHAT if method == "POST" else None,
                             headers=headers, follow_redirects=False, timeout=30)
    assert "location" not in response.headers
    assert_coded_error(response, "WG4005")
    assert HOSTILE_HOST not in response.text
