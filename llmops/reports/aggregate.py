"""Per-department aggregation of a month's ledger extract (pandas), with the seed's KPIs."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pandas as pd

from llmops.policy import Policy
from llmops.pricing import usd

#: The seed article's technical KPIs: (name, target text, check)
KPI_TARGETS = {
    "p95_latency_ms": ("<= 2000 ms", lambda v: v is not None and v <= 2000),
    "availability": (">= 99.9 %", lambda v: v is not None and v >= 0.999),
    "quality": (">= 0.85", lambda v: v is not None and v >= 0.85),
    "within_budget": ("spent <= budget", lambda v: bool(v)),
    "error_rate": ("< 1 %", lambda v: v is not None and v < 0.01),
}


def _top(frame: pd.DataFrame, column: str, n: int = 3) -> list[dict[str, Any]]:
    if frame.empty:
        return []
    sums = frame.groupby(column)["cost_nanousd"].sum().sort_values(ascending=False).head(n)
    return [{"name": str(k), "cost_usd": str(usd(int(v)))} for k, v in sums.items() if int(v) > 0]


def department_rows(extract: pd.DataFrame, previous: pd.DataFrame, policy: Policy) -> pd.DataFrame:
    rows = []
    for dept, cfg in sorted(policy.departments.items()):
        part = extract[extract["department"] == dept]
        prev_nano = int(previous.loc[previous["department"] == dept, "cost_nanousd"].sum()) if len(previous) else 0
        rows.append(_one(dept, part, prev_nano, cfg.monthly_budget_usd, policy.usd_jpy))
    # departments found in the ledger but unknown to the policy still appear (validation flags them)
    for dept in sorted(set(extract["department"].dropna()) - set(policy.departments)):
        rows.append(_one(dept, extract[extract["department"] == dept], 0, Decimal(0), policy.usd_jpy))
    return pd.DataFrame(rows)


def _one(dept: str, part: pd.DataFrame, prev_nano: int, budget: Decimal, usd_jpy: Decimal) -> dict[str, Any]:
    nano = int(part["cost_nanousd"].sum())
    cost = usd(nano)
    called = part[part["status"].isin(["ok", "failed"]) & part["model"].notna()]
    ok = part[part["status"] == "ok"]
    failed = int((part["status"] == "failed").sum())
    latency_p95 = float(ok["latency_ms"].quantile(0.95)) if len(ok) else None
    quality = float(ok["quality_score"].dropna().mean()) if ok["quality_score"].notna().any() else None
    redacted = int(sum(1 for f in part["findings"] if f and json.loads(f)))
    error_rate = failed / len(called) if len(called) else None
    availability = 1 - error_rate if error_rate is not None else None
    kpis = {
        "p95_latency_ms": latency_p95,
        "availability": availability,
        "quality": quality,
        "within_budget": cost <= budget if budget else None,
        "error_rate": error_rate,
    }
    return {
        "department": dept,
        "requests": len(part),
        "calls": len(called),
        "prompt_tokens": int(part["prompt_tokens"].sum()),
        "completion_tokens": int(part["completion_tokens"].sum()),
        "tokens": int(part["prompt_tokens"].sum() + part["completion_tokens"].sum()),
        "cost_nanousd": nano,
        "cost_usd": str(cost),
        "cost_jpy": str((cost * usd_jpy).quantize(Decimal("0.01"))),
        "budget_usd": str(budget),
        "pct_used": float(cost / budget * 100) if budget else None,
        "previous_cost_usd": str(usd(prev_nano)),
        "change_pct": float((nano - prev_nano) / prev_nano * 100) if prev_nano else None,
        "top_prompts": _top(part, "prompt_name"),
        "top_models": _top(part[part["model"].notna()], "model"),
        "top_people": _top(part, "user"),
        "error_rate": error_rate,
        "p95_latency_ms": latency_p95,
        "avg_quality": quality,
        "ok": int((part["status"] == "ok").sum()),
        "blocked": int((part["status"] == "blocked").sum()),
        "denied": int((part["status"] == "denied").sum()),
        "failed": failed,
        "redacted": redacted,
        "kpis": [
            {
                "name": k,
                "value": v,
                "target": KPI_TARGETS[k][0],
                "status": "n/a" if v is None else ("ok" if KPI_TARGETS[k][1](v) else "breach"),
            }
            for k, v in kpis.items()
        ],
    }


def daily_spend(part: pd.DataFrame, tz: str, days: list[str]) -> pd.Series:
    """Cumulative spend in USD per day of the month (in the budget timezone)."""
    if part.empty:
        return pd.Series([0.0] * len(days), index=days)
    local_days = part["created_at"].dt.tz_convert(tz).dt.strftime("%Y-%m-%d")
    per_day = part.groupby(local_days)["cost_nanousd"].sum().reindex(days, fill_value=0)
    return (per_day.cumsum() / 1e9).astype(float)
