"""Browser safety and the API key (hearth/server/security.py), attack by attack.

In-process tests drive build_app over a fake engine (tests/fake_engine.py); the last ones start real `hearth serve`
processes on a tiny GGUF to check what the command line wires up: the key from a file or the environment, never
in the process's argv, and the Host and content-type checks on by default.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from fake_engine import FakeEngine
from hearth.errors import HearthError
from hearth.server.app import build_app
from hearth.server.security import allowed_hosts_for
from serve_kit import free_port
from store_kit import write_tiny_gguf

CHAT = "/v1/chat/completions"
BODY = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 2}
KEY = "s3cret-key-for-tests"
ORIGIN = "http://evil.example"


def server(bind: str = "127.0.0.1", extra_hosts=(), **kw) -> tuple[FakeEngine, TestClient]:
    engine = FakeEngine()
    app = build_app(engine, served_model_name="tiny-model", allowed_hosts=allowed_hosts_for(bind, extra_hosts), **kw)
    return engine, TestClient(app, base_url="http://127.0.0.1:8000")


def assert_error(r: httpx.Response, status: int, contains: str = "") -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert contains.lower() in body["error"]["message"].lower(), body
    return body["error"]


# ------------------------------------------------------------------------------------ simple cross-origin POSTs


@pytest.mark.parametrize("content_type", [
    "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    None,
])
def test_a_post_that_is_not_json_is_refused_and_runs_nothing(content_type):
    # What a web page can send cross-origin without a preflight: the JSON is a valid request, only the type differs.
    engine, client = server()
    headers = {"origin": ORIGIN} | ({"content-type": content_type} if content_type else {})
    r = client.post(CHAT, content=json.dumps(BODY), headers=headers)
    assert_error(r, 415, "application/json")
    assert engine.requests == [], "the generation ran"
    assert "access-control-allow-origin" not in r.headers
    assert 'hearth_requests_total{endpoint="/v1/chat/completions",status="415"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8"])
def test_json_posts_work_with_or_without_charset(content_type):
    engine, client = server()
    r = client.post(CHAT, content=json.dumps(BODY), headers={"content-type": content_type})
    assert r.status_code == 200, r.text
    assert len(engine.requests) == 1


def test_the_official_clients_send_what_the_server_takes():
    import openai

    engine, client = server()
    sdk = openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x", http_client=client, max_retries=0)
    assert sdk.chat.completions.create(model="tiny-model", messages=BODY["messages"], max_tokens=2).choices
    assert sdk.completions.create(model="tiny-model", prompt="hi", max_tokens=2).choices
    assert client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}).status_code == 200  # httpx json=
    assert len(engine.requests) == 3


# ------------------------------------------------------------------------------------------------ DNS rebinding


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "[::1", "localhost:http"])
def test_a_foreign_host_is_refused(host):
    engine, client = server()
    assert_error(client.post(CHAT, json=BODY, headers={"host": host}), 421, "--allowed-host")
    assert_error(client.get("/v1/models", headers={"host": host}), 421)
    assert engine.requests == []


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "app.localhost",
                                  "192.168.1.20:8000"])
def test_the_servers_own_names_and_any_address_pass(host):
    # An IP address cannot be rebound: a page whose origin is that address was served by this server.
    _, client = server()
    assert client.post(CHAT, json=BODY, headers={"host": host}).status_code == 200


def test_allowed_host_names_a_proxy_and_star_turns_the_check_off():
    _, client = server(extra_hosts=["llm.corp.example:443", "*.apps.example"])
    for host in ("llm.corp.example", "llm.corp.example:443", "x.apps.example"):
        assert client.get("/v1/models", headers={"host": host}).status_code == 200, host
    for host in ("corp.example", "apps.example", "x.apps.example.evil"):
        assert_error(client.get("/v1/models", headers={"host": host}), 421)
    _, anything = server(extra_hosts=["*"])
    assert anything.get("/v1/models", headers={"host": "evil.example"}).status_code == 200


def test_allowed_hosts_follow_the_bind_address():
    import socket

    assert allowed_hosts_for("127.0.0.1") == ("localhost",)
    assert "myhost.lan" in allowed_hosts_for("myhost.lan")
    everywhere = allowed_hosts_for("0.0.0.0")
    assert socket.gethostname().lower() in everywhere and "evil.example" not in everywhere


# --------------------------------------------------------------------------------------------------------- CORS


def test_cors_is_off_by_default():
    _, client = server()
    pre = client.options(CHAT, headers={"origin": ORIGIN, "access-control-request-method": "POST",
                                        "access-control-request-headers": "content-type"})
    assert "access-control-allow-origin" not in pre.headers
    r = client.post(CHAT, json=BODY, headers={"origin": ORIGIN})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origin_lets_one_origin_in():
    app_origin = "https://app.example"
    _, client = server(cors_origins=[app_origin])
    pre = client.options(CHAT, headers={"origin": app_origin, "access-control-request-method": "POST",
                                        "access-control-request-headers": "content-type,authorization"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == app_origin
    r = client.post(CHAT, json=BODY, headers={"origin": app_origin})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == app_origin
    other = client.options(CHAT, headers={"origin": ORIGIN, "access-control-request-method": "POST"})
    assert other.headers.get("access-control-allow-origin") != ORIGIN


# ------------------------------------------------------------------------------------------------ /docs offline


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_load_nothing_from_the_internet(page):
    _, client = server()
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    assert not re.findall(r"(?:https?:)?//[\w.-]+", html.text.replace("http://127.0.0.1:8000", "")), html.text
    assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    assert any(a.endswith(".js") for a in assets), html.text
    for asset in assets:
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 1000, asset
    if page == "/docs":
        assert '"validatorUrl": null' in html.text  # else Swagger UI sends the schema to validator.swagger.io


# ------------------------------------------------------------------------------------------------------ the key


DESCRIBING = ["/metrics", "/openapi.json", "/docs", "/redoc", "/docs/static/swagger-ui.css"]


def test_with_a_key_metrics_and_docs_need_it_and_health_does_not():
    _, client = server(api_key=KEY)
    ok = {"Authorization": f"Bearer {KEY}"}
    for path in DESCRIBING:
        assert_error(client.get(path), 401, "api key")
        assert_error(client.get(path, headers={"Authorization": "Bearer wrong"}), 401, "invalid")
        assert client.get(path, headers=ok).status_code == 200, path
    assert client.get("/health").status_code == 200
    assert_error(client.post(CHAT, json=BODY), 401)


def test_public_metrics_opens_metrics_and_docs_but_not_the_api():
    _, client = server(api_key=KEY, public_metrics=True)
    for path in DESCRIBING:
        assert client.get(path).status_code == 200, path
    assert_error(client.post(CHAT, json=BODY), 401)
    assert_error(client.get("/v1/models"), 401)


def test_api_key_sources(tmp_path, caplog):
    from hearth.cli.serve import _api_key

    log = logging.getLogger("test-key")
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert _api_key(None, key_file, None, log) == KEY
    assert _api_key(None, key_file, "from-env", log) == KEY
    assert _api_key(None, None, "from-env", log) == "from-env"
    assert _api_key(None, None, None, log) is None
    with caplog.at_level(logging.WARNING, logger="test-key"):
        assert _api_key("on-the-command-line", None, "from-env", log) == "on-the-command-line"
    assert "process list" in caplog.text and "on-the-command-line" not in caplog.text
    with pytest.raises(HearthError, match="not both"):
        _api_key("a", key_file, None, log)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(HearthError, match="empty"):
        _api_key(None, tmp_path / "empty", None, log)
    with pytest.raises(HearthError, match="cannot read"):
        _api_key(None, tmp_path / "missing", None, log)


# ------------------------------------------------------------------------------------------ real `hearth serve`


def _start(tmp: Path, model: Path, *args: str, env_key: str | None = None):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HEARTH_HOME=str(tmp / "home"))
    env.pop("HEARTH_API_KEY", None)
    if env_key is not None:
        env["HEARTH_API_KEY"] = env_key
    log = open(tmp / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "hearth.cli", "serve", str(model), "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    return proc, f"http://127.0.0.1:{port}", log


@pytest.fixture(scope="module")
def keyed_servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    model = write_tiny_gguf(tmp / "tiny.gguf")
    (tmp / "key").write_text(KEY + "\n")
    procs = {"file": _start(tmp, model, "--api-key-file", str(tmp / "key")), "env": _start(tmp, model, env_key=KEY)}
    try:
        deadline = time.monotonic() + 120
        for proc, url, log in procs.values():
            while True:
                assert proc.poll() is None, Path(log.name).read_text()
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, Path(log.name).read_text()
                time.sleep(0.2)
        yield procs
    finally:
        for proc, _, _ in procs.values():
            proc.terminate()
        for proc, _, log in procs.values():
            assert proc.wait(timeout=30) == 0, Path(log.name).read_text()
            log.close()


@pytest.mark.parametrize("source", ["file", "env"])
def test_the_key_from_a_file_or_the_environment_is_not_in_argv(keyed_servers, source):
    proc, url, log = keyed_servers[source]
    argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert not any(KEY.encode() in a for a in argv), argv
    assert_error(httpx.get(url + "/v1/models"), 401)
    assert_error(httpx.get(url + "/metrics"), 401)
    ok = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(url + "/v1/models", headers=ok).status_code == 200
    assert httpx.get(url + "/metrics", headers=ok).status_code == 200
    # The browser checks are on by default in the real server too.
    assert_error(httpx.post(url + "/v1/completions", content=json.dumps({"prompt": "hi", "max_tokens": 1}),
                            headers=ok | {"content-type": "text/plain"}), 415)
    assert_error(httpx.get(url + "/v1/models", headers=ok | {"host": "evil.example"}), 421)
    assert httpx.get(url + "/v1/models", headers=ok | {"host": f"localhost:{url.rsplit(':', 1)[1]}"}).status_code == 200
    assert "process list" not in Path(log.name).read_text()  # the warning is for --api-key only
