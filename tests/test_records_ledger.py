"""The cost ledger's parts: energy meters (a fake RAPL tree with a wrap, the CPU-time estimate, the NVML path and its
fallback), the SQLite ledger (hour buckets, --since, persistence, bounds, a damaged file), the Accountant's
charging of overlapping requests (each joule once) and its refusal to raise into the server, and the Prometheus
text (parsed back by prometheus_client)."""

from __future__ import annotations

import logging
import sqlite3
import sys
import threading
import types

import pytest

from hearth.errors import HearthError
from hearth.records.energy import DEFAULT_WATTS_PER_CORE, EnergyMeter, detect_meter
from hearth.records.ledger import MAX_NAME, Accountant, Ledger, Total, render_prometheus

HOUR = 3600.0
T0 = 1_780_000_000.0 - 1_780_000_000.0 % HOUR  # the start of an hour (2026)


# ---- meters -------------------------------------------------------------------------------------------------------

def _zone(path, energy_uj, max_uj=1_000_000, name="package-0"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "energy_uj").write_text(f"{energy_uj}\n")
    (path / "max_energy_range_uj").write_text(f"{max_uj}\n")
    (path / "name").write_text(name + "\n")


def test_rapl_sums_the_packages_only_and_survives_a_wrap(tmp_path):
    _zone(tmp_path / "intel-rapl:0", 900_000)
    _zone(tmp_path / "intel-rapl:0" / "intel-rapl:0:0", 5_000, name="core")  # inside the package: not counted again
    _zone(tmp_path / "intel-rapl:0:0", 5_000, name="core")  # the same sub-zone, as sysfs also lists it at the top
    _zone(tmp_path / "intel-rapl:1", 100, max_uj=2_000_000, name="package-1")
    _zone(tmp_path / "intel-rapl:2", 0)
    (tmp_path / "intel-rapl:2" / "energy_uj").write_text("unreadable\n")  # as a counter only root may read
    meter = detect_meter("cpu", rapl_root=tmp_path)
    assert (meter.source, meter.estimated) == ("rapl", False)
    assert meter.read() == 0.0

    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("950000\n")  # +50,000 µJ
    (tmp_path / "intel-rapl:1" / "energy_uj").write_text("1100\n")  # +1,000 µJ
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("999999\n")  # a sub-zone moving changes nothing
    assert meter.read() == pytest.approx(0.051)

    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("30000\n")  # wrapped at 1,000,000: +80,000 µJ
    assert meter.read() == pytest.approx(0.131)
    (tmp_path / "intel-rapl:1" / "energy_uj").unlink()  # a zone that stops answering adds nothing
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("40000\n")
    assert meter.read() == pytest.approx(0.141)


def test_no_readable_rapl_means_the_estimate_and_it_only_grows(tmp_path):
    meter = detect_meter("cpu", rapl_root=tmp_path / "absent")
    assert (meter.source, meter.estimated) == ("estimate", True)
    first = meter.read()
    readings = []
    x = 0
    for i in range(200_000):  # some CPU time
        x += i * i
        if i % 20_000 == 0:
            readings.append(meter.read())
    assert readings == sorted(readings) and readings[-1] > first > 0
    fast = detect_meter("cpu", watts_per_core=2 * DEFAULT_WATTS_PER_CORE, rapl_root=tmp_path / "absent")
    assert fast.read() > readings[-1]  # the same CPU time at twice the power
    with pytest.raises(ValueError):
        detect_meter("cpu", watts_per_core=0.0)


def test_a_counter_that_steps_back_never_makes_the_reading_fall():
    values = iter([5.0, 7.0, 3.0, 8.0])
    meter = EnergyMeter("rapl", lambda: next(values))
    assert [meter.read() for _ in range(4)] == [5.0, 7.0, 7.0, 8.0]


def test_cuda_without_nvidia_ml_py_falls_back(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` raises ImportError
    assert detect_meter("cuda", rapl_root=tmp_path).source == "estimate"
    _zone(tmp_path / "intel-rapl:0", 10)
    assert detect_meter("cuda:0", rapl_root=tmp_path).source == "rapl"


class FakeNvml(types.ModuleType):
    """pynvml's few calls the meter makes, over a settable counter (millijoules) per GPU."""

    def __init__(self, fail: bool = False):
        super().__init__("pynvml")
        self.fail = fail
        self.mj = {0: 1_000_000, 1: 2_000_000, 3: 0, "GPU-abc": 7_000}

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return uuid

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self.mj[handle]


def test_nvml_reads_millijoules_of_the_gpu_torch_means(tmp_path, monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    meter = detect_meter("cuda:1", rapl_root=tmp_path)
    assert (meter.source, meter.estimated) == ("nvml", False)
    nvml.mj[1] += 2_500  # 2.5 J
    assert meter.read() == pytest.approx(2.5)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,0")  # torch's cuda:1 is NVML's GPU 0
    meter = detect_meter("cuda:1", rapl_root=tmp_path)
    nvml.mj[0] += 1_000
    nvml.mj[1] += 9_999_000
    assert meter.read() == pytest.approx(1.0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    meter = detect_meter("cuda", rapl_root=tmp_path)
    nvml.mj["GPU-abc"] += 500
    assert meter.read() == pytest.approx(0.5)


def test_nvml_that_fails_falls_back(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail=True))
    assert detect_meter("cuda", rapl_root=tmp_path).source == "estimate"


# ---- the ledger ---------------------------------------------------------------------------------------------------

def _add(ledger, when, model="smollm2", adapter=None, key="alice", prompt=10, completion=20, busy=1.0, joules=5.0,
         source="rapl", estimated=False):
    ledger.add(model=model, adapter=adapter, key_id=key, prompt_tokens=prompt, completion_tokens=completion,
               busy_seconds=busy, joules=joules, energy_source=source, estimated=estimated, when=when)


def test_rows_add_up_per_hour_model_adapter_key_and_source(tmp_path):
    ledger = Ledger(tmp_path / "home" / "ledger.sqlite")
    _add(ledger, T0 + 10)
    _add(ledger, T0 + 3000, prompt=1, completion=2, busy=0.5, joules=1.0)  # the same hour and names: one row
    _add(ledger, T0 + HOUR + 5)  # the next hour: a second row
    _add(ledger, T0 + 20, adapter="support")
    _add(ledger, T0 + 30, key="bob", source="estimate", estimated=True)
    assert ledger.db.execute("SELECT count(*) FROM usage").fetchone()[0] == 4
    totals = ledger.totals()
    assert [(t.model, t.adapter, t.key_id, t.energy_source) for t in totals] == [
        ("smollm2", None, "alice", "rapl"), ("smollm2", None, "bob", "estimate"),
        ("smollm2", "support", "alice", "rapl")]
    a = totals[0]
    assert (a.requests, a.prompt_tokens, a.completion_tokens, a.busy_seconds, a.joules) == (3, 21, 42, 2.5, 11.0)
    assert (a.tokens, a.joules_per_token, a.kwh) == (63, pytest.approx(11 / 63), pytest.approx(11 / 3.6e6))
    assert totals[1].estimated and not a.estimated
    assert Total("m", None, "k", 1, 0, 0, 0.0, 1.0, "rapl", False).joules_per_token is None


def test_since_and_until_take_whole_hours(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    for h in range(3):
        _add(ledger, T0 + h * HOUR + 100, joules=10.0 ** h)
    joules = lambda **kw: sum(t.joules for t in ledger.totals(**kw))  # noqa: E731
    assert joules() == 111
    assert joules(since=T0 + HOUR + 1800) == 110  # the hour --since falls in counts whole
    assert joules(since=T0 + HOUR) == 110
    assert joules(until=T0 + HOUR) == 1  # [since, until): the hour starting at --until is out
    assert joules(until=T0 + HOUR + 1) == 11
    assert joules(since=T0 + HOUR, until=T0 + 2 * HOUR) == 10
    assert ledger.totals(since=T0 + 5 * HOUR) == []


def test_the_ledger_persists_across_a_restart(tmp_path):
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    _add(ledger, T0)
    before = ledger.totals()
    ledger.close()
    again = Ledger(path)
    assert again.totals() == before
    _add(again, T0 + 1)
    assert again.totals()[0].requests == 2
    assert again.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    again.close()


def test_a_file_that_is_no_ledger_is_one_error_line(tmp_path):
    bad = tmp_path / "ledger.sqlite"
    bad.write_bytes(b"this is not a database\n" * 200)
    with pytest.raises(HearthError) as e:
        Ledger(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    newer = tmp_path / "newer.sqlite"
    db = sqlite3.connect(newer)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(HearthError, match="newer hearth"):
        Ledger(newer)
    with pytest.raises(HearthError):
        Ledger(tmp_path)  # a folder


def test_names_are_cut_and_bad_numbers_refused(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    _add(ledger, T0, model="m" * 1000, adapter="a" * 300, key="k" * 201)
    t = ledger.totals()[0]
    assert (len(t.model), len(t.adapter), len(t.key_id)) == (MAX_NAME, MAX_NAME, MAX_NAME)
    for bad in ({"prompt": -1}, {"completion": 2.5}, {"prompt": True}, {"busy": -0.1}, {"joules": float("nan")},
                {"joules": float("inf")}, {"when": -5.0}, {"prompt": 1 << 60}):
        kw = {"when": T0, **bad}
        with pytest.raises(ValueError):
            _add(ledger, **kw)
    with pytest.raises(ValueError):
        _add(ledger, T0, model=None)
    assert ledger.totals()[0].requests == 1


# ---- the accountant -----------------------------------------------------------------------------------------------

class Clock:
    """A settable time and energy counter: `at(t, j)` moves both."""

    def __init__(self):
        self.t, self.j = 0.0, 0.0

    def at(self, t, j):
        self.t, self.j = t, j

    def __call__(self):
        return self.t


def _accountant(tmp_path, source="rapl"):
    clock = Clock()
    ledger = Ledger(tmp_path / "ledger.sqlite", busy_timeout=0.05)
    return Accountant(ledger, EnergyMeter(source, lambda: clock.j), clock=clock), ledger, clock


def _end(acc, ticket, model):
    acc.end(ticket, model=model, adapter=None, key_id="k", prompt_tokens=1, completion_tokens=1)


def _charged(ledger):
    return {t.model: (t.busy_seconds, t.joules) for t in ledger.totals()}


def test_sequential_requests_are_charged_their_own_span_and_idle_time_is_free(tmp_path):
    acc, ledger, clock = _accountant(tmp_path)
    a = acc.begin()
    clock.at(10, 100)
    _end(acc, a, "a")
    clock.at(20, 150)  # idle: 50 J nobody is charged
    b = acc.begin()
    clock.at(25, 200)
    _end(acc, b, "b")
    assert _charged(ledger) == {"a": (10, 100), "b": (5, 50)}


def test_overlapping_requests_count_each_joule_once(tmp_path):
    acc, ledger, clock = _accountant(tmp_path)
    a = acc.begin()  # t=0
    clock.at(5, 50)
    b = acc.begin()
    clock.at(10, 100)
    _end(acc, a, "a")
    clock.at(15, 150)
    _end(acc, b, "b")
    assert _charged(ledger) == {"a": (10, 100), "b": (5, 50)}  # 15 s and 150 J in all: the busy span, once


def test_a_request_inside_another_leaves_no_busy_time_uncharged(tmp_path):
    acc, ledger, clock = _accountant(tmp_path)
    a = acc.begin()  # t=0
    clock.at(2, 20)
    b = acc.begin()
    clock.at(5, 50)
    _end(acc, b, "b")  # carries the shared span since a began
    clock.at(10, 100)
    _end(acc, a, "a")
    _end(acc, a, "a")  # a second end records nothing
    assert _charged(ledger) == {"b": (5, 50), "a": (5, 50)}
    assert sum(t.requests for t in ledger.totals()) == 2


def test_a_ticket_dropped_without_end_does_not_hold_the_mark_back(tmp_path):
    acc, ledger, clock = _accountant(tmp_path)
    acc.begin()  # dropped at once: a request that failed before the server could end it
    clock.at(100, 1000)
    a = acc.begin()
    clock.at(110, 1100)
    _end(acc, a, "a")
    assert _charged(ledger) == {"a": (10, 100)}


def test_concurrent_requests_are_charged_exactly_the_busy_span(tmp_path):
    lock, count = threading.Lock(), [0]

    def counter():  # every read moves the counter on by 1 J
        with lock:
            count[0] += 1
            return float(count[0])

    ledger = Ledger(tmp_path / "ledger.sqlite")
    acc = Accountant(ledger, EnergyMeter("rapl", counter))
    n = 16
    barrier = threading.Barrier(n)

    def request(i):
        ticket = acc.begin()
        barrier.wait()  # every request begins before any ends: one busy span
        acc.end(ticket, model="m", adapter=None, key_id=f"k{i % 3}", prompt_tokens=i, completion_tokens=1)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    totals = ledger.totals()
    assert sum(t.requests for t in totals) == n and acc.dropped == 0
    assert sum(t.joules for t in totals) == pytest.approx(2 * n - 1)  # last end's reading (2n) - first begin's (1)


def test_a_locked_database_drops_the_row_with_a_warning(tmp_path, caplog):
    acc, ledger, clock = _accountant(tmp_path)
    other = sqlite3.connect(tmp_path / "ledger.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    t = acc.begin()
    clock.at(1, 10)
    with caplog.at_level(logging.WARNING, logger="hearth"):
        _end(acc, t, "a")  # must not raise
    assert acc.dropped == 1
    assert any("not recorded" in r.getMessage() and "locked" in r.getMessage() for r in caplog.records)
    other.execute("ROLLBACK")
    other.close()
    t = acc.begin()
    clock.at(2, 20)
    _end(acc, t, "a")
    assert _charged(ledger) == {"a": (1, 10)}


def test_nothing_the_ledger_or_meter_does_raises_into_the_server(tmp_path, caplog):
    acc, ledger, clock = _accountant(tmp_path)
    t = acc.begin()
    with caplog.at_level(logging.WARNING, logger="hearth"):
        acc.end(t, model="m", adapter=None, key_id="k", prompt_tokens=-1, completion_tokens=0)
        acc.meter = EnergyMeter("rapl", lambda: 1 / 0)
        t = acc.begin()
        acc.end(t, model="m", adapter=None, key_id="k", prompt_tokens=1, completion_tokens=0)
        ledger.close()
        acc.end(acc.begin(), model="m", adapter=None, key_id="k", prompt_tokens=1, completion_tokens=0)
    assert acc.dropped == 2  # the bad count and the closed database; the failed meter records 0 J
    assert caplog.records  # warned (at most once a minute)


# ---- Prometheus ---------------------------------------------------------------------------------------------------

def test_prometheus_text_parses_back():
    parser = pytest.importorskip("prometheus_client.parser")
    totals = [Total('odd "model"\\\nname', "support", "key-1", 3, 10, 20, 1.5, 7.25, "estimate", True),
              Total("smollm2", None, "key-2", 1, 4, 5, 0.25, 2.0, "rapl", False)]
    text = render_prometheus(totals)
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    assert set(families) == {f"hearth_ledger_{n}" for n in ("requests", "prompt_tokens", "completion_tokens",
                                                             "busy_seconds", "energy_joules")}
    assert all(f.type == "counter" and f.documentation for f in families.values())
    energy = {s.labels["model"]: s for s in families["hearth_ledger_energy_joules"].samples}
    odd = energy['odd "model"\\\nname']
    assert odd.name == "hearth_ledger_energy_joules_total" and odd.value == 7.25
    assert odd.labels == {"model": 'odd "model"\\\nname', "adapter": "support", "key_id": "key-1",
                          "source": "estimate", "estimated": "true"}
    assert energy["smollm2"].labels["adapter"] == "" and energy["smollm2"].labels["estimated"] == "false"
    assert [s.value for s in families["hearth_ledger_requests"].samples] == [3, 1]
    empty = render_prometheus([])
    assert empty.count("# TYPE") == 5 and list(parser.text_string_to_metric_families(empty))
