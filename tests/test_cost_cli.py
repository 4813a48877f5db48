"""`hearth cost` run in-process on ledgers filled here: the table's and the JSON's numbers (3.6e6 J over 1M tokens is
1 kWh per 1M tokens, $0.15 at $0.15/kWh), estimated energy marked, the API comparison at the ledger's token mix with
the snapshot's date, the PNG, an empty ledger, and bad options as one error line. Also the shipped price snapshot and
the script that makes it, on a small wheel built here."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from hearth.cli.cost import cost, parse_when
from hearth.errors import HearthError
from hearth.records.ledger import Ledger
from hearth.records.prices import PRICES_FILE, load_prices

WHEN = datetime(2026, 11, 2, 10, 30, tzinfo=timezone.utc).timestamp()  # the ledger's hours are UTC hours
WIDE = {"COLUMNS": "200"}  # rich's table at full width, whatever the terminal of the test run


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(cost)
    return app


def _run(*args: str):
    return CliRunner().invoke(_app(), list(args), env=WIDE)


@pytest.fixture
def ledger(tmp_path) -> Path:
    path = tmp_path / "ledger.sqlite"
    book = Ledger(path)
    # 1M tokens (60 % prompt) for 3.6e6 J = 1 kWh over one busy hour, in two requests
    for prompt, completion in ((400_000, 300_000), (200_000, 100_000)):
        book.add(model="smollm2", adapter=None, key_id="alice", prompt_tokens=prompt, completion_tokens=completion,
                 busy_seconds=1800.0, joules=1.8e6, energy_source="rapl", estimated=False, when=WHEN)
    book.add(model="llama-3.2-1b", adapter="support[bold]", key_id="bob", prompt_tokens=1000,
             completion_tokens=1000, busy_seconds=10.0, joules=720.0, energy_source="estimate", estimated=True,
             when=WHEN + 2 * 3600)
    book.close()
    return path


def test_json_has_the_numbers(ledger):
    r = _run("--ledger", str(ledger), "--json")
    assert r.exit_code == 0, (r.output, r.exception)
    doc = json.loads(r.output)
    rows = {row["model"]: row for row in doc["rows"]}
    s = rows["smollm2"]
    assert (s["requests"], s["tokens"], s["busy_seconds"], s["joules"]) == (2, 1_000_000, 3600.0, 3.6e6)
    assert s["kwh"] == pytest.approx(1.0) and s["kwh_per_m_tokens"] == pytest.approx(1.0)
    assert s["joules_per_token"] == pytest.approx(3.6) and s["usd_per_m_tokens"] == pytest.approx(0.15)
    assert s["estimated"] is False and s["energy_source"] == "rapl"
    e = rows["llama-3.2-1b"]
    assert e["estimated"] is True and e["adapter"] == "support[bold]"
    assert e["kwh_per_m_tokens"] == pytest.approx(720 / 3.6e6 / 2000 * 1e6)  # 0.1 kWh per 1M tokens
    assert doc["total"]["estimated"] is True and doc["total"]["requests"] == 3
    api = doc["api"]
    assert (api["date"], api["source"]) == ("2026-11-19", "genai-prices 0.2.5")
    share = 601_000 / 1_002_000
    assert api["input_share"] == pytest.approx(share)
    mini = next(m for m in api["models"] if m["model"] == "gpt-4o-mini")
    assert mini["blended_per_m"] == pytest.approx(share * 0.15 + (1 - share) * 0.6)


def test_hardware_cost_is_spread_over_the_tokens(ledger):
    doc = json.loads(_run("--ledger", str(ledger), "--json", "--price-kwh", "0.30", "--hardware-per-hour", "2",
                          "--until", "2026-11-02T11:00+00:00").output)
    (s,) = doc["rows"]  # --until leaves out the later hour
    assert s["energy_usd_per_m_tokens"] == pytest.approx(0.30)
    assert s["hardware_usd_per_m_tokens"] == pytest.approx(2.0)  # one busy hour at $2 over 1M tokens
    assert s["usd_per_m_tokens"] == pytest.approx(2.30)


def test_the_tables_show_the_figures_and_the_snapshot(ledger):
    r = _run("--ledger", str(ledger))
    assert r.exit_code == 0, (r.output, r.exception)
    line = next(x for x in r.output.splitlines() if "smollm2" in x and "$" in x)
    cells = [c.strip() for c in line.strip("│ ").split("│")]
    assert cells == ["smollm2", "alice", "3.60", "1.00", "$0.15", "rapl"]  # J/token, kWh/1M, $/1M, meter
    assert "3.6 MJ" in r.output and "1.00 kWh" in r.output
    estimated = [x for x in r.output.splitlines() if "llama-3.2-1b" in x]
    assert estimated and all("(estimate)" in x for x in estimated)
    assert "support[bold]" in r.output  # printed as text, not taken for rich markup
    assert "API list prices: snapshot of 2026-11-19 (genai-prices 0.2.5)" in r.output
    assert "gpt-4o-mini" in r.output and "60% prompt tokens" in r.output


def test_since_takes_the_hour_it_falls_in(ledger):
    doc = json.loads(_run("--ledger", str(ledger), "--json", "--since", "2026-11-02T12:59Z").output)
    assert [row["model"] for row in doc["rows"]] == ["llama-3.2-1b"]
    doc = json.loads(_run("--ledger", str(ledger), "--json", "--since", "2026-11-01").output)  # local midnight
    assert len(doc["rows"]) == 2


def test_the_plot_is_a_png(ledger, tmp_path):
    out = tmp_path / "cost.png"
    r = _run("--ledger", str(ledger), "--plot", str(out))
    assert r.exit_code == 0, (r.output, r.exception)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_an_empty_ledger_says_what_to_do(tmp_path):
    missing = tmp_path / "home" / "ledger.sqlite"
    r = _run("--ledger", str(missing))
    assert r.exit_code == 0 and "no requests recorded yet" in r.output and "hearth serve" in r.output
    assert not missing.parent.exists()  # reading made nothing
    Ledger(missing).close()
    r = _run("--ledger", str(missing), "--json")
    assert r.exit_code == 0 and json.loads(r.output)["rows"] == []


@pytest.mark.parametrize("args, match", [
    (("--since", "yesterday"), "--since 'yesterday' is not a date"),
    (("--until", "2026-13-01"), "--until '2026-13-01' is not a date"),
    (("--since", "2026-11-03", "--until", "2026-11-02"), "is not after --since"),
])
def test_bad_dates_are_one_error_line(ledger, args, match):
    r = _run("--ledger", str(ledger), *args)
    assert isinstance(r.exception, HearthError), r.output
    assert match in str(r.exception) and "\n" not in str(r.exception)


def test_a_damaged_ledger_is_one_error_line(tmp_path):
    bad = tmp_path / "ledger.sqlite"
    bad.write_bytes(b"\x00garbage" * 500)
    r = _run("--ledger", str(bad))
    assert isinstance(r.exception, HearthError) and "\n" not in str(r.exception)
    r = _run("--ledger", str(tmp_path))
    assert isinstance(r.exception, HearthError) and "is a folder" in str(r.exception)


def test_dates_parse_as_documented():
    assert parse_when(None, "--since") is None
    day = datetime(2026, 12, 1).timestamp()
    assert parse_when("2026-12-01", "--since") == day
    assert parse_when("2026-12-01", "--until", end_of_day=True) == day + 86400
    assert parse_when("2026-12-01T00:00:00+00:00", "--since") == 1_796_083_200


# ---- the price snapshot -------------------------------------------------------------------------------------------

def test_the_shipped_snapshot_is_dated_and_licensed():
    snap = load_prices()
    assert (snap.date, snap.source) == ("2026-11-19", "genai-prices 0.2.5")
    by_model = {p.model: p for p in snap.models}
    assert {"gpt-4o-mini", "claude-3-haiku", "gemini-2.5-flash-lite", "llama-3.1-8b-instant"} <= set(by_model)
    assert all(0 < p.input_per_m <= p.output_per_m < 100 for p in snap.models)
    assert by_model["gpt-4o-mini"].blended(0.5) == pytest.approx(0.375)
    notice = (PRICES_FILE.parent / "genai-prices.LICENSE").read_text()
    assert "MIT" in notice and "Pydantic" in notice


def test_a_broken_snapshot_is_one_error_line(tmp_path):
    bad = tmp_path / "prices.json"
    bad.write_text('{"date": "2026-01-01", "models": []}')
    with pytest.raises(HearthError, match="cannot be read"):
        load_prices(bad)


DATA_PY = '''"""DO NOT EDIT"""
import datetime
from decimal import Decimal
from .types import *
providers: list[Provider] = [
    Provider(id='openai', name='OpenAI', model_match=ClauseContains(contains='gpt'), models=[
        ModelInfo(id='gpt-4o-mini', match=ClauseEquals(equals='gpt-4o-mini'), name='gpt 4o mini',
                  prices=ModelPrice(input_mtok=Decimal('0.15'), output_mtok=Decimal('0.6'))),
        ModelInfo(id='gpt-4.1-nano', match=ClauseEquals(equals='gpt-4.1-nano'),
                  prices=[ConditionalPrice(prices=ModelPrice(input_mtok=Decimal('0.2'), output_mtok=Decimal('0.8'))),
                          ConditionalPrice(constraint=StartDateConstraint(start_date=datetime.date(2026, 1, 1)),
                                           prices=ModelPrice(input_mtok=Decimal('0.1'), output_mtok=Decimal('0.4'))),
                          ConditionalPrice(constraint=StartDateConstraint(start_date=datetime.date(2027, 1, 1)),
                                           prices=ModelPrice(input_mtok=Decimal('9'), output_mtok=Decimal('9'))),
                          ConditionalPrice(constraint=TimeOfDateConstraint(start_time=datetime.time(1, 0),
                                                                           end_time=datetime.time(2, 0)),
                                           prices=ModelPrice(input_mtok=Decimal('0.01'), output_mtok=Decimal('0.01')))]),
    ]),
]
'''


def test_make_prices_reads_a_wheel_without_running_it(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("make_prices", PRICES_FILE.parent / "make_prices.py")
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    wheel = tmp_path / "genai_prices-9.9.9-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("genai_prices/data.py", DATA_PY + "\nraise SystemExit('executed!')\n")
        z.writestr("genai_prices-9.9.9.dist-info/METADATA", "Metadata-Version: 2.4\nName: genai-prices\nVersion: 9.9.9\n")
        z.writestr("genai_prices-9.9.9.dist-info/licenses/LICENSE", "The MIT License (MIT)\n")
    monkeypatch.setattr(make, "WANTED", [("openai", "gpt-4o-mini"), ("openai", "gpt-4.1-nano")])
    import datetime as dt

    doc, licence = make.snapshot(wheel, dt.date(2026, 11, 19))
    assert (doc["version"], doc["date"], licence) == ("9.9.9", "2026-11-19", "The MIT License (MIT)\n")
    assert [(m["model"], m["input_per_m"], m["output_per_m"]) for m in doc["models"]] == [
        ("gpt-4o-mini", 0.15, 0.6), ("gpt-4.1-nano", 0.1, 0.4)]  # the 2026 price; not 2027's, nor off-peak's
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "prices.json").write_text(json.dumps(doc))
    snap = load_prices(tmp_path / "out" / "prices.json")
    assert snap.source == "genai-prices 9.9.9" and snap.models[1].output_per_m == 0.4
