"""Prices and money.

Money is kept as integer **nano-USD** (1e-9 USD) everywhere it is stored or summed, so ledger sums
are exact on every database. Catalog prices are Decimal USD per million tokens. A model without a
catalog price falls back to litellm's *bundled* cost map, read from the installed package's JSON file
without importing litellm (no 6 s import, no network).
"""

from __future__ import annotations

import functools
import importlib.util
import json
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

NANO = Decimal(1_000_000_000)
_PER_MTOK_TO_NANO_PER_TOKEN = Decimal(1000)  # 1 USD / 1M tokens == 1000 nano-USD / token


def usd(nano: int) -> Decimal:
    """Integer nano-USD to Decimal USD."""
    return Decimal(nano) / NANO


def to_nano(value_usd: Decimal | float | str) -> int:
    return int((Decimal(str(value_usd)) * NANO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def cost_nano(
    input_usd_per_mtok: Decimal, output_usd_per_mtok: Decimal, prompt_tokens: int, completion_tokens: int
) -> int:
    """Cost of one call in nano-USD, rounded half-up once per call."""
    exact = (
        Decimal(prompt_tokens) * input_usd_per_mtok + Decimal(completion_tokens) * output_usd_per_mtok
    ) * _PER_MTOK_TO_NANO_PER_TOKEN
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@functools.cache
def _bundled_cost_map() -> dict[str, dict[str, object]]:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "model_prices_and_context_window_backup.json"
    if not path.exists():
        return {}
    data: dict[str, dict[str, object]] = json.loads(path.read_text(encoding="utf-8"))
    return data


def litellm_price(model: str) -> tuple[Decimal, Decimal] | None:
    """(input, output) USD per million tokens from litellm's bundled map, or None if unknown."""
    cmap = _bundled_cost_map()
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for name in candidates:
        entry = cmap.get(name)
        if not entry:
            continue
        inp, out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
        if inp is None or out is None:
            continue
        million = Decimal(1_000_000)
        return Decimal(str(inp)) * million, Decimal(str(out)) * million
    return None
