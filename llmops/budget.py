"""Monthly budgets with reservations in the ledger: per department, and optionally per person and per prompt.

Before a call its cost is estimated (prompt tokens + max_tokens at the model's price) and reserved in
the same transaction that checks every applicable budget: spent + reserved + estimate must stay within
each limit (hard stop at 100 %). After the call the reservation is settled to the actual cost.
Alert thresholds (default 80 %) fire exactly once per budget, month and threshold — a UNIQUE row in
``budget_alerts`` decides who fires, across processes — to the log and to the configured alerter
(Airflow's SMTP notifier in workers). Months are calendar months in the configured timezone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from llmops.ledger import BudgetAlert, Ledger, LlmCall
from llmops.policy import Policy
from llmops.pricing import to_nano, usd


def budget_month(timezone: str | ZoneInfo, when: datetime | None = None) -> str:
    """The budget month (``YYYY-MM``) of ``when`` (default: now) in the budgets' time zone."""
    tz = timezone if isinstance(timezone, ZoneInfo) else ZoneInfo(timezone)
    return (when or datetime.now(UTC)).astimezone(tz).strftime("%Y-%m")


log = logging.getLogger("llmops.budget")


@dataclass(frozen=True)
class Reservation:
    ok: bool
    reason: str
    limit_nanousd: int
    used_nanousd: int  # spent + reserved by others, before this reservation


@dataclass(frozen=True)
class BudgetScope:
    scope: str  # department | person | prompt
    key: str
    limit_nanousd: int
    thresholds: tuple[float, ...]


@dataclass(frozen=True)
class BudgetAlertEvent:
    scope: str
    key: str
    month: str
    threshold: float
    spent_nanousd: int
    limit_nanousd: int
    recipients: tuple[str, ...]

    @property
    def subject(self) -> str:
        return (
            f"[llmops] {self.scope} budget {self.key} passed {self.threshold:.0%} for {self.month}: "
            f"${usd(self.spent_nanousd):.4f} of ${usd(self.limit_nanousd):.2f}"
        )


Alerter = Callable[[BudgetAlertEvent], None]


class Budget:
    def __init__(self, ledger: Ledger, policy: Policy, timezone: str, alerter: Alerter | None = None) -> None:
        self.ledger = ledger
        self.policy = policy
        self.tz = ZoneInfo(timezone)
        self.alerter = alerter
        # thresholds known to have fired (here or in another process): skip their queries and inserts
        self._fired: set[tuple[str, str, str, float]] = set()

    def month(self, when: datetime | None = None) -> str:
        return budget_month(self.tz, when)

    def limit_nano(self, department: str) -> int:
        return to_nano(self.policy.departments[department].monthly_budget_usd)

    def scopes(self, department: str, user: str, prompt: str) -> list[BudgetScope]:
        dept = self.policy.departments[department]
        out = [BudgetScope("department", department, to_nano(dept.monthly_budget_usd), tuple(dept.alert_thresholds))]
        person = self.policy.people.get(user)
        if person is not None and person.monthly_budget_usd is not None:
            out.append(
                BudgetScope("person", user, to_nano(person.monthly_budget_usd), tuple(self.policy.alert_thresholds))
            )
        if prompt in self.policy.prompt_budgets:
            out.append(
                BudgetScope(
                    "prompt", prompt, to_nano(self.policy.prompt_budgets[prompt]), tuple(self.policy.alert_thresholds)
                )
            )
        return out

    def _lock(self, session: Session, scopes: list[BudgetScope], month: str) -> None:
        self.ledger.lock_budgets(session, [(s.scope, s.key, month) for s in scopes])

    def reserve(
        self,
        session: Session,
        *,
        department: str,
        month: str,
        request_key: str,
        estimate_nano: int,
        user: str = "",
        prompt: str = "",
    ) -> Reservation:
        """Check and hold ``estimate_nano`` for ``request_key``. Must run inside ``ledger.transaction()``."""
        scopes = self.scopes(department, user, prompt)
        self._lock(session, scopes, month)
        row = session.query(LlmCall).filter(LlmCall.request_key == request_key).one_or_none()
        own = row.reserved_nanousd if row is not None else 0
        first_used = 0
        for i, sc in enumerate(scopes):
            spent, reserved = self.ledger.month_usage(sc.key, month, session, scope=sc.scope)
            used = spent + reserved - own
            if i == 0:
                first_used = used
            if used + estimate_nano > sc.limit_nanousd:
                return Reservation(
                    False,
                    f"budget.hard_stop: {sc.scope} {sc.key} has used ${usd(used):.4f} of "
                    f"${usd(sc.limit_nanousd):.2f} in {month}; this call needs up to ${usd(estimate_nano):.6f}",
                    sc.limit_nanousd,
                    used,
                )
        return Reservation(True, "budget.reserved", scopes[0].limit_nanousd, first_used)

    def reserve_many(
        self,
        session: Session,
        *,
        department: str,
        month: str,
        user: str,
        prompt: str,
        items: Sequence[tuple[int, int]],
    ) -> tuple[int, Reservation]:
        """Check and hold a group's estimates in one transaction (the batch engine's admission).

        ``items`` are ``(estimate_nano, already_reserved_nano)`` per request, in order; the longest prefix
        that fits every applicable budget is admitted. Returns ``(admitted, reservation)`` where the
        reservation is the refusal of the first item that did not fit (or ``ok`` when all did)."""
        scopes = self.scopes(department, user, prompt)
        self._lock(session, scopes, month)
        admitted = len(items)
        refusal: Reservation | None = None
        for sc in scopes:
            spent, reserved = self.ledger.month_usage(sc.key, month, session, scope=sc.scope)
            used = spent + reserved
            for i, (estimate, own) in enumerate(items[:admitted]):
                if used - own + estimate > sc.limit_nanousd:
                    admitted = i
                    refusal = Reservation(
                        False,
                        f"budget.hard_stop: {sc.scope} {sc.key} has used ${usd(used - own):.4f} of "
                        f"${usd(sc.limit_nanousd):.2f} in {month}; this call needs up to ${usd(estimate):.6f}",
                        sc.limit_nanousd,
                        used - own,
                    )
                    break
                used += estimate - own
        return admitted, refusal or Reservation(True, "budget.reserved", scopes[0].limit_nanousd, 0)

    def after_settle(self, department: str, user: str, prompt: str, month: str) -> list[BudgetAlertEvent]:
        """Fire every threshold the budgets have passed and that has not fired yet this month."""
        fired: list[BudgetAlertEvent] = []
        for sc in self.scopes(department, user, prompt):
            pending = [t for t in sc.thresholds if (sc.scope, sc.key, month, t) not in self._fired]
            if not pending:
                continue
            spent, _ = self.ledger.month_usage(sc.key, month, scope=sc.scope)
            for threshold in pending:
                if spent < int(Decimal(sc.limit_nanousd) * Decimal(str(threshold))):
                    continue
                self._fired.add((sc.scope, sc.key, month, threshold))
                event = BudgetAlertEvent(
                    sc.scope, sc.key, month, threshold, spent, sc.limit_nanousd, self._recipients(sc, department)
                )
                if self._claim(event):
                    fired.append(event)
                    log.warning("budget alert: %s", event.subject)
                    if self.alerter is not None:
                        try:
                            self.alerter(event)
                        except Exception:
                            log.exception("budget alert could not be delivered: %s", event.subject)
        return fired

    def _claim(self, event: BudgetAlertEvent) -> bool:
        try:
            with self.ledger.transaction() as s:
                s.add(
                    BudgetAlert(
                        scope=event.scope,
                        scope_key=event.key,
                        month=event.month,
                        threshold_permille=round(event.threshold * 1000),
                        spent_nanousd=event.spent_nanousd,
                        limit_nanousd=event.limit_nanousd,
                    )
                )
        except IntegrityError:
            return False  # already fired (by this or another process)
        return True

    def _recipients(self, sc: BudgetScope, department: str) -> tuple[str, ...]:
        dept = self.policy.departments[department]
        people = [*dept.recipients, *([dept.head] if dept.head else []), *self.policy.admins]
        if sc.scope == "person":
            person = self.policy.people.get(sc.key)
            people.insert(0, (person.email if person and person.email else sc.key))
        return tuple(dict.fromkeys(p for p in people if "@" in p))

    def usage(self, department: str, month: str | None = None) -> dict[str, object]:
        month = month or self.month()
        spent, reserved = self.ledger.month_usage(department, month)
        limit = self.limit_nano(department)
        return {
            "department": department,
            "month": month,
            "budget_usd": usd(limit),
            "spent_usd": usd(spent),
            "reserved_usd": usd(reserved),
            "remaining_usd": usd(limit - spent - reserved),
            "used_ratio": float((spent + reserved) / limit) if limit else 0.0,
        }
