"""llmops_health: operational alert rules over the ledger every 10 minutes.

Wiring only. p95 latency > 5 s, error rate > 1 %, nightly quality < 0.7 (thresholds: LLMOPS_ALERT_*) and
the departments' budget alert lines; each breach is mailed to the policy's admins once (Slack too when
LLMOPS_SLACK_CONN_ID names a Slack webhook connection) and re-arms when it clears.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import dag, task


@dag(
    dag_id="llmops_health",
    description="Alert rules over the ledger: latency, error rate, quality, budgets — once per breach.",
    schedule=timedelta(minutes=10),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(minutes=9),
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1), "owner": "llmops"},
    tags=["llmops", "observability"],
)
def llmops_health() -> None:
    @task
    def check() -> dict:
        from llmops.airflow_adapter import health_task

        return health_task(__file__)

    check()


llmops_health()
