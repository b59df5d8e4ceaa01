"""The LLMOps page: where the money and the quality stand, read from the ledger.

Budgets per department with their alert line, spend per day, top prompts and models by cost,
quarantined records to review (finding types and counts only — never record text) and the latest
nightly results per prompt version with links to their MLflow runs. Served by the Airflow plugin
(``plugins/llmops_plugin.py``) as server-rendered HTML and as JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from sqlalchemy import func, select

from llmops.budget import budget_month
from llmops.ledger import Ledger, LlmCall, Quarantine
from llmops.metrics import budget_lines, latest_evaluations
from llmops.policy import Policy
from llmops.pricing import usd

SPEND_DAYS = 14
TOP_N = 5
QUARANTINE_ROWS = 50


@dataclass(frozen=True)
class BudgetView:
    department: str
    limit_usd: Decimal
    spent_usd: Decimal
    reserved_usd: Decimal
    used_pct: float
    alert_pct: float  # the first alert threshold, e.g. 80.0
    state: str  # ok | alert | exhausted


@dataclass(frozen=True)
class CostRow:
    name: str
    requests: int
    cost_usd: Decimal


@dataclass(frozen=True)
class EvalView:
    prompt: str
    version: str
    model: str
    night: str
    overall: float
    pass_rate: float
    cases: int
    below_min: bool
    mlflow_run_id: str | None
    mlflow_url: str | None


@dataclass
class Dashboard:
    month: str
    timezone: str
    generated: str
    budgets: list[BudgetView]
    spend_days: list[tuple[str, Decimal]]
    top_prompts: list[CostRow]
    top_models: list[CostRow]
    quarantine: list[dict[str, Any]]
    quarantine_total: int
    evaluations: list[EvalView]
    totals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def build(
    ledger: Ledger,
    policy: Policy,
    timezone: str,
    *,
    mlflow_ui: str | None = None,
    quality_min: float = 0.7,
    now: datetime | None = None,
) -> Dashboard:
    now = now or datetime.now(UTC)
    tz = ZoneInfo(timezone)
    month = budget_month(timezone, now)
    budgets = []
    for line in budget_lines(ledger, policy, month):
        alert = min(line.thresholds) if line.thresholds else 0.8
        pct = line.used_ratio * 100
        state = "exhausted" if pct >= 100 else ("alert" if pct >= alert * 100 else "ok")
        budgets.append(
            BudgetView(
                line.department,
                usd(line.limit_nanousd),
                usd(line.spent_nanousd),
                usd(line.reserved_nanousd),
                round(pct, 2),
                round(alert * 100, 1),
                state,
            )
        )

    with ledger.transaction() as s:
        # spend per day in the platform's timezone (summed in Python: date functions differ per database)
        today = now.astimezone(tz).date()
        first_day = today - timedelta(days=SPEND_DAYS - 1)
        since = datetime.combine(first_day, datetime.min.time(), tz).astimezone(UTC)
        days: dict[str, int] = {(first_day + timedelta(days=i)).isoformat(): 0 for i in range(SPEND_DAYS)}
        for created, nano in s.execute(
            select(LlmCall.created_at, LlmCall.cost_nanousd).where(
                LlmCall.created_at >= since, LlmCall.cost_nanousd > 0
            )
        ):
            day = created.astimezone(tz).date().isoformat()
            if day in days:
                days[day] += int(nano)

        def top(column: Any) -> list[CostRow]:
            cost = func.coalesce(func.sum(LlmCall.cost_nanousd), 0)
            stmt = (
                select(column, func.count(), cost)
                .where(LlmCall.budget_month == month, column.is_not(None))
                .group_by(column)
                .order_by(cost.desc(), column)
                .limit(TOP_N)
            )
            return [CostRow(str(name), int(n), usd(int(c))) for name, n, c in s.execute(stmt)]

        top_prompts = top(LlmCall.prompt_name)
        top_models = top(LlmCall.model)
        total_nano, total_n = s.execute(
            select(func.coalesce(func.sum(LlmCall.cost_nanousd), 0), func.count()).where(LlmCall.budget_month == month)
        ).one()
        waiting = Quarantine.released_at.is_(None)  # released records have been reviewed
        q_total = int(s.scalar(select(func.count()).select_from(Quarantine).where(waiting)) or 0)
        quarantine = [
            {
                "created_at": q.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M"),
                "department": q.department,
                "user": q.user,
                "prompt": f"{q.prompt_name}@{q.prompt_version}",
                "run_id": q.run_id,
                "record_key": q.record_key,
                "status": q.status,
                "rule": q.rule,
                "findings": ", ".join(f"{k}×{v}" for k, v in sorted(json.loads(q.findings or "{}").items())),
            }
            for q in s.scalars(
                select(Quarantine).where(waiting).order_by(Quarantine.created_at.desc()).limit(QUARANTINE_ROWS)
            )
        ]

    evaluations = [
        EvalView(
            r.prompt_name,
            r.prompt_version,
            r.model,
            r.night,
            round(r.overall, 4),
            round(r.pass_rate, 4),
            r.cases,
            r.overall < quality_min,
            r.mlflow_run_id,
            f"{mlflow_ui}/#/runs/{r.mlflow_run_id}" if mlflow_ui and r.mlflow_run_id else None,
        )
        for r in latest_evaluations(ledger)
    ]
    return Dashboard(
        month=month,
        timezone=timezone,
        generated=now.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"),
        budgets=budgets,
        spend_days=[(d, usd(n)) for d, n in days.items()],
        top_prompts=top_prompts,
        top_models=top_models,
        quarantine=quarantine,
        quarantine_total=q_total,
        evaluations=evaluations,
        totals={"requests": int(total_n), "cost_usd": usd(int(total_nano))},
    )


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("llmops", "templates"),
    autoescape=jinja2.select_autoescape(default=True),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render_html(board: Dashboard, *, user: str) -> str:
    peak = max((float(v) for _, v in board.spend_days), default=0.0)
    return _env.get_template("dashboard.html.j2").render(b=board, user=user, peak=peak or 1.0, money=money)


def money(value: Decimal) -> str:
    """USD with enough digits for simulator-sized costs (never rounds a non-zero cost to 0)."""
    return f"{value:.6f}" if value < 1 else f"{value:,.2f}"
