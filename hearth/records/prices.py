"""API list prices to hold hearth's cost against: a dated snapshot shipped with hearth, never fetched.

data/prices.json holds input and output prices per 1M tokens of a handful of hosted models comparable to what
hearth serves (small and cheap tiers, hosted Llama 3.x 8B and 70B), taken from the data of the MIT-licensed
genai-prices package (notice in data/genai-prices.LICENSE) by data/make_prices.py, which says how to redo it and
how the snapshot's date was found. List prices change: every figure shown from here names that date.

CostRow prices a ledger total the same way, per 1M tokens: its energy at a price per kWh plus the hardware's cost
per hour spread over the busy hours, so `hearth cost` can set the two side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hearth.errors import HearthError
from hearth.records.ledger import Total
from hearth import safejson

PRICES_FILE = Path(__file__).resolve().parent / "data" / "prices.json"


@dataclass(frozen=True)
class ApiPrice:
    """One hosted model's list price in US dollars per 1M tokens."""

    provider: str
    model: str
    input_per_m: float
    output_per_m: float

    def blended(self, input_share: float) -> float:
        """$ per 1M tokens when `input_share` of the tokens (0..1) are prompt tokens and the rest completion."""
        return input_share * self.input_per_m + (1 - input_share) * self.output_per_m


@dataclass(frozen=True)
class PriceSnapshot:
    date: str  # ISO day the prices were taken
    source: str  # "genai-prices 0.2.5"
    models: list[ApiPrice]


def load_prices(path: Path = PRICES_FILE) -> PriceSnapshot:
    """The snapshot in `path` (the one shipped with hearth by default)."""
    try:
        doc = safejson.read(Path(path), max_bytes=1 << 20)
        models = [ApiPrice(str(m["provider"]), str(m["model"]), float(m["input_per_m"]), float(m["output_per_m"]))
                  for m in doc["models"]]
        return PriceSnapshot(str(doc["date"]), f"{doc['source']} {doc['version']}", models)
    except HearthError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise HearthError(f"the API price snapshot {path} cannot be read ({type(e).__name__}: {e}); reinstall "
                          "hearth") from None


@dataclass(frozen=True)
class CostRow:
    """A ledger total priced: energy at `price_kwh` $/kWh plus hardware at `hardware_per_hour` $ per busy hour.
    Per-token figures are None where the row has no tokens."""

    total: Total
    price_kwh: float
    hardware_per_hour: float

    @property
    def energy_usd(self) -> float:
        return self.total.kwh * self.price_kwh

    @property
    def hardware_usd(self) -> float:
        return self.total.busy_seconds / 3600 * self.hardware_per_hour

    def _per_m(self, amount: float) -> float | None:
        return amount / self.total.tokens * 1e6 if self.total.tokens else None

    @property
    def kwh_per_m(self) -> float | None:
        return self._per_m(self.total.kwh)

    @property
    def usd_per_m(self) -> float | None:
        return self._per_m(self.energy_usd + self.hardware_usd)

    def to_json(self) -> dict:
        t = self.total
        return {"model": t.model, "adapter": t.adapter, "key_id": t.key_id, "energy_source": t.energy_source,
                "estimated": t.estimated, "requests": t.requests, "prompt_tokens": t.prompt_tokens,
                "completion_tokens": t.completion_tokens, "tokens": t.tokens, "busy_seconds": t.busy_seconds,
                "joules": t.joules, "kwh": t.kwh, "joules_per_token": t.joules_per_token,
                "kwh_per_m_tokens": self.kwh_per_m, "energy_usd": self.energy_usd, "hardware_usd": self.hardware_usd,
                "energy_usd_per_m_tokens": self._per_m(self.energy_usd),
                "hardware_usd_per_m_tokens": self._per_m(self.hardware_usd), "usd_per_m_tokens": self.usd_per_m}


def sum_totals(totals: list[Total], model: str = "(all)") -> Total:
    """All of `totals` as one (sources joined with '+'; estimated if any part is)."""
    return Total(model, None, "", sum(t.requests for t in totals), sum(t.prompt_tokens for t in totals),
                 sum(t.completion_tokens for t in totals), sum(t.busy_seconds for t in totals),
                 sum(t.joules for t in totals), "+".join(sorted({t.energy_source for t in totals})),
                 any(t.estimated for t in totals))


def input_share(totals: list[Total]) -> float | None:
    """The share of prompt tokens among all tokens of `totals` (None with no tokens): the mix API prices are
    blended at, so both sides price the same work."""
    tokens = sum(t.tokens for t in totals)
    return sum(t.prompt_tokens for t in totals) / tokens if tokens else None
