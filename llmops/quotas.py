"""Rate limits per person and per department (requests and tokens per minute) from the policy.

Admission is a sliding one-minute window kept in the ledger database (table ``rate_events``), so the
limit holds across every worker process and machine that shares the ledger — a Celery worker on
another host counts against the same minute. Tokens are charged as providers do: prompt tokens plus
``max_tokens`` at admission.

:meth:`QuotaLimiter.admit` never refuses for good: it either admits (records the event and returns 0) or
returns how many seconds to wait. Callers wait and ask again, so a throttled batch slows down but never
drops a record. A single request larger than a whole minute's token allowance is admitted alone into
an empty window rather than refused forever.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from llmops.ledger import Ledger, RateEvent
from llmops.policy import Policy, RateLimit

WINDOW_S = 60.0


@dataclass(frozen=True)
class Admission:
    wait_s: float  # 0 when admitted
    scope: str = ""  # the scope that throttled (e.g. "person:hana@x" rpm)
    limit: str = ""

    @property
    def admitted(self) -> bool:
        return self.wait_s <= 0


class QuotaLimiter:
    def __init__(self, ledger: Ledger, policy: Policy, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.policy = policy
        self._clock = clock

    def scopes(self, user: str, department: str) -> list[tuple[str, RateLimit]]:
        found: list[tuple[str, RateLimit]] = []
        person = self.policy.people.get(user)
        if person is not None and person.rate_limit is not None:
            found.append((f"person:{user}", person.rate_limit))
        dept = self.policy.departments.get(department)
        if dept is not None and dept.rate_limit is not None:
            found.append((f"department:{department}", dept.rate_limit))
        return found

    def admit(self, user: str, department: str, tokens: int) -> Admission:
        """Admit one request of ``tokens`` for ``user`` in ``department`` now, or say how long to wait."""
        return self.admit_many(user, department, [tokens])[1]

    def admit_many(self, user: str, department: str, tokens: list[int]) -> tuple[int, Admission]:
        """Admit as many of ``tokens`` (in order) as fit now, in one transaction: (admitted, the
        admission of the first that did not fit — or a plain admission when all did). Each scope's
        window is read once; the admitted requests are added to it as they are admitted."""
        scopes = self.scopes(user, department)
        if not scopes:
            return len(tokens), Admission(0.0)
        admitted = 0
        with self.ledger.transaction() as s:
            now = self._clock()
            self._lock(s, [name for name, _ in scopes])
            windows: dict[str, list[tuple[float, int]]] = {}
            for name, _ in scopes:
                s.execute(delete(RateEvent).where(RateEvent.scope == name, RateEvent.at < now - 2 * WINDOW_S))
                windows[name] = self._events(s, name, now)
            for t in tokens:
                for name, limit in scopes:
                    wait, kind = _wait(windows[name], limit, t, now)
                    if wait > 0:
                        return admitted, Admission(wait, name, f"{kind} {getattr(limit, kind)}")
                for name, _ in scopes:
                    s.add(RateEvent(scope=name, at=now, tokens=t))
                    windows[name].append((now, t))
                admitted += 1
        return admitted, Admission(0.0)

    def wait_for(self, user: str, department: str, tokens: int, sleep: Callable[[float], None] = time.sleep) -> float:
        """Block until admitted; returns the seconds waited (0 when not throttled)."""
        waited = 0.0
        while True:
            adm = self.admit(user, department, tokens)
            if adm.admitted:
                return waited
            delay = min(adm.wait_s, WINDOW_S) + 0.01
            sleep(delay)
            waited += delay

    # -- internals ------------------------------------------------------------------------------
    def _lock(self, s: Session, names: list[str]) -> None:
        # SQLite transactions are BEGIN IMMEDIATE (one writer). Postgres: serialise per scope.
        if s.get_bind().dialect.name == "postgresql":
            for name in sorted(names):
                s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": "rate:" + name})

    def _events(self, s: Session, name: str, now: float) -> list[tuple[float, int]]:
        rows = s.execute(
            select(RateEvent.at, RateEvent.tokens)
            .where(RateEvent.scope == name, RateEvent.at > now - WINDOW_S)
            .order_by(RateEvent.at)
        ).all()
        return [(float(a), int(t)) for a, t in rows]


def _wait(events: list[tuple[float, int]], limit: RateLimit, tokens: int, now: float) -> tuple[float, str]:
    """Seconds until a request of ``tokens`` fits the window ``events`` (oldest first), and which limit
    holds it ("rpm" or "tpm")."""
    wait, kind = 0.0, "rpm"
    if limit.rpm is not None:
        excess = len(events) + 1 - limit.rpm
        if excess > 0:
            wait = events[excess - 1][0] + WINDOW_S - now
    if limit.tpm is not None:
        used = sum(t for _, t in events)
        if events and used + tokens > limit.tpm:
            # wait until enough of the oldest events leave the window (all of them if tokens > tpm)
            need = used + tokens - limit.tpm
            freed = 0
            tpm_wait = events[-1][0] + WINDOW_S - now  # larger than a minute's allowance: alone, once empty
            for at, t in events:
                freed += t
                if freed >= need:
                    tpm_wait = at + WINDOW_S - now
                    break
            if tpm_wait > wait:
                wait, kind = tpm_wait, "tpm"
    return max(0.0, wait), kind
