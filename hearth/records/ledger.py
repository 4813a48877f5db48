"""The cost ledger: what serving cost in energy, per model, adapter and API key, kept in SQLite.

The server measures each request with an `Accountant` (a begin/end pair around it, read off an
`energy.EnergyMeter`); the ledger keeps one row per hour × model × adapter × key × energy source, added to as
requests end (an upsert), so the table stays small however many requests it counts and `hearth cost --since`
works to the hour. `render_prometheus` turns the totals into Prometheus counters for /metrics.

The file lives at $HEARTH_HOME/ledger.sqlite unless the caller names another; this module takes the path and
leaves finding the home to the CLI and the server. WAL lets `hearth cost` read while the server writes.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from hearth.errors import HearthError
from hearth.records.energy import EnergyMeter

log = logging.getLogger("hearth")

LEDGER_FILE = "ledger.sqlite"
SCHEMA_VERSION = 1
MAX_NAME = 200  # characters kept of a model, adapter or key name
MAX_COUNT = 1 << 48  # tokens in one row: far beyond any request, far below SQLite's 2**63 when summed
J_PER_KWH = 3.6e6

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    hour INTEGER NOT NULL,                -- unix time // 3600 (UTC)
    model TEXT NOT NULL,
    adapter TEXT NOT NULL,                -- '' for none
    key_id TEXT NOT NULL,
    source TEXT NOT NULL,                 -- rapl, nvml, estimate
    estimated INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    busy_seconds REAL NOT NULL,
    joules REAL NOT NULL,
    PRIMARY KEY (hour, model, adapter, key_id, source)
) WITHOUT ROWID
"""

UPSERT = """
INSERT INTO usage VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)
ON CONFLICT (hour, model, adapter, key_id, source) DO UPDATE SET
    estimated = max(estimated, excluded.estimated),
    requests = requests + 1,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    busy_seconds = busy_seconds + excluded.busy_seconds,
    joules = joules + excluded.joules
"""


def default_path(home: Path) -> Path:
    """Where the ledger of the hearth home `home` lives."""
    return Path(home) / LEDGER_FILE


@dataclass(frozen=True)
class Total:
    """What one model (with one adapter, or none) cost for one API key, measured by one energy source."""

    model: str
    adapter: str | None
    key_id: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    busy_seconds: float
    joules: float
    energy_source: str
    estimated: bool

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def joules_per_token(self) -> float | None:
        return self.joules / self.tokens if self.tokens else None

    @property
    def kwh(self) -> float:
        return self.joules / J_PER_KWH


def _name(value: str | None, what: str, optional: bool = False) -> str:
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    return value[:MAX_NAME]


def _count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{what} must be a whole number from 0 to {MAX_COUNT}, not {value!r}")
    return value


def _amount(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        raise ValueError(f"{what} must be a finite number >= 0, not {value!r}")
    return float(value)


class Ledger:
    """The ledger file at `path` (made with its folder if absent). `busy_timeout`: seconds a write waits for
    another writer's lock before it fails; keep it short where a server thread waits on it."""

    def __init__(self, path: Path, busy_timeout: float = 1.0):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise HearthError(f"cannot open the cost ledger {self.path} ({e}); pass --ledger elsewhere") from None
        try:
            self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise HearthError(f"the cost ledger {self.path} was written by a newer hearth (schema {version}, "
                                  f"this one reads {SCHEMA_VERSION}); upgrade hearth")
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash loses at most the last rows, never the file
            if version < SCHEMA_VERSION:
                self.db.execute(SCHEMA)
                self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as e:
            self.db.close()
            raise HearthError(f"the cost ledger {self.path} cannot be used ({' '.join(str(e).split())}); it is "
                              "not a hearth ledger or it is damaged: move it away and a new one is started") from None

    def add(self, *, model: str, adapter: str | None, key_id: str, prompt_tokens: int, completion_tokens: int,
            busy_seconds: float, joules: float, energy_source: str, estimated: bool, when: float | None = None) -> None:
        """Count one request, ended at unix time `when` (now by default), into its hour's row. Names over
        MAX_NAME characters are cut there; a negative, non-finite or mistyped number raises ValueError; a locked,
        read-only or full database raises sqlite3.Error."""
        when = time.time() if when is None else _amount(when, "when")
        row = (int(when // 3600), _name(model, "model"), _name(adapter, "adapter", optional=True),
               _name(key_id, "key_id"), _name(energy_source, "energy_source"), int(bool(estimated)),
               _count(prompt_tokens, "prompt_tokens"), _count(completion_tokens, "completion_tokens"),
               _amount(busy_seconds, "busy_seconds"), _amount(joules, "joules"))
        with self._lock:
            self.db.execute(UPSERT, row)

    def totals(self, since: float | None = None, until: float | None = None) -> list[Total]:
        """The sums per (model, adapter, key_id, energy source) over the whole hours that overlap [since, until)
        (unix times; None: no bound), sorted by those names."""
        where, args = [], []
        if since is not None:
            where.append("hour >= ?")
            args.append(math.floor(since / 3600))
        if until is not None:
            where.append("hour * 3600 < ?")
            args.append(until)
        sql = ("SELECT model, adapter, key_id, sum(requests), sum(prompt_tokens), sum(completion_tokens), "
               "sum(busy_seconds), sum(joules), source, max(estimated) FROM usage"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " GROUP BY model, adapter, key_id, source ORDER BY model, adapter, key_id, source")
        try:
            with self._lock:
                rows = self.db.execute(sql, args).fetchall()
        except sqlite3.Error as e:
            raise HearthError(f"cannot read the cost ledger {self.path} ({' '.join(str(e).split())})") from None
        return [Total(m, a or None, k, r, p, c, b, j, s, bool(e)) for m, a, k, r, p, c, b, j, s, e in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()


@dataclass(eq=False)
class Ticket:
    """One request being measured: when it began (time.monotonic) and the meter's reading then."""

    start: float
    joules: float
    ended: bool = field(default=False, repr=False)


class Accountant:
    """Charges each request the energy and time the server was busy while it ran, counting every busy moment once.

    When a request ends, the span not yet charged runs from the later of the last end and the earliest start of
    the requests still in flight (itself included) up to now: every instant the server was busy with something is
    charged to exactly one request, so the total is exact, while its split among overlapping requests is
    approximate (a request that ends first carries the shared span so far). Time with nothing in flight is never
    charged. A ticket dropped without end() leaves the in-flight set with it (a weak set), so it cannot hold the
    mark back.

    Thread-safe, and it never raises into the server: a failed meter read or a ledger write that fails (locked,
    full, read-only) logs a warning on the "hearth" logger and the request goes unrecorded.
    """

    WARN_EVERY = 60.0  # seconds between warnings while rows keep being dropped

    def __init__(self, ledger: Ledger, meter: EnergyMeter, clock=time.monotonic):
        self.ledger = ledger
        self.meter = meter
        self.clock = clock
        self._lock = threading.Lock()
        self._in_flight: weakref.WeakSet[Ticket] = weakref.WeakSet()
        self._mark: tuple[float, float] | None = None  # (monotonic time, meter reading) at the last end()
        self.dropped = 0
        self._warn_lock = threading.Lock()
        self._warned_at: float | None = None
        self._dropped_since_warning = 0

    def _read(self) -> float | None:
        try:
            return self.meter.read()
        except Exception as e:  # a meter must not take a request down with it
            self._warn(f"cost ledger: the {self.meter.source} energy meter failed ({e})")
            return None

    def begin(self) -> Ticket:
        """Note the time and the meter's reading as a request starts."""
        with self._lock:
            reading = self._read()
            ticket = Ticket(self.clock(), math.nan if reading is None else reading)
            self._in_flight.add(ticket)
            return ticket

    def end(self, ticket: Ticket, *, model: str, adapter: str | None, key_id: str, prompt_tokens: int,
            completion_tokens: int) -> None:
        """Charge the request of `ticket` and record it in the ledger. Ending a ticket twice records nothing."""
        try:
            with self._lock:
                if ticket.ended:
                    return
                ticket.ended = True
                now, reading = self.clock(), self._read()
                first = min([*self._in_flight, ticket], key=lambda t: t.start)
                t0, j0 = first.start, first.joules
                if self._mark is not None and self._mark[0] > t0:
                    t0, j0 = self._mark
                self._in_flight.discard(ticket)
                if reading is not None:
                    self._mark = (now, reading)
            busy = max(0.0, now - t0)
            joules = reading - j0 if reading is not None and math.isfinite(j0) else 0.0
            self.ledger.add(model=model, adapter=adapter, key_id=key_id, prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens, busy_seconds=busy, joules=max(0.0, joules),
                            energy_source=self.meter.source, estimated=self.meter.estimated)
        except Exception as e:  # sqlite3.Error (locked, full, read-only), ValueError (a bad count): never the server's
            self.dropped += 1
            self._warn(f"cost ledger: a request was not recorded ({' '.join(str(e).split())})", dropped=True)

    def _warn(self, message: str, dropped: bool = False) -> None:
        with self._warn_lock:
            now = time.monotonic()
            self._dropped_since_warning += dropped
            if self._warned_at is not None and now - self._warned_at < self.WARN_EVERY:
                return
            more = self._dropped_since_warning - dropped
            self._warned_at, self._dropped_since_warning = now, 0
        log.warning(message + (f"; {more} more since the last warning" if more > 0 else ""))


_METRICS = (
    ("requests", "requests_total", "Requests served, counted by the cost ledger."),
    ("prompt_tokens", "prompt_tokens_total", "Prompt tokens of the requests counted by the cost ledger."),
    ("completion_tokens", "completion_tokens_total", "Completion tokens of the requests counted by the cost ledger."),
    ("busy_seconds", "busy_seconds_total", "Seconds the server was busy, each charged to one request."),
    ("joules", "energy_joules_total", "Energy of the busy time in joules (estimated=\"true\": from CPU time, not "
                                      "a hardware counter)."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_prometheus(totals: list[Total]) -> str:
    """The totals as Prometheus text-format counters (hearth_ledger_*_total), labelled model, adapter, key_id,
    source and estimated; HELP and TYPE lines for each, even with no totals. Ends in a newline."""
    out = []
    for attr, suffix, help_text in _METRICS:
        name = f"hearth_ledger_{suffix}"
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} counter")
        for t in totals:
            labels = ",".join(f'{k}="{_label(v)}"' for k, v in (
                ("model", t.model), ("adapter", t.adapter or ""), ("key_id", t.key_id), ("source", t.energy_source),
                ("estimated", "true" if t.estimated else "false")))
            value = getattr(t, attr)
            out.append(f"{name}{{{labels}}} {value if isinstance(value, int) else repr(float(value))}")
    return "\n".join(out) + "\n"
