"""The one module that knows Airflow: DAG params → BatchSpec, errors → retry policy, settings for workers.

Input and policy errors (bad prompt, bad CSV, unknown department …) fail the task without retries;
anything else (a worker killed, a provider outage) is left to Airflow's retries, which are safe
because chunks are idempotent through the ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from llmops.errors import LlmopsError, ProviderError
from llmops.settings import Settings, load_settings

log = logging.getLogger("llmops.airflow")
T = TypeVar("T")


def settings_for(dag_file: str | None = None) -> Settings:
    """Settings for a task: LLMOPS_HOME if set, else the project the DAG file lives in."""
    import os

    if "LLMOPS_HOME" not in os.environ and dag_file:
        return load_settings(home=Path(dag_file).resolve().parents[1])
    return load_settings()


def _guarded(fn: Callable[[], T]) -> T:
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return fn()
    except LlmopsError as exc:
        if isinstance(exc, ProviderError) and exc.retryable:
            raise
        log.error("%s", exc)
        raise AirflowFailException(str(exc)) from None


def connection_key(entry: Any) -> str | None:
    """API key of a catalog model from its Airflow connection (``airflow_conn_id``), if it names one."""
    if not entry.airflow_conn_id:
        return None
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(entry.airflow_conn_id)
    return conn.password or None


def _gateway(dag_file: str | None) -> Any:
    from llmops.gateway import Gateway
    from llmops.provider import LiteLLMProvider

    settings = settings_for(dag_file)
    provider = LiteLLMProvider(
        settings.simulator_url, settings.simulator_api_key.get_secret_value(), key_resolver=connection_key
    )
    return Gateway(settings, provider=provider, alerter=budget_alert_mail)


def plan_task(params: dict[str, Any], run_id: str, dag_file: str | None = None) -> dict[str, Any]:
    from llmops.batch import BatchSpec, plan_batch

    def run() -> dict[str, Any]:
        gw = _gateway(dag_file)
        try:
            spec = BatchSpec(
                prompt=params["prompt"],
                input=params["input"],
                department=params["department"],
                user=params["user"],
                run_id=run_id,
                priority=params.get("priority") or None,
                data_class=params.get("data_class") or "internal",
                key_column=params.get("key_column") or "id",
                cost_cap_usd=params.get("cost_cap_usd"),
                chunk_size=params.get("chunk_size"),
                dry_run=bool(params.get("dry_run")),
            )
            plan = plan_batch(gw, spec)
            log.info(
                "plan: %s records in %s chunks, estimate %s", plan["total_rows"], len(plan["chunks"]), plan["estimate"]
            )
            return plan
        finally:
            gw.close()

    return _guarded(run)


def chunk_task(plan: dict[str, Any], chunk: dict[str, Any], dag_file: str | None = None) -> dict[str, Any]:
    from llmops.batch import run_chunk

    if plan.get("dry_run"):
        return {"index": chunk["index"], "records": 0, "counts": {}, "dry_run": True}

    def run() -> dict[str, Any]:
        gw = _gateway(dag_file)
        try:
            result = run_chunk(gw, plan, chunk["index"])
            log.info("chunk %s: %s", chunk["index"], result["counts"])
            return result
        finally:
            gw.close()

    return _guarded(run)


def reconcile_task(
    plan: dict[str, Any], chunks: Iterable[dict[str, Any]], dag_file: str | None = None
) -> dict[str, Any]:
    from llmops.batch import reconcile

    results = list(chunks)
    if plan.get("dry_run"):
        log.info("dry run: estimate %s; nothing was called or billed", plan["estimate"])
        return {"dry_run": True, "estimate": plan["estimate"]}

    def run() -> dict[str, Any]:
        gw = _gateway(dag_file)
        try:
            summary = reconcile(gw, plan)
            summary["chunks"] = len(results)
            log.info("reconciled: %s", summary)
            return summary
        finally:
            gw.close()

    return _guarded(run)


# -- mail and monthly reports -----------------------------------------------------------------------
def send_email(to: list[str], subject: str, html: str, files: list[str]) -> None:
    """Send through Airflow's SMTP provider (connection ``smtp_default``)."""
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    with SmtpHook(smtp_conn_id="smtp_default") as hook:
        hook.send_email_smtp(to=to, subject=subject, html_content=html, files=files)


def report_month(params: dict[str, Any], run_after: Any, dag_file: str | None = None) -> str:
    from llmops.reports.monthly import check_month, month_before

    if params.get("month"):
        return check_month(str(params["month"]))
    return month_before(run_after, settings_for(dag_file).timezone)


def build_report_task(month: str, dag_file: str | None = None) -> dict[str, Any]:
    from llmops.ledger import Ledger
    from llmops.policy import load_policy
    from llmops.reports import build_monthly_report

    def run() -> dict[str, Any]:
        settings = settings_for(dag_file)
        ledger = Ledger(settings.ledger_database_url)
        try:
            report = build_monthly_report(settings, load_policy(settings.policy_path), ledger, month)
        finally:
            ledger.dispose()
        log.info(
            "cost report %s: valid=%s total=$%s (%s)",
            month,
            report.valid,
            report.total_cost_usd,
            report.validation_summary,
        )
        return json_safe(report.to_dict())

    return _guarded(run)


def json_safe(value: Any) -> Any:
    """NaN/inf → None, recursively: XCom travels as strict JSON through the api-server (Postgres rejects NaN)."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def deliver_report_task(report: dict[str, Any], send: bool = True, dag_file: str | None = None) -> dict[str, Any]:
    from airflow.sdk.exceptions import AirflowFailException

    from llmops.policy import load_policy
    from llmops.reports import deliver_monthly_report

    if not send and report["valid"]:
        return {"sent": [], "alert": [], "archived": report["folder"]}
    policy = load_policy(settings_for(dag_file).policy_path)
    outcome = deliver_monthly_report(report, policy, send_email)
    if not report["valid"]:
        raise AirflowFailException(
            f"cost report {report['month']} withheld, admins alerted: {report['validation_summary']}"
        )
    return outcome


def budget_alert_mail(event: Any) -> None:
    """Deliver a budget threshold alert through Airflow's SMTP notifier."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    if not event.recipients:
        return
    html = (
        f"<p>{event.subject}.</p><p>Scope: {event.scope} <b>{event.key}</b>, month {event.month}, "
        f"threshold {event.threshold:.0%}. At 100 % new requests end <code>budget_exceeded</code> and "
        f"running batches defer their remaining records.</p>"
    )
    SmtpNotifier(
        to=list(event.recipients), subject=event.subject, html_content=html, smtp_conn_id="smtp_default"
    ).notify({})


# -- nightly evaluation -------------------------------------------------------------------------------
def eval_night(params: dict[str, Any], run_after: Any, dag_file: str | None = None) -> str:
    from zoneinfo import ZoneInfo

    if params.get("night"):
        return str(params["night"])
    return run_after.astimezone(ZoneInfo(settings_for(dag_file).timezone)).strftime("%Y-%m-%d")


def eval_prompts_task(params: dict[str, Any], dag_file: str | None = None) -> list[str]:
    from llmops.prompts import PromptLibrary

    def run() -> list[str]:
        s = settings_for(dag_file)
        names = PromptLibrary(s.prompts_path).names()
        wanted = list(params.get("prompts") or [])
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            from llmops.errors import PromptError

            raise PromptError(f"unknown prompt(s) {', '.join(unknown)}", f"use some of: {', '.join(names)}")
        return wanted or names

    return _guarded(run)


def eval_prompt_task(prompt: str, night: str, dag_file: str | None = None) -> dict[str, Any]:
    from llmops.evaluation import evaluate_prompt

    def run() -> dict[str, Any]:
        gw = _gateway(dag_file)
        try:
            return evaluate_prompt(gw, prompt, night=night, margin=gw.settings.regression_margin).summary()
        finally:
            gw.close()

    return _guarded(run)


def eval_report_task(summaries: Iterable[dict[str, Any]], night: str, dag_file: str | None = None) -> dict[str, Any]:
    from llmops.evaluation import alert_regressions
    from llmops.evaluation.regression import Regression

    results = list(summaries)
    regressions = [
        Regression(**{**d, "worst_cases": tuple(d["worst_cases"])}) for s in results for d in s["regression_details"]
    ]
    gw = _gateway(dag_file)
    try:
        alerted = alert_regressions(gw, regressions, night, send_email)
    finally:
        gw.close()
    for r in regressions:
        log.warning("regression: %s", r.line())
    return {
        "night": night,
        "prompts": len(results),
        "runs": sum(len(s["runs"]) for s in results),
        "new_calls": sum(r["new_calls"] for s in results for r in s["runs"]),
        "regressions": [r.line() for r in regressions],
        "alerted": alerted,
    }


# -- operational alerts (llmops_health DAG) -----------------------------------------------------------
def ops_alert_notify(breach: Any, recipients: tuple[str, ...], slack_conn_id: str | None = None) -> None:
    """Deliver an operational alert: mail to the admins (SmtpNotifier); Slack too when a webhook is configured."""
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    html = (
        f"<p><b>{breach.rule}</b> alert for <b>{breach.key}</b>: {breach.detail}.</p>"
        f"<p>Value {breach.value:.4g}, threshold {breach.threshold:.4g}. This alert is sent once per breach; "
        f"it re-arms when the value is back within the threshold. See the LLMOps page in Airflow.</p>"
    )
    errors: list[str] = []
    if recipients:
        try:
            SmtpNotifier(
                to=list(recipients), subject=breach.subject, html_content=html, smtp_conn_id="smtp_default"
            ).notify({})
        except Exception as exc:
            errors.append(f"mail: {type(exc).__name__}: {exc}")
    if slack_conn_id:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier

        try:
            SlackWebhookNotifier(slack_webhook_conn_id=slack_conn_id, text=breach.subject).notify({})
        except Exception as exc:
            errors.append(f"slack: {type(exc).__name__}: {exc}")
    if errors:
        raise RuntimeError("; ".join(errors))


def health_task(dag_file: str | None = None) -> dict[str, Any]:
    from llmops.alerts import run_health_check
    from llmops.ledger import Ledger
    from llmops.policy import load_policy

    def run() -> dict[str, Any]:
        settings = settings_for(dag_file)
        ledger = Ledger(settings.ledger_database_url)
        try:
            report = run_health_check(
                ledger,
                load_policy(settings.policy_path),
                settings,
                lambda b, to: ops_alert_notify(b, to, settings.slack_conn_id),
                budget_alerter=budget_alert_mail,
            )
        finally:
            ledger.dispose()
        summary = report.summary()
        log.info("health: %s", summary)
        return summary

    return _guarded(run)
