"""nightly_regression: every prompt × version × candidate model on its golden set, every night.

Wiring only. Results go to MLflow (experiment llmops/<prompt>, one run per version × model) and to the
quality table the router reads; regressions are mailed to the prompt owners and the admins.
"""

from __future__ import annotations

import os
from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, get_current_context, task
from airflow.timetables.trigger import CronTriggerTimetable

TZ = pendulum.timezone(os.environ.get("LLMOPS_TIMEZONE", "Asia/Tokyo"))


@dag(
    dag_id="nightly_regression",
    description="Evaluate every prompt version on its golden set; track in MLflow; alert on regressions.",
    schedule=CronTriggerTimetable("0 2 * * *", timezone=TZ),
    start_date=pendulum.datetime(2026, 1, 1, tz=TZ),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=2), "owner": "llmops"},
    tags=["llmops", "evaluation"],
    params={
        "prompts": Param(
            [],
            type="array",
            items={"type": "string"},
            title="Prompts",
            description="empty: every prompt in the library",
        ),
        "night": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Night (YYYY-MM-DD)",
            description="empty: the run's date",
        ),
    },
)
def nightly_regression() -> None:
    @task(retries=0)
    def prompts() -> list:
        from llmops.airflow_adapter import eval_prompts_task

        return eval_prompts_task(dict(get_current_context()["params"]), __file__)

    @task(retries=0)
    def night() -> str:
        from llmops.airflow_adapter import eval_night

        ctx = get_current_context()
        return eval_night(dict(ctx["params"]), ctx["dag_run"].run_after, __file__)

    @task(max_active_tis_per_dagrun=2)
    def evaluate(prompt: str, night: str) -> dict:
        from llmops.airflow_adapter import eval_prompt_task

        return eval_prompt_task(prompt, night, __file__)

    @task
    def report(results: list, night: str) -> dict:
        from llmops.airflow_adapter import eval_report_task

        return eval_report_task(results, night, __file__)

    n = night()
    report(evaluate.partial(night=n).expand(prompt=prompts()), n)


nightly_regression()
