"""Build (extract → validate → aggregate → render → archive) and deliver a month's cost reports."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2

from llmops.errors import InputError
from llmops.ledger import Ledger
from llmops.policy import Policy
from llmops.pricing import usd
from llmops.reports.aggregate import daily_spend, department_rows
from llmops.reports.extract import extract_month, ledger_total_nano
from llmops.settings import Settings

log = logging.getLogger("llmops.reports")
SendMail = Callable[[list[str], str, str, list[str]], None]  # (to, subject, html, attachment paths)
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


def check_month(month: str) -> str:
    if not _MONTH.match(month or ""):
        raise InputError(f"month {month!r} is not YYYY-MM", "pass a month such as 2026-10")
    return month


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    year, mon = (int(x) for x in check_month(month).split("-"))
    zone = ZoneInfo(tz)
    start = datetime(year, mon, 1, tzinfo=zone)
    end = datetime(year + (mon == 12), mon % 12 + 1, 1, tzinfo=zone)
    return start, end


def previous_month(month: str) -> str:
    year, mon = (int(x) for x in check_month(month).split("-"))
    return f"{year - 1}-12" if mon == 1 else f"{year}-{mon - 1:02d}"


def month_before(moment: datetime, tz: str) -> str:
    """The calendar month before ``moment`` in ``tz`` (what a run on the 1st reports on)."""
    local = moment.astimezone(ZoneInfo(tz))
    return (local.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")


@dataclass
class MonthlyReport:
    month: str
    folder: str
    valid: bool
    validation_summary: str
    failed_expectations: list[dict[str, Any]]
    total_cost_usd: str
    departments: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, str]] = field(default_factory=dict)
    summary_html: str | None = None
    summary_csv: str | None = None
    validation_file: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("llmops.reports", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)


def _fmt(name: str, value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name in ("availability", "error_rate"):
        return f"{value * 100:.2f} %"
    if name == "p95_latency_ms":
        return f"{value:.0f} ms"
    if name == "quality":
        return f"{value:.3f}"
    return str(value)


def build_monthly_report(
    settings: Settings, policy: Policy, ledger: Ledger, month: str, out_dir: Path | None = None
) -> MonthlyReport:
    from llmops.reports.validate import validate

    start, end = month_bounds(month, settings.timezone)
    extract = extract_month(ledger, month)
    previous = extract_month(ledger, previous_month(month))
    aggregate = department_rows(extract, previous, policy)
    total_nano = ledger_total_nano(ledger, month)
    result = validate(
        extract,
        aggregate,
        policy=policy,
        start=start,
        end=end,
        ledger_total_nano=total_nano,
        previous_rows=len(previous),
    )
    folder = out_dir or settings.data_path / "reports" / month
    folder.mkdir(parents=True, exist_ok=True)
    validation_file = folder / "validation.json"
    validation_file.write_text(
        json.dumps(
            {
                "month": month,
                "success": result.success,
                "failed": result.failed,
                "statistics": result.statistics,
                "gx": result.raw,
            },
            indent=2,
            default=str,
        )
    )
    report = MonthlyReport(
        month=month,
        folder=str(folder),
        valid=result.success,
        validation_summary=result.summary(),
        failed_expectations=result.failed,
        total_cost_usd=str(usd(total_nano)),
        validation_file=str(validation_file),
    )
    if not result.success:
        log.error("cost report %s withheld: %s", month, result.summary())
        (folder / "alert.html").write_text(_env.get_template("alert.html.j2").render(month=month, failed=result.failed))
        return report

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    days = [(start + timedelta(days=i)).strftime("%Y-%m-%d") for i in range((end - start).days)]
    common = {
        "month": month,
        "timezone": settings.timezone,
        "usd_jpy": policy.usd_jpy,
        "generated": generated,
        "validation": "passed",
        "fmt": _fmt,
    }
    records = aggregate.to_dict("records")
    for d in records:
        dept = d["department"]
        part = extract[extract["department"] == dept]
        chart = folder / f"daily_spend_{dept}.png"
        _chart(daily_spend(part, settings.timezone, days), Decimal(d["budget_usd"]), dept, month, chart)
        csv_path = folder / f"{dept}_calls.csv"
        _calls_csv(part, csv_path)
        html_path = folder / f"{dept}.html"
        html_path.write_text(
            _env.get_template("department.html.j2").render(d=d, chart_name=chart.name, **common), encoding="utf-8"
        )
        report.files[dept] = {"html": str(html_path), "csv": str(csv_path), "chart": str(chart)}
    total = {
        "requests": int(aggregate["requests"].sum()),
        "tokens": int(aggregate["tokens"].sum()),
        "cost_usd": str(usd(total_nano)),
        "cost_jpy": str((usd(total_nano) * policy.usd_jpy).quantize(Decimal("0.01"))),
    }
    summary_html = folder / "summary.html"
    summary_html.write_text(
        _env.get_template("finance.html.j2").render(departments=records, total=total, **common), encoding="utf-8"
    )
    summary_csv = folder / "summary.csv"
    aggregate.drop(columns=["kpis", "top_prompts", "top_models", "top_people"]).to_csv(summary_csv, index=False)
    report.summary_html, report.summary_csv = str(summary_html), str(summary_csv)
    report.departments = [{k: v for k, v in d.items() if k != "kpis"} | {"kpis": d["kpis"]} for d in records]
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str))
    return report


def _calls_csv(part: Any, path: Path) -> None:
    out = part[
        [
            "call_id",
            "created_at",
            "user",
            "prompt_name",
            "prompt_version",
            "model",
            "status",
            "prompt_tokens",
            "completion_tokens",
            "latency_ms",
            "cost_nanousd",
        ]
    ].copy()
    out.insert(len(out.columns) - 1, "cost_usd", [f"{usd(int(n)):.9f}" for n in out["cost_nanousd"]])
    out = out.sort_values(["created_at", "call_id"])
    out.to_csv(path, index=False)


def _chart(cumulative: Any, budget: Decimal, dept: str, month: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 3.2), dpi=100)
    x = list(range(1, len(cumulative) + 1))
    values = list(cumulative.values)
    ax.plot(x, values, color="#2563eb", linewidth=2, label="cumulative spend")
    peak = max(values) if values else 0.0
    if budget and peak >= float(budget) * 0.2:
        ax.axhline(float(budget), color="#b91c1c", linestyle="--", linewidth=1.5, label="budget")
        ax.axhline(float(budget) * 0.8, color="#d97706", linestyle=":", linewidth=1.2, label="80 % alert")
    elif budget:  # spend far below the budget: keep the spend readable, state the budget off-scale
        ax.set_ylim(0, max(peak * 1.25, 1e-6))
        ax.text(
            0.99,
            0.95,
            f"budget ${budget} (off scale; {peak / float(budget) * 100:.1f} % used)",
            transform=ax.transAxes,
            ha="right",
            va="top",
            fontsize=8,
            color="#b91c1c",
        )
    ax.set_title(f"{dept} — daily cumulative LLM spend, {month}")
    ax.set_xlabel("day of month")
    ax.set_ylabel("USD")
    ax.set_xlim(1, max(x))
    if ax.get_ylim()[0] != 0:
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def deliver_monthly_report(report: MonthlyReport | dict[str, Any], policy: Policy, send: SendMail) -> dict[str, Any]:
    """Mail each department its report and finance the summary — or, if validation failed, only the alert."""
    r = MonthlyReport(**report) if isinstance(report, dict) else report
    if not r.valid:
        alert = Path(r.folder) / "alert.html"
        send(
            policy.admins,
            f"[llmops] cost report {r.month} withheld: data validation failed",
            alert.read_text(encoding="utf-8"),
            [r.validation_file],
        )
        return {"sent": [], "alert": policy.admins}
    sent = []
    for dept, files in r.files.items():
        cfg = policy.departments.get(dept)
        if cfg is None:
            continue
        to = list(dict.fromkeys([*cfg.recipients, *([cfg.head] if cfg.head else [])]))
        if not to:
            log.warning("department %s has no report recipients; archived only", dept)
            continue
        send(
            to,
            f"[llmops] LLM cost report {r.month} — {dept}",
            Path(files["html"]).read_text(encoding="utf-8"),
            [files["chart"], files["csv"]],
        )
        sent.append(dept)
    if policy.finance and r.summary_html and r.summary_csv:
        send(
            policy.finance,
            f"[llmops] LLM cost summary {r.month} — all departments",
            Path(r.summary_html).read_text(encoding="utf-8"),
            [r.summary_csv],
        )
        sent.append("finance")
    return {"sent": sent, "alert": []}
