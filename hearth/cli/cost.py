"""`hearth cost`: what serving cost, from the ledger `hearth serve` keeps, beside the list prices of hosted APIs.

Per model, adapter and API key: requests, tokens, busy time, energy, and dollars per 1M tokens (energy at --price-kwh
plus --hardware-per-hour over the busy hours); then the API models of the shipped price snapshot at the same mix of
prompt and completion tokens. The library calls are hearth.records.ledger.Ledger.totals and hearth.records.prices.
"""

from __future__ import annotations

import json
import math
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Optional

import typer

from hearth.errors import HearthError
from hearth.textsafe import json_safe, terminal_safe

DATE_HELP = "ISO date or datetime (2026-12-01, 2026-12-01T09:30, +00:00 for UTC; local time without)"


def default_ledger() -> Path:
    from hearth.records.ledger import default_path
    from hearth.store.common import default_home

    return default_path(default_home())


def parse_when(value: str | None, option: str, end_of_day: bool = False) -> float | None:
    """`value` (ISO date or datetime; naive means local time) as unix time. A bare date is the start of that day,
    or with `end_of_day` the start of the next (so --until 2026-12-01 takes in the whole of that day)."""
    if value is None:
        return None
    text = value.strip()
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    try:
        if day is not None:
            start = datetime(day.year, day.month, day.day) + timedelta(days=1 if end_of_day else 0)
            return start.timestamp()
        return datetime.fromisoformat(text).timestamp()
    except (ValueError, OverflowError, OSError):
        pass
    raise HearthError(f"{option} {terminal_safe(value)!r} is not a date: give an {DATE_HELP}")


def cost(
    since: Annotated[Optional[str], typer.Option("--since", help=f"Count from this time: an {DATE_HELP}. The ledger "
                                                 "keeps hours: the hour it falls in counts whole.")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="Count up to this time (a date alone: the end of "
                                                 "that day); the same forms as --since.")] = None,
    price_kwh: Annotated[float, typer.Option("--price-kwh", min=0, max=1000,
                                             help="What electricity costs, in $ per kWh.")] = 0.15,
    hardware_per_hour: Annotated[float, typer.Option("--hardware-per-hour", min=0, max=1e6,
                                                     help="What the hardware costs per hour (its price over the hours "
                                                          "of its life, or a rental rate), charged for busy hours.")] = 0.0,
    ledger: Annotated[Optional[Path], typer.Option("--ledger", help="The ledger file (default: "
                                                   "$HEARTH_HOME/ledger.sqlite).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Also draw $ per 1M tokens, hearth beside the API "
                                                 "models, into this PNG file.")] = None,
) -> int:
    """What serving has cost: energy and dollars per 1M tokens per model, adapter and API key, from the ledger that
    `hearth serve` keeps, beside hosted APIs' list prices for the same mix of prompt and completion tokens.

    Example: hearth cost --since 2026-12-01 --price-kwh 0.30 --plot cost.png
    """
    from hearth.records.ledger import Ledger
    from hearth.records.prices import CostRow, input_share, load_prices, sum_totals

    t0, t1 = parse_when(since, "--since"), parse_when(until, "--until", end_of_day=True)
    if t0 is not None and t1 is not None and t1 <= t0:
        raise HearthError(f"--until {terminal_safe(until)} is not after --since {terminal_safe(since)}")
    if not (math.isfinite(price_kwh) and math.isfinite(hardware_per_hour)):
        raise HearthError("--price-kwh and --hardware-per-hour must be finite numbers")
    if plot is not None and (plot.is_dir() or not plot.parent.is_dir()):
        raise HearthError(f"--plot {plot}: give a PNG file in an existing folder")
    path = ledger or default_ledger()
    if path.is_dir():
        raise HearthError(f"--ledger {path} is a folder; give the ledger file (ledger.sqlite)")
    totals = []
    if path.exists():  # never make a ledger (nor $HEARTH_HOME) just to read it
        book = Ledger(path)
        try:
            totals = book.totals(t0, t1)
        finally:
            book.close()
    snapshot = load_prices()
    rows = [CostRow(t, price_kwh, hardware_per_hour) for t in totals]
    share = input_share(totals)
    api = [(p, p.blended(share) if share is not None else None) for p in snapshot.models]
    window = "" if since is None and until is None else " in that time"
    empty = (f"no requests recorded yet in {path}{window}: run `hearth serve` and send it some, then run "
             "`hearth cost` again")
    if as_json:
        doc = {"ledger": str(path), "since": t0, "until": t1, "price_kwh": price_kwh,
               "hardware_per_hour": hardware_per_hour, "rows": [r.to_json() for r in rows],
               "total": CostRow(sum_totals(totals), price_kwh, hardware_per_hour).to_json() if rows else None,
               "api": {"date": snapshot.date, "source": snapshot.source, "input_share": share,
                       "models": [{"provider": p.provider, "model": p.model, "input_per_m": p.input_per_m,
                                   "output_per_m": p.output_per_m, "blended_per_m": b} for p, b in api]}}
        if not rows:
            doc["note"] = empty
        print(json_safe(json.dumps(doc, indent=1, ensure_ascii=False)))
    elif not rows:
        print(terminal_safe(empty))
    else:
        _print_tables(rows, api, share, snapshot, price_kwh, hardware_per_hour)
    if plot is not None and rows:
        by_model: dict[tuple, list] = {}
        for t in totals:
            by_model.setdefault((t.model, t.adapter), []).append(t)
        mine = [CostRow(sum_totals(ts, m + (f"+{a}" if a else "")), price_kwh, hardware_per_hour)
                for (m, a), ts in by_model.items()]
        plot_costs(mine, api, snapshot, price_kwh, hardware_per_hour, plot)
        if not as_json:
            print(f"wrote {terminal_safe(plot)}")
    return 0


def _num(x: float | None, unit: str = "") -> str:
    if x is None:
        return "-"
    if x == 0:
        return f"0{unit}"
    a = abs(x)
    s = f"{x:,.0f}" if a >= 1000 else f"{x:.2f}" if a >= 1 else f"{x:.3g}" if a >= 1e-3 else f"{x:.2e}"
    return s + unit


def _si(x: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _dollars(x: float | None) -> str:
    return "-" if x is None else "$" + _num(x)


def _busy(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {int(seconds % 60):02d}s"


def _print_tables(rows, api, share, snapshot, price_kwh, hardware_per_hour) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from hearth.records.prices import CostRow, sum_totals

    def cell(text: str) -> Text:  # names come from requests: no markup, no control characters
        return Text(terminal_safe(text))

    def table(title: str, numbers: tuple[str, ...]) -> Table:
        t = Table(title=title)
        t.add_column("model (+adapter)", overflow="fold")
        t.add_column("key", overflow="fold")
        for col in numbers:
            t.add_column(col, justify="right", no_wrap=True)
        return t

    # Two tables of a few columns each rather than one of nine: each fits an 80-column terminal.
    usage = table("hearth: what was served", ("requests", "tokens", "busy", "energy", "meter"))
    per_token = table(f"hearth: per token, energy at ${_num(price_kwh)}/kWh + hardware ${_num(hardware_per_hour)}"
                      "/busy hour", ("J/token", "kWh/1M tokens", "$/1M tokens", "meter"))
    everything = rows + ([CostRow(sum_totals([r.total for r in rows]), price_kwh, hardware_per_hour)]
                         if len(rows) > 1 else [])
    for r in everything:
        t = r.total
        names = (cell(t.model + (f" +{t.adapter}" if t.adapter else "")), cell(t.key_id or "-"))
        meter = "(estimate)" if t.estimated else t.energy_source  # the energy, and all made from it
        usage.add_row(*names, f"{t.requests:,}", f"{t.tokens:,}", _busy(t.busy_seconds),
                      f"{_si(t.joules, 'J')}\n{_num(t.kwh)} kWh", meter)
        per_token.add_row(*names, _num(t.joules_per_token), _num(r.kwh_per_m), _dollars(r.usd_per_m), meter)
    console = Console(highlight=False)
    console.print(usage)
    console.print(per_token)
    if any(r.total.estimated for r in rows):
        print("(estimate): no energy counter could be read, so energy is this process's CPU time times a power per "
              "core (hearth.records.energy.DEFAULT_WATTS_PER_CORE), not a measurement")
    mix = "" if share is None else f" at hearth's mix ({share:.0%} prompt tokens)"
    api_table = Table(title=f"hosted APIs, list prices{mix}")
    for col in ("provider", "model", "input $/1M", "output $/1M", "blended $/1M"):
        api_table.add_column(col, justify="left" if col in ("provider", "model") else "right")
    for p, blended in sorted(api, key=lambda pb: (pb[1] is None, pb[1] or 0.0)):
        api_table.add_row(cell(p.provider), cell(p.model), _dollars(p.input_per_m), _dollars(p.output_per_m),
                          _dollars(blended))
    console.print(api_table)
    version = snapshot.source.removeprefix("genai-prices ")
    print(f"API list prices: snapshot of {snapshot.date} (genai-prices {version})")


def _plain(text: str) -> str:
    """Text matplotlib shows as written: `$` would start its math mode."""
    return terminal_safe(text).replace("$", r"\$")


def plot_costs(mine, api, snapshot, price_kwh: float, hardware_per_hour: float, path: Path) -> Path:
    """A bar chart of $ per 1M tokens: hearth's models (`mine`, CostRows) beside the API models (`api`: pairs of
    ApiPrice and blended price); a log axis when the bars span more than 30x."""
    import matplotlib

    matplotlib.use("Agg")  # no display; never opens a window
    import matplotlib.pyplot as plt

    from hearth.fsutil import save_png

    bars = [(f"hearth: {r.total.model}" + (" (estimated)" if r.total.estimated else ""), r.usd_per_m,
             "tab:orange" if r.total.estimated else "tab:green") for r in mine if r.usd_per_m is not None][:15]
    bars += [(f"{p.provider}: {p.model}", b, "tab:blue") for p, b in sorted(api, key=lambda pb: pb[1] or 0.0)
             if b is not None]
    values = [v for _, v, _ in bars]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(bars) + 1.8))
    ax.barh(range(len(bars)), values, color=[c for _, _, c in bars])
    ax.set_yticks(range(len(bars)), [_plain(name)[:60] for name, _, _ in bars], fontsize=8)
    ax.invert_yaxis()
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 30:
        ax.set_xscale("log")
    ax.set_xlabel("$ per 1M tokens")
    ax.set_title("hearth (energy + hardware) beside hosted APIs' list prices", fontsize=10)
    estimated = any(r.total.estimated for r in mine)
    fig.text(0.01, 0.01, _plain(f"hearth: electricity ${price_kwh:g}/kWh + hardware ${hardware_per_hour:g}/busy hour"
                                + ("; orange: energy estimated from CPU time" if estimated else "")
                                + f". API list prices: snapshot of {snapshot.date} ({snapshot.source})."), fontsize=7)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return save_png(fig, path)
