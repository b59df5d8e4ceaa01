"""llm_batch: run a prompt over a dataset through the llmops request path.

Wiring only — every step is a function in ``llmops.airflow_adapter``. Trigger it from the UI form.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, get_current_context, task

BATCH_OUTPUTS = Asset(name="llmops_batch_outputs", uri="file:///llmops/outputs/llm_batch")


@dag(
    dag_id="llm_batch",
    description="Run a versioned prompt over a CSV/Parquet/SQL dataset: screened, routed, budgeted, ledgered.",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=4,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10), "owner": "llmops"},
    tags=["llmops", "batch"],
    params={
        "prompt": Param(
            "support_ticket_classify@production",
            type="string",
            title="Prompt",
            description="name, name@alias (production, staging), name@latest or name@1.2.0",
            section="What to run",
        ),
        "input": Param(
            "sample:support_tickets.csv",
            type="string",
            title="Input dataset",
            description="CSV or Parquet path (relative to the project), sample:<file>, or <sqlalchemy-url>#<table>",
            section="What to run",
        ),
        "key_column": Param("id", type="string", title="Record key column", section="What to run"),
        "department": Param(
            "support", type="string", title="Department", description="billed department", section="Who pays"
        ),
        "user": Param(
            "hana.sato@example.com",
            type="string",
            title="User",
            description="person in llmops.yaml running this batch",
            section="Who pays",
        ),
        "priority": Param(
            "balanced",
            type="string",
            enum=["balanced", "cost", "quality", "speed"],
            title="Routing priority",
            section="How",
        ),
        "data_class": Param(
            "internal",
            type="string",
            enum=["public", "internal", "confidential", "restricted"],
            title="Data class",
            section="How",
        ),
        "cost_cap_usd": Param(
            None,
            type=["null", "number"],
            minimum=0,
            title="Cost cap (USD)",
            description="refuse or stop the run beyond this spend",
            section="How",
        ),
        "chunk_size": Param(
            None, type=["null", "integer"], minimum=1, maximum=100000, title="Chunk size", section="How"
        ),
        "dry_run": Param(
            False, type="boolean", title="Dry run", description="estimate only; call nothing", section="How"
        ),
    },
)
def llm_batch() -> None:
    @task(retries=0)
    def plan() -> dict:
        from llmops.airflow_adapter import plan_task

        ctx = get_current_context()
        return plan_task(dict(ctx["params"]), ctx["dag_run"].run_id, __file__)

    @task(retries=0)
    def chunks(plan: dict) -> list:
        return plan["chunks"]

    @task(max_active_tis_per_dagrun=4)
    def run_chunk(plan: dict, chunk: dict) -> dict:
        from llmops.airflow_adapter import chunk_task

        return chunk_task(plan, chunk, __file__)

    @task(outlets=[BATCH_OUTPUTS])
    def reconcile(plan: dict, chunks: list) -> dict:
        from llmops.airflow_adapter import reconcile_task

        return reconcile_task(plan, chunks, __file__)

    p = plan()
    results = run_chunk.partial(plan=p).expand(chunk=chunks(p))
    reconcile(p, results)


llm_batch()
