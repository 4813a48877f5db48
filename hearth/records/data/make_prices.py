"""Regenerate prices.json (and genai-prices.LICENSE) beside this file from a genai-prices wheel.

    pip download genai-prices==0.2.5 --no-deps -d /tmp/gp
    python hearth/records/data/make_prices.py /tmp/gp/genai_prices-0.2.5-py3-none-any.whl --date 2026-11-19

The wheel's genai_prices/data.py (a Python list of Provider(...) calls) is read with `ast`: nothing from the
download is imported or run. Each model of WANTED gets its standard input and output price per 1M tokens as in
force on --date: of conditional prices, the last one whose start date has come (time-of-day discounts are left
out); of tiered prices, the base tier (prompts under the long-context threshold).

--date is the day the wheel was uploaded to PyPI, which its files do not carry (their zip dates are a fixed
2020-02-02). For 0.2.5 it was found with pip itself: `pip download genai-prices==0.2.5 --no-deps
--uploaded-prior-to 2026-11-20T00:00:00Z` finds the wheel, the same with 2026-11-19T00:00:00Z does not, so it was
uploaded on 2026-11-19 (UTC); the latest verification its data mentions ("verified on 2026-11-19") agrees.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import json
import re
import zipfile
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (provider id, model id) in genai-prices: small and cheap tiers, and hosted Llama 3.x 8B and 70B, the models that
# compare with what hearth serves.
WANTED = [
    ("openai", "gpt-4o-mini"),
    ("openai", "gpt-4.1-nano"),
    ("anthropic", "claude-3-haiku"),
    ("anthropic", "claude-3-5-haiku-latest"),
    ("google", "gemini-2.5-flash-lite"),
    ("groq", "llama-3.1-8b-instant"),
    ("groq", "llama-3.3-70b-versatile"),
    ("together", "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"),
    ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ("fireworks", "llama-v3p1-8b-instruct"),
]


def literal(node: ast.AST):
    """The value of a data.py expression: constants, lists, Decimal(...), datetime.date(...), and any other call
    as a dict {"_type": its name, **its keyword arguments}."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {literal(k): literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -literal(node.operand)
    if isinstance(node, ast.Attribute):
        return ast.unparse(node)
    if isinstance(node, ast.Call):
        name, args = ast.unparse(node.func), [literal(a) for a in node.args]
        if name == "Decimal":
            return Decimal(args[0])
        if name == "datetime.date":
            return datetime.date(*args)
        return {"_type": name, "_args": args, **{k.arg: literal(k.value) for k in node.keywords}}
    raise ValueError(f"unexpected expression in data.py: {ast.unparse(node)[:80]}")


def providers(source: str) -> list[dict]:
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "providers":
            return literal(node.value)
    raise ValueError("no `providers` list in data.py")


def price_on(prices, day: datetime.date) -> dict:
    """The ModelPrice (as a dict) in force on `day`."""
    if isinstance(prices, dict):
        return prices
    chosen = prices[0]["prices"]
    for conditional in prices:
        c = conditional.get("constraint")
        if c is None or (c["_type"] == "StartDateConstraint" and c["start_date"] <= day):
            chosen = conditional["prices"]
    return chosen


def per_m(value) -> float:
    if isinstance(value, dict) and value.get("_type") == "TieredPrices":
        value = value["base"]
    if not isinstance(value, Decimal):
        raise ValueError(f"not a plain price: {value!r}")
    return float(value)


def snapshot(wheel: Path, day: datetime.date) -> tuple[dict, str]:
    """The prices.json document and the licence text, from the wheel."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        data = z.read("genai_prices/data.py").decode("utf-8")
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode("utf-8")
        licence = z.read(next(n for n in names if re.search(r"\.dist-info/(licenses/)?LICENSE", n))).decode("utf-8")
    version = re.search(r"^Version: (\S+)$", meta, re.M).group(1)
    found = {(p["id"], m["id"]): (p, m) for p in providers(data) for m in p.get("models", [])}
    models = []
    for key in WANTED:
        provider, model = found[key]
        price = price_on(model["prices"], day)
        models.append({"provider": provider["id"], "provider_name": provider.get("name") or provider["id"],
                       "model": model["id"], "name": model.get("name") or model["id"],
                       "input_per_m": per_m(price["input_mtok"]), "output_per_m": per_m(price["output_mtok"])})
    doc = {
        "source": "genai-prices", "version": version, "date": day.isoformat(),
        "date_note": f"the day genai-prices {version} was uploaded to PyPI (see make_prices.py)",
        "licence": "MIT; the notice is in genai-prices.LICENSE beside this file",
        "unit": "US dollars per 1M tokens: standard tier, prompts under any long-context threshold",
        "models": models,
    }
    return doc, licence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("--date", required=True, type=datetime.date.fromisoformat, help="the wheel's upload day")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    doc, licence = snapshot(args.wheel, args.date)
    (args.out / "prices.json").write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (args.out / "genai-prices.LICENSE").write_text(licence, encoding="utf-8")
    for m in doc["models"]:
        print(f"{m['provider']:>10} {m['model']:<45} {m['input_per_m']:>6} {m['output_per_m']:>6}")


if __name__ == "__main__":
    main()
