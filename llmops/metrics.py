"""Prometheus metrics computed from the ledger at scrape time.

Batch tasks are short-lived processes, so in-process counters would vanish with them. Instead a custom
collector runs a handful of aggregate queries over the ledger on every scrape: the counters are the
ledger's own sums (monotonic because ledger rows are only added or settled), and they read the same on
every api-server worker. Served by the Airflow plugin at ``/llmops/metrics``.

Families (label ``model`` is ``none`` for requests that never reached a model):

* ``llmops_requests_total{department,model,prompt,status}`` — ledger rows by final status
* ``llmops_errors_total{department,model,prompt}`` — rows with status ``failed``
* ``llmops_tokens_total{department,model,prompt,kind}`` — prompt / completion tokens
* ``llmops_cost_usd_total{department,model,prompt}`` — settled cost in USD
* ``llmops_request_latency_seconds{model}`` — histogram of call latency (ok and failed calls)
* ``llmops_blocked_total{department,prompt}`` / ``llmops_redacted_total{department,prompt}`` — guard outcomes
* ``llmops_budget_used_ratio{department,month}``, ``llmops_budget_spent_usd``, ``llmops_budget_limit_usd``
  — the department budgets of the current budget month (spent + reserved over the limit)
* ``llmops_eval_score{prompt,version,model,night}`` / ``llmops_eval_pass_rate{...}`` — latest nightly
  evaluation per prompt version and model
* ``llmops_quarantine_records{department,status}`` — records waiting for review
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import case, func, select

from llmops.budget import budget_month
from llmops.ledger import EvalResult, Ledger, LlmCall, Quarantine
from llmops.policy import Policy
from llmops.pricing import to_nano, usd

#: Latency histogram bucket bounds in seconds (the 5 s alert rule sits on a bound).
LATENCY_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class BudgetLine:
    department: str
    month: str
    limit_nanousd: int
    spent_nanousd: int
    reserved_nanousd: int
    thresholds: tuple[float, ...]

    @property
    def used_ratio(self) -> float:
        return (self.spent_nanousd + self.reserved_nanousd) / self.limit_nanousd if self.limit_nanousd else 0.0


def budget_lines(ledger: Ledger, policy: Policy, month: str) -> list[BudgetLine]:
    """Every department of the policy with its spend in ``month`` (one grouped query)."""
    stmt = (
        select(
            LlmCall.department,
            func.coalesce(func.sum(LlmCall.cost_nanousd), 0),
            func.coalesce(func.sum(LlmCall.reserved_nanousd), 0),
        )
        .where(LlmCall.budget_month == month)
        .group_by(LlmCall.department)
    )
    with ledger.transaction() as s:
        used = {d: (int(c), int(r)) for d, c, r in s.execute(stmt)}
    lines = []
    for name, dept in sorted(policy.departments.items()):
        spent, reserved = used.get(name, (0, 0))
        lines.append(
            BudgetLine(
                name,
                month,
                to_nano(dept.monthly_budget_usd),
                spent,
                reserved,
                tuple(dept.alert_thresholds),
            )
        )
    return lines


def latest_evaluations(ledger: Ledger) -> list[EvalResult]:
    """The most recent night's result of every (prompt, version, model)."""
    last = (
        select(
            EvalResult.prompt_name,
            EvalResult.prompt_version,
            EvalResult.model,
            func.max(EvalResult.night).label("night"),
        )
        .group_by(EvalResult.prompt_name, EvalResult.prompt_version, EvalResult.model)
        .subquery()
    )
    stmt = (
        select(EvalResult)
        .join(
            last,
            (EvalResult.prompt_name == last.c.prompt_name)
            & (EvalResult.prompt_version == last.c.prompt_version)
            & (EvalResult.model == last.c.model)
            & (EvalResult.night == last.c.night),
        )
        .order_by(EvalResult.prompt_name, EvalResult.prompt_version, EvalResult.model)
    )
    with ledger.transaction() as s:
        return list(s.scalars(stmt))


class LedgerCollector(Collector):
    """A prometheus-client collector whose every scrape is a fresh read of the ledger."""

    def __init__(self, ledger: Ledger, policy: Policy, timezone: str) -> None:
        self.ledger = ledger
        self.policy = policy
        self.timezone = timezone

    def describe(self) -> Iterable[Metric]:
        return []  # unchecked collector: families are produced at collect time only

    def collect(self) -> Iterator[Metric]:
        yield from self._calls()
        yield from self._latency()
        yield from self._budgets()
        yield from self._evaluations()
        yield from self._quarantine()

    def _calls(self) -> Iterator[Metric]:
        labels = ["department", "model", "prompt"]
        requests = CounterMetricFamily(
            "llmops_requests", "LLM requests recorded in the ledger", labels=[*labels, "status"]
        )
        errors = CounterMetricFamily("llmops_errors", "LLM requests that ended failed", labels=labels)
        tokens = CounterMetricFamily("llmops_tokens", "Tokens billed", labels=[*labels, "kind"])
        cost = CounterMetricFamily("llmops_cost_usd", "Settled cost in USD", labels=labels)
        blocked = CounterMetricFamily(
            "llmops_blocked", "Requests blocked by the guard", labels=["department", "prompt"]
        )
        redacted = CounterMetricFamily(
            "llmops_redacted", "Requests sent with PII redacted by the guard", labels=["department", "prompt"]
        )
        model = func.coalesce(LlmCall.model, "none")
        stmt = select(
            LlmCall.department,
            model,
            LlmCall.prompt_name,
            LlmCall.status,
            func.count(),
            func.coalesce(func.sum(LlmCall.prompt_tokens), 0),
            func.coalesce(func.sum(LlmCall.completion_tokens), 0),
            func.coalesce(func.sum(LlmCall.cost_nanousd), 0),
            func.coalesce(func.sum(case((LlmCall.reasons.like("%guard.redacted%"), 1), else_=0)), 0),
        ).group_by(LlmCall.department, model, LlmCall.prompt_name, LlmCall.status)
        with self.ledger.transaction() as s:
            rows = list(s.execute(stmt))
        acc: dict[tuple[str, str, str], list[int]] = {}
        guard: dict[tuple[str, str], list[int]] = {}
        for dept, mdl, prompt, status, n, ptok, ctok, nano, red in rows:
            key = (dept, mdl, prompt)
            requests.add_metric([*key, status], int(n))
            a = acc.setdefault(key, [0, 0, 0, 0])
            a[0] += int(n) if status == "failed" else 0
            a[1] += int(ptok)
            a[2] += int(ctok)
            a[3] += int(nano)
            g = guard.setdefault((dept, prompt), [0, 0])
            g[0] += int(n) if status == "blocked" else 0
            g[1] += int(red)
        for key, (err, ptok, ctok, nano) in sorted(acc.items()):
            errors.add_metric(list(key), err)
            tokens.add_metric([*key, "prompt"], ptok)
            tokens.add_metric([*key, "completion"], ctok)
            cost.add_metric(list(key), float(usd(nano)))
        for gkey, (blk, red) in sorted(guard.items()):
            blocked.add_metric(list(gkey), blk)
            redacted.add_metric(list(gkey), red)
        yield from (requests, errors, tokens, cost, blocked, redacted)

    def _latency(self) -> Iterator[Metric]:
        hist = HistogramMetricFamily(
            "llmops_request_latency_seconds", "Latency of LLM calls (ok and failed)", labels=["model"]
        )
        bounds_ms = [int(b * 1000) for b in LATENCY_BUCKETS]
        cols = [func.coalesce(func.sum(case((LlmCall.latency_ms <= b, 1), else_=0)), 0) for b in bounds_ms]
        stmt = (
            select(LlmCall.model, func.count(), func.coalesce(func.sum(LlmCall.latency_ms), 0), *cols)
            .where(LlmCall.model.is_not(None), LlmCall.status.in_(("ok", "failed")))
            .group_by(LlmCall.model)
        )
        with self.ledger.transaction() as s:
            rows = list(s.execute(stmt))
        for model, n, total_ms, *cum in sorted(rows, key=lambda r: str(r[0])):
            buckets = [(str(b), int(c)) for b, c in zip(LATENCY_BUCKETS, cum, strict=True)]
            buckets.append(("+Inf", int(n)))
            hist.add_metric([model], buckets, sum_value=int(total_ms) / 1000)
        yield hist

    def _budgets(self) -> Iterator[Metric]:
        labels = ["department", "month"]
        ratio = GaugeMetricFamily("llmops_budget_used_ratio", "Spent + reserved over the monthly budget", labels=labels)
        spent = GaugeMetricFamily("llmops_budget_spent_usd", "Spent this budget month", labels=labels)
        limit = GaugeMetricFamily("llmops_budget_limit_usd", "Monthly budget", labels=labels)
        for line in budget_lines(self.ledger, self.policy, budget_month(self.timezone)):
            key = [line.department, line.month]
            ratio.add_metric(key, line.used_ratio)
            spent.add_metric(key, float(usd(line.spent_nanousd)))
            limit.add_metric(key, float(usd(line.limit_nanousd)))
        yield from (ratio, spent, limit)

    def _evaluations(self) -> Iterator[Metric]:
        labels = ["prompt", "version", "model", "night"]
        score = GaugeMetricFamily("llmops_eval_score", "Latest nightly overall score (0..1)", labels=labels)
        pass_rate = GaugeMetricFamily("llmops_eval_pass_rate", "Latest nightly pass rate (0..1)", labels=labels)
        for r in latest_evaluations(self.ledger):
            key = [r.prompt_name, r.prompt_version, r.model, r.night]
            score.add_metric(key, r.overall)
            pass_rate.add_metric(key, r.pass_rate)
        yield from (score, pass_rate)

    def _quarantine(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "llmops_quarantine_records", "Blocked/denied records held for review", labels=["department", "status"]
        )
        stmt = (
            select(Quarantine.department, Quarantine.status, func.count())
            .where(Quarantine.released_at.is_(None))  # a released record is reviewed: no longer waiting
            .group_by(Quarantine.department, Quarantine.status)
        )
        with self.ledger.transaction() as s:
            for dept, status, n in sorted(s.execute(stmt)):
                g.add_metric([dept, status], int(n))
        yield g


def registry_for(ledger: Ledger, policy: Policy, timezone: str) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(ledger, policy, timezone))
    return registry


def render(ledger: Ledger, policy: Policy, timezone: str) -> bytes:
    """The Prometheus text exposition of the ledger's metrics."""
    from prometheus_client import generate_latest

    return generate_latest(registry_for(ledger, policy, timezone))
