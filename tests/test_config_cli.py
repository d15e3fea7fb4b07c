"""Settings layering and the command line, run as a user runs them."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_settings
from gateway.errors import render_markdown
from tests.conftest import WARDGATE


def run_cli(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([WARDGATE, *args], input=stdin, capture_output=True, text=True, timeout=30, env=env)


def test_layers_file_then_environment_then_command_line(tmp_path: Path, monkeypatch):
    config = tmp_path / "wardgate.yaml"
    config.write_text("port: 9001\nmax_queue: 7\nupstream: http://file:1\nread_timeout_s: 11\n")
    monkeypatch.setenv("WARDGATE_MAX_QUEUE", "8")
    monkeypatch.setenv("WARDGATE_UPSTREAM", "http://env:2")
    settings = load_settings(config, upstream="http://cli:3/v1/", port=None)
    assert settings.port == 9001  # file (the command line did not give it)
    assert settings.max_queue == 8  # environment beats file
    assert settings.upstream == "http://cli:3"  # command line beats both; a trailing /v1 is dropped
    assert settings.read_timeout_s == 11
    assert settings.max_body_bytes == 1024 * 1024  # default


def test_api_keys_from_environment_as_json(monkeypatch):
    digest = hashlib.sha256(b"k").hexdigest()
    monkeypatch.setenv("WARDGATE_API_KEYS", f'[{{"id": "a", "tenant": "t", "sha256": "{digest}"}}]')
    assert load_settings().api_keys[0].tenant == "t"


def test_config_error_names_file_line_and_field(tmp_path: Path):
    config = tmp_path / "bad.yaml"
    config.write_text("host: 0.0.0.0\nport: eighty\nmax_body_byts: 5\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    message = str(raised.value)
    assert f"{config}:2: port:" in message
    assert f"{config}:3: max_body_byts: unknown setting" in message


def test_plain_key_instead_of_hash_is_refused(tmp_path: Path):
    config = tmp_path / "keys.yaml"
    config.write_text("api_keys:\n  - {id: a, tenant: t, sha256: my-secret-key}\n")
    with pytest.raises(ConfigError, match="api_keys.0.sha256: .*64 hex characters"):
        load_settings(config)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("port: [1, 2\n", ":2:1: invalid YAML"),
        ("- just\n- a list\n", "must be a mapping"),
        (b"port: \xff\n", "cannot read config file"),
    ],
)
def test_serve_with_broken_config_exits_with_a_clear_message(tmp_path: Path, content, expected):
    config = tmp_path / "broken.yaml"
    config.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run_cli("serve", "--config", str(config))
    assert result.returncode == 2
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_rejects_bad_option_values():
    result = run_cli("serve", "--upstream", "ftp://model")
    assert result.returncode == 2
    assert "upstream: Value error, must be an http:// or https:// URL" in result.stderr


def test_keys_hash_reads_stdin():
    result = run_cli("keys", "hash", stdin="wg-secret\n")
    assert result.returncode == 0
    assert result.stdout.strip() == hashlib.sha256(b"wg-secret").hexdigest()


def test_keys_new_prints_a_config_entry_that_matches_the_key():
    result = run_cli("keys", "new", "--tenant", "acme", "--id", "ci")
    assert result.returncode == 0
    key = result.stderr.split(": ")[-1].strip()
    assert hashlib.sha256(key.encode()).hexdigest() in result.stdout
    assert "tenant: acme" in result.stdout


def test_errors_markdown_command_prints_the_catalogue():
    assert run_cli("errors", "--markdown").stdout == render_markdown()


def test_workers_get_the_resolved_settings(tmp_path: Path, start_gateway, upstream, client):
    """With --workers, uvicorn imports gateway.asgi in each worker: file, env and command-line
    values must all reach it."""
    config = tmp_path / "wardgate.yaml"
    config.write_text(f"api_keys:\n  - {{id: w, tenant: workers, sha256: {hashlib.sha256(b'wk').hexdigest()}}}\n")
    gateway = start_gateway("--config", str(config), "--upstream", upstream.url, "--workers", "2",
                            "--max-body-bytes", "300")
    url = gateway.url + "/v1/chat/completions"
    body = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
    assert client.post(url, json=body).status_code == 401
    assert client.post(url, json=body, headers={"Authorization": "Bearer wk"}).status_code == 200
    big = {"model": "echo", "messages": [{"role": "user", "content": "x" * 400}]}
    assert client.post(url, json=big, headers={"Authorization": "Bearer wk"}).status_code == 413
