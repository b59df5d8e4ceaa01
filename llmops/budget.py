"""Monthly department budgets with reservations in the ledger.

Before a call its cost is estimated (prompt tokens + max_tokens at the model's price) and reserved
in the same transaction that checks the budget: spent + reserved + estimate must stay within the
department's monthly limit (hard stop at 100 %). After the call the reservation is settled to the
actual cost. Months are calendar months in the configured timezone (default Asia/Tokyo).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import text
from sqlalchemy.orm import Session

from llmops.ledger import Ledger, LlmCall
from llmops.policy import Policy
from llmops.pricing import to_nano, usd

log = logging.getLogger("llmops.budget")


@dataclass(frozen=True)
class Reservation:
    ok: bool
    reason: str
    limit_nanousd: int
    used_nanousd: int  # spent + reserved by others, before this reservation


class Budget:
    def __init__(self, ledger: Ledger, policy: Policy, timezone: str) -> None:
        self.ledger = ledger
        self.policy = policy
        self.tz = ZoneInfo(timezone)

    def month(self, when: datetime | None = None) -> str:
        return (when or datetime.now(UTC)).astimezone(self.tz).strftime("%Y-%m")

    def limit_nano(self, department: str) -> int:
        return to_nano(self.policy.departments[department].monthly_budget_usd)

    def _lock(self, session: Session, department: str, month: str) -> None:
        # SQLite: the transaction is already BEGIN IMMEDIATE (one writer). Postgres: serialise per budget.
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"{department}:{month}"})

    def reserve(
        self, session: Session, *, department: str, month: str, request_key: str, estimate_nano: int
    ) -> Reservation:
        """Check and hold ``estimate_nano`` for ``request_key``. Must run inside ``ledger.transaction()``."""
        self._lock(session, department, month)
        spent, reserved = self.ledger.month_usage(department, month, session)
        row = session.query(LlmCall).filter(LlmCall.request_key == request_key).one_or_none()
        own = row.reserved_nanousd if row is not None else 0
        used = spent + reserved - own
        limit = self.limit_nano(department)
        if used + estimate_nano > limit:
            return Reservation(
                False,
                f"budget.hard_stop: {department} has used ${usd(used):.4f} of ${usd(limit):.2f} in {month}; "
                f"this call needs up to ${usd(estimate_nano):.6f}",
                limit,
                used,
            )
        return Reservation(True, "budget.reserved", limit, used)

    def note_settled(self, department: str, month: str, before_nano: int, after_nano: int) -> None:
        limit = self.limit_nano(department)
        for threshold in self.policy.departments[department].alert_thresholds:
            mark = int(limit * threshold)
            if before_nano < mark <= after_nano:
                log.warning(
                    "budget alert: %s crossed %.0f%% of its %s budget (%s of %s USD)",
                    department,
                    threshold * 100,
                    month,
                    usd(after_nano),
                    usd(limit),
                )

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
