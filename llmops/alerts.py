"""Operational alert rules evaluated from the ledger, notified once per breach.

Rules (thresholds from settings, ``LLMOPS_ALERT_*``):

* ``latency``    — a model's p95 latency over the window exceeds ``alert_latency_s`` (default 5 s)
* ``error_rate`` — a model's share of failed calls over the window exceeds ``alert_error_rate`` (1 %),
  once it made at least ``alert_min_requests`` calls there
* ``quality``    — the latest nightly score of a prompt version on a model is below ``alert_quality_min`` (0.7)
* budget thresholds — the departments' alert lines (80 %, 100 %), fired exactly once per month by
  :class:`llmops.budget.Budget` (the same ``budget_alerts`` claim the request path uses)

``alert_state`` holds one row per (rule, key): a breach notifies when it starts, stays quiet while it
lasts, and re-arms when it clears, so a 10-minute health check does not mail every 10 minutes.
Delivery is the caller's notifier (Airflow's SMTP / Slack notifiers in ``airflow_adapter``).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from llmops.budget import Alerter, Budget, BudgetAlertEvent, budget_month
from llmops.ledger import AlertState, Ledger, LlmCall
from llmops.ledger.store import p95
from llmops.metrics import latest_evaluations
from llmops.policy import Policy
from llmops.settings import Settings

log = logging.getLogger("llmops.alerts")


@dataclass(frozen=True)
class Breach:
    rule: str  # latency | error_rate | quality
    key: str
    value: float
    threshold: float
    detail: str

    @property
    def subject(self) -> str:
        return f"[llmops] {self.rule} alert: {self.key} - {self.detail}"


@dataclass(frozen=True)
class HealthReport:
    checked: tuple[str, ...]  # rule:key pairs that were evaluated
    breaches: tuple[Breach, ...]  # currently breaching
    notified: tuple[Breach, ...]  # newly breaching: notified now
    resolved: tuple[str, ...]  # rule:key pairs that cleared
    budget_alerts: tuple[BudgetAlertEvent, ...]

    def summary(self) -> dict[str, object]:
        return {
            "checked": len(self.checked),
            "breaches": [b.subject for b in self.breaches],
            "notified": [b.subject for b in self.notified],
            "resolved": list(self.resolved),
            "budget_alerts": [e.subject for e in self.budget_alerts],
        }


def evaluate_rules(ledger: Ledger, settings: Settings, now: datetime | None = None) -> tuple[list[str], list[Breach]]:
    """Every (rule, key) evaluated and the breaches among them."""
    now = now or datetime.now(UTC)
    since = now - timedelta(minutes=settings.alert_window_minutes)
    checked: list[str] = []
    breaches: list[Breach] = []
    latencies: dict[str, list[int]] = defaultdict(list)
    outcomes: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # model -> [calls, failed]
    stmt = select(LlmCall.model, LlmCall.status, LlmCall.latency_ms).where(
        LlmCall.created_at >= since, LlmCall.model.is_not(None), LlmCall.status.in_(("ok", "failed"))
    )
    with ledger.transaction() as s:
        for mdl, status, latency in s.execute(stmt):
            model = str(mdl)
            latencies[model].append(int(latency))
            outcomes[model][0] += 1
            outcomes[model][1] += status == "failed"
    window = f"last {settings.alert_window_minutes} min"
    for model, values in sorted(latencies.items()):
        checked.append(f"latency:{model}")
        p95_s = p95(values) / 1000
        if p95_s > settings.alert_latency_s:
            breaches.append(
                Breach(
                    "latency",
                    model,
                    p95_s,
                    settings.alert_latency_s,
                    f"p95 latency {p95_s:.2f} s > {settings.alert_latency_s:g} s ({len(values)} calls, {window})",
                )
            )
    for model, (calls, failed) in sorted(outcomes.items()):
        if calls < settings.alert_min_requests:
            continue
        checked.append(f"error_rate:{model}")
        rate = failed / calls
        if rate > settings.alert_error_rate:
            breaches.append(
                Breach(
                    "error_rate",
                    model,
                    rate,
                    settings.alert_error_rate,
                    f"error rate {rate:.1%} > {settings.alert_error_rate:.1%} ({failed} of {calls} calls, {window})",
                )
            )
    for r in latest_evaluations(ledger):
        key = f"{r.prompt_name}@{r.prompt_version}/{r.model}"
        checked.append(f"quality:{key}")
        if r.overall < settings.alert_quality_min:
            breaches.append(
                Breach(
                    "quality",
                    key,
                    r.overall,
                    settings.alert_quality_min,
                    f"nightly score {r.overall:.3f} < {settings.alert_quality_min:g} "
                    f"(night {r.night}, {r.cases} cases)",
                )
            )
    return checked, breaches


def _transition(ledger: Ledger, checked: list[str], breaches: list[Breach], now: datetime) -> tuple[list, list]:
    """Record the state; return (newly firing breaches, resolved rule:key) — each claimed by one process."""
    fired: list[Breach] = []
    resolved: list[str] = []
    breaching = {f"{b.rule}:{b.key}": b for b in breaches}
    for ident, b in breaching.items():
        try:
            with ledger.transaction() as s:
                row = s.scalar(
                    select(AlertState).where(AlertState.rule == b.rule, AlertState.alert_key == b.key).with_for_update()
                )
                if row is None:
                    s.add(
                        AlertState(
                            rule=b.rule,
                            alert_key=b.key,
                            firing=True,
                            value=b.value,
                            threshold=b.threshold,
                            detail=b.detail,
                            fired_at=now,
                            fire_count=1,
                        )
                    )
                    fired.append(b)
                elif not row.firing:
                    row.firing, row.value, row.threshold, row.detail = True, b.value, b.threshold, b.detail
                    row.fired_at, row.resolved_at, row.fire_count = now, None, row.fire_count + 1
                    fired.append(b)
                else:
                    row.value, row.detail = b.value, b.detail
        except IntegrityError:
            log.info("alert %s claimed by another process", ident)
    with ledger.transaction() as s:
        for row in s.scalars(select(AlertState).where(AlertState.firing.is_(True)).with_for_update()):
            ident = f"{row.rule}:{row.alert_key}"
            if ident not in breaching and ident in checked:
                row.firing, row.resolved_at = False, now
                resolved.append(ident)
    return fired, resolved


def run_health_check(
    ledger: Ledger,
    policy: Policy,
    settings: Settings,
    notify: Callable[[Breach, tuple[str, ...]], None],
    budget_alerter: Alerter | None = None,
    now: datetime | None = None,
) -> HealthReport:
    """Evaluate every rule, notify breaches that just started (to the policy's admins) and fire due budget
    thresholds. A notifier that fails is logged; the breach stays recorded (no mail storm on retry)."""
    now = now or datetime.now(UTC)
    checked, breaches = evaluate_rules(ledger, settings, now)
    fired, resolved = _transition(ledger, checked, breaches, now)
    recipients = tuple(dict.fromkeys(a for a in policy.admins if "@" in a))
    for b in fired:
        log.warning("alert: %s", b.subject)
        try:
            notify(b, recipients)
        except Exception:
            log.exception("alert could not be delivered: %s", b.subject)
    for ident in resolved:
        log.info("alert resolved: %s", ident)
    budget = Budget(ledger, policy, settings.timezone, alerter=budget_alerter)
    month = budget_month(settings.timezone, now)
    events: list[BudgetAlertEvent] = []
    for dept in sorted(policy.departments):
        events.extend(budget.after_settle(dept, "", "", month))
    return HealthReport(tuple(checked), tuple(breaches), tuple(fired), tuple(resolved), tuple(events))
