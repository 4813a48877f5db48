"""Names people recognise, one access-log line per request, and a busy port found before loading (issue 24, items 12
and 13): a stored model is named by its store name (never its blob's sha256), a file by its stem; --served-model-name
names it (repeatable); every request is one `hearth.access` line with no content; a port in use is one error line
naming the next free port, before the model is loaded."""

from __future__ import annotations

import logging
import shutil
import socket
import time

import pytest
from fastapi.testclient import TestClient

from hearth.loader import load, path_name
from hearth.server.app import build_app

from fake_engine import FakeEngine
from serve_kit import ServerProcess
from store_kit import one_line_error, run_main, write_tiny_gguf

SECRET = "zebra-quartz-Kilimanjaro"  # in the prompts: must never reach the log


# ------------------------------------------------------------------------------------------------ names


def test_names_of_files_directories_and_store_models(home, tmp_path, capsys):
    assert path_name(tmp_path / "model.gguf") == "model"
    assert path_name(tmp_path / "Llama-3.2-1B-Instruct") == "Llama-3.2-1B-Instruct"
    src = write_tiny_gguf(tmp_path / "model.gguf")
    from_file = load(str(src), dtype="float32")
    assert from_file.display_name == "model" and from_file.origin == str(src)
    assert run_main(capsys, "pull", str(src), "--name", "tiny")[0] == 0
    stored = load("tiny", dtype="float32")
    assert stored.checkpoint.path.name.startswith("sha256-")  # what the log used to show
    assert stored.display_name == "tiny" and stored.origin == "the store"
    described = stored.describe()
    assert described.startswith("tiny (") and "F32" in described and "params)" in described and "sha256" not in described


# ------------------------------------------------------------------------------------------------ access log


@pytest.fixture
def client():
    engine = FakeEngine(model_name="smollm2")
    app = build_app(engine, served_model_name=("smollm2", "my-alias"))
    with TestClient(app) as c:
        yield c


def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hearth.access"]


def test_one_access_line_per_request_without_content(client, caplog):
    caplog.set_level(logging.INFO, logger="hearth.access")
    r = client.post("/v1/completions", json={"model": "smollm2", "prompt": SECRET, "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200
    usage = r.json()["usage"]
    lines = _access_lines(caplog)
    assert len(lines) == 1, lines
    line = lines[0]
    assert '"POST /v1/completions" 200 ' in line and " ms " in line
    assert f"prompt={usage['prompt_tokens']} completion={usage['completion_tokens']}" in line
    assert line.startswith("testclient:")  # the client's address
    assert SECRET not in line and SECRET not in caplog.text


def test_a_stream_is_logged_once_after_its_last_event(client, caplog):
    caplog.set_level(logging.INFO, logger="hearth.access")
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "my-alias", "messages": [{"role": "user", "content": SECRET}], "max_tokens": 4, "stream": True}) as r:
        assert r.status_code == 200
        body = "".join(r.iter_text())
        assert body.rstrip().endswith("data: [DONE]")
    lines = _access_lines(caplog)
    assert len(lines) == 1, lines
    assert '"POST /v1/chat/completions" 200 ' in lines[0] and "completion=4" in lines[0] and SECRET not in lines[0]


def test_refusals_and_other_routes_are_logged_too(client, caplog):
    caplog.set_level(logging.INFO, logger="hearth.access")
    assert client.post("/v1/completions", json={"prompt": SECRET, "temperature": 9}).status_code == 400  # refused
    assert client.get("/v1/models").status_code == 200
    lines = _access_lines(caplog)
    assert len(lines) == 2, lines
    assert '"POST /v1/completions" 400 ' in lines[0] and "prompt=" not in lines[0] and SECRET not in lines[0]
    assert '"GET /v1/models" 200 ' in lines[1]


def test_served_model_names_and_aliases(client):
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["smollm2", "my-alias"]
    for name in ("smollm2", "my-alias"):
        r = client.post("/v1/completions", json={"model": name, "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 200 and r.json()["model"] == "smollm2"  # answered as the first name, as vLLM does


def test_no_access_log_when_its_logger_is_quiet(client, caplog):
    caplog.set_level(logging.WARNING, logger="hearth.access")  # what --no-access-log sets
    assert client.get("/health").status_code == 200
    assert _access_lines(caplog) == []


# ------------------------------------------------------------------------------------------------ the port


def test_a_busy_port_is_one_error_line_before_loading(capsys, home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        rc, _, err = run_main(capsys, "serve", "no-such-model-anywhere", "--port", str(port))
        line = one_line_error(rc, err, f"port {port} on 127.0.0.1 is already in use", "--port ")
        assert time.monotonic() - t0 < 5  # the model (which does not even exist) was never looked for
    suggested = int(line.rsplit("--port ", 1)[1].split()[0])
    assert suggested != port
    with socket.socket() as s:  # the port it names is free
        s.bind(("127.0.0.1", suggested))


def test_a_port_bound_by_a_server_still_loading_is_busy(capsys, home):
    """Another `hearth serve` that has taken the port but is still loading its model (bound with SO_REUSEADDR, as
    uvicorn binds): listening at once is what makes the second one fail now, not after its own loading."""
    from hearth.server.launch import listen

    first = listen("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        rc, _, err = run_main(capsys, "serve", "smollm2", "--port", str(port))
        one_line_error(rc, err, f"port {port}", "already in use")
    finally:
        first.close()


# ------------------------------------------------------------------------------------------------ a live server


def test_live_server_names_a_file_by_its_stem_and_logs_requests(tmp_path, home):
    import httpx

    model = write_tiny_gguf(tmp_path / "model.gguf")
    server = ServerProcess(tmp_path, "names", "--dtype", "float32", "--threads", "1", model=str(model))
    try:
        server.wait_healthy()
        ids = [m["id"] for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]]
        assert ids == ["model"]
        r = httpx.post(server.url + "/v1/completions", json={"model": "model", "prompt": SECRET, "max_tokens": 3},
                       timeout=60)
        assert r.status_code == 200
    finally:
        server.stop()
    log = server.log_path.read_text()
    assert "loaded model (" in log and f"from {model}" in log
    assert "serving model on http://127.0.0.1:" in log
    access = [line for line in log.splitlines() if '"POST /v1/completions"' in line]
    assert len(access) == 1 and " 200 " in access[0] and "completion=3" in access[0], log
    assert SECRET not in log


def test_live_server_names_a_stored_model_by_its_store_name(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HEARTH_HOME", str(home))
    src = write_tiny_gguf(tmp_path / "src.gguf")
    assert run_main(capsys, "pull", str(src), "--name", "tiny-stored")[0] == 0
    server = ServerProcess(tmp_path, "stored", "--dtype", "float32", "--threads", "1", "--no-access-log",
                           model="tiny-stored")
    try:
        server.wait_healthy()
        import httpx

        assert [m["id"] for m in httpx.get(server.url + "/v1/models", timeout=10).json()["data"]] == ["tiny-stored"]
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
    log = server.log_path.read_text()
    assert "loaded tiny-stored (" in log and "from the store" in log and "sha256" not in log, log
    assert '"GET /v1/models"' not in log  # --no-access-log
