"""Data quality of the ledger extract and of the aggregate, checked with Great Expectations 1.x.

The suite runs in an ephemeral context created per call (names are unique per context). The result is
kept as JSON with the report; on failure the report is withheld and the admins are alerted with the
failed expectations and example rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from llmops.policy import Policy
from llmops.pricing import cost_nano

COST_TOLERANCE_NANO = 1_000  # 1e-6 USD absolute …
COST_TOLERANCE_RATIO = 0.01  # … or 1 %, whichever is larger


@dataclass
class Validation:
    success: bool
    failed: list[dict[str, Any]] = field(default_factory=list)  # {"expectation", "column", "examples"}
    statistics: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        if self.success:
            return "all expectations met"
        return "; ".join(f"{f['expectation']}({f.get('column') or ''})" for f in self.failed)


def cost_error(df: pd.DataFrame, policy: Policy) -> pd.Series:
    """Per row: |cost − tokens × catalog price| minus the tolerance (≤ 0 is consistent, NaN = unpriced)."""
    errors = []
    for model, pt, ct, cost in zip(
        df["model"], df["prompt_tokens"], df["completion_tokens"], df["cost_nanousd"], strict=True
    ):
        if model is None or (isinstance(model, float) and pd.isna(model)):
            expected = 0
        elif model in policy.models:
            inp, out = policy.models[model].price()
            expected = cost_nano(inp, out, int(pt), int(ct))
        else:
            errors.append(float("nan"))
            continue
        tolerance = max(COST_TOLERANCE_NANO, abs(expected) * COST_TOLERANCE_RATIO)
        errors.append(abs(int(cost) - expected) - tolerance)
    return pd.Series(errors, index=df.index, dtype="float64")


def validate(
    extract: pd.DataFrame,
    aggregate: pd.DataFrame,
    *,
    policy: Policy,
    start: datetime,
    end: datetime,
    ledger_total_nano: int,
    previous_rows: int,
) -> Validation:
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = ctx.data_sources.add_pandas(name="ledger")

    df = extract.copy()
    df["created_epoch"] = df["created_at"].map(lambda t: t.timestamp()) if len(df) else pd.Series(dtype="float64")
    df["cost_error_nano"] = cost_error(df, policy) if len(df) else pd.Series(dtype="float64")
    lo, hi = _plausible_rows(previous_rows)
    extract_suite = gx.ExpectationSuite(
        name="ledger_extract",
        expectations=[
            *[
                gxe.ExpectColumnValuesToNotBeNull(column=c)
                for c in ("call_id", "department", "status", "created_at", "cost_nanousd", "prompt_name")
            ],
            gxe.ExpectColumnValuesToBeBetween(column="cost_nanousd", min_value=0),
            gxe.ExpectColumnValuesToBeUnique(column="call_id"),
            gxe.ExpectColumnValuesToBeInSet(column="department", value_set=sorted(policy.departments)),
            gxe.ExpectColumnValuesToBeBetween(
                column="created_epoch", min_value=start.timestamp(), max_value=end.timestamp(), strict_max=True
            ),
            gxe.ExpectColumnValuesToNotBeNull(column="cost_error_nano"),
            gxe.ExpectColumnValuesToBeBetween(column="cost_error_nano", max_value=0),
            gxe.ExpectTableRowCountToBeBetween(min_value=lo, max_value=hi),
        ],
    )
    agg_suite = gx.ExpectationSuite(
        name="department_aggregate",
        expectations=[
            gxe.ExpectColumnSumToBeBetween(
                column="cost_nanousd", min_value=ledger_total_nano, max_value=ledger_total_nano
            ),
            gxe.ExpectColumnValuesToBeBetween(column="requests", min_value=0),
            gxe.ExpectColumnValuesToBeUnique(column="department"),
        ],
    )
    results = []
    for name, frame, suite in (("extract", df, extract_suite), ("aggregate", aggregate, agg_suite)):
        batch = (
            source.add_dataframe_asset(name=name)
            .add_batch_definition_whole_dataframe("all")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        results.append((name, frame, batch.validate(suite, result_format="COMPLETE")))

    failed: list[dict[str, Any]] = []
    raw: dict[str, Any] = {}
    stats = {"evaluated": 0, "successful": 0}
    for name, frame, res in results:
        raw[name] = res.to_json_dict()
        stats["evaluated"] += res.statistics["evaluated_expectations"]
        stats["successful"] += res.statistics["successful_expectations"]
        for r in res.results:
            if r.success:
                continue
            config = r.expectation_config  # a failure is never dropped, even without its configuration
            column = config.kwargs.get("column") if config is not None else None
            failed.append(
                {
                    "suite": name,
                    "expectation": config.type if config is not None else "unknown",
                    "column": column,
                    "unexpected_count": r.result.get("unexpected_count"),
                    "observed": _jsonable(r.result.get("observed_value")),
                    "examples": _examples(frame, r.result.get("unexpected_index_list")),
                }
            )
    return Validation(success=not failed, failed=failed, statistics=stats, raw=raw)


def _plausible_rows(previous_rows: int) -> tuple[int, int]:
    """A month with at least 50 rows before: expect between a tenth and ten times as many."""
    if previous_rows >= 50:
        return previous_rows // 10, previous_rows * 10
    return 0, max(100_000, previous_rows * 10)


def _examples(frame: pd.DataFrame, index: Any, limit: int = 3) -> list[dict[str, Any]]:
    if not index:
        return []
    keep = ["call_id", "department", "status", "model", "cost_nanousd", "created_at"]
    cols = [c for c in keep if c in frame.columns] or list(frame.columns)[:6]
    rows = frame.loc[[i for i in list(index)[:limit] if i in frame.index], cols]
    return [{k: _jsonable(v) for k, v in rec.items()} for rec in rows.to_dict("records")]


def _jsonable(v: Any) -> Any:
    if isinstance(v, pd.Timestamp | datetime):
        return v.isoformat()
    if hasattr(v, "item"):
        return v.item()
    return v
