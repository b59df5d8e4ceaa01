"""monthly_cost_report: per-department LLM cost reports for the previous month, validated, then mailed.

Wiring only. Scheduled on the 1st of each month in the budget timezone (LLMOPS_TIMEZONE); trigger it
with ``month=YYYY-MM`` to (re)build a past month — the same ledger gives the same report.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.trigger import CronTriggerTimetable

TZ = pendulum.timezone(os.environ.get("LLMOPS_TIMEZONE", "Asia/Tokyo"))


@dag(
    dag_id="monthly_cost_report",
    description="Per-department LLM cost reports: ledger → Great Expectations → HTML/CSV/PNG → email.",
    schedule=CronTriggerTimetable("0 7 1 * *", timezone=TZ),
    start_date=pendulum.datetime(2026, 1, 1, tz=TZ),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5), "owner": "llmops"},
    tags=["llmops", "reports"],
    params={
        "month": Param(
            None,
            type=["null", "string"],
            pattern=r"^\d{4}-(0[1-9]|1[0-2])$",
            title="Month (YYYY-MM)",
            description="empty: the month before the run",
        ),
        "send": Param(True, type="boolean", title="Send mails", description="off: build and archive only"),
    },
)
def monthly_cost_report() -> None:
    @task(retries=0)
    def build() -> dict:
        from llmops.airflow_adapter import build_report_task, report_month

        ctx = get_current_context()
        return build_report_task(report_month(dict(ctx["params"]), ctx["dag_run"].run_after, __file__), __file__)

    @task
    def deliver(report: dict) -> dict:
        from llmops.airflow_adapter import deliver_report_task

        return deliver_report_task(report, bool(get_current_context()["params"]["send"]), __file__)

    deliver(build())


monthly_cost_report()
