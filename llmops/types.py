"""The request and result that travel the one request path."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from llmops.policy import DataClass, Priority
from llmops.pricing import usd


class Status(StrEnum):
    OK = "ok"
    BLOCKED = "blocked"
    DENIED = "denied"
    THROTTLED = "throttled"
    BUDGET_EXCEEDED = "budget_exceeded"
    FAILED = "failed"
    DEFERRED = "deferred"  # batch-level: not attempted because the budget stopped the batch
    PENDING = "pending"  # ledger-only: reserved, call in flight (or its process died)
    RELEASED = "released"  # ledger-only: a data owner released it from quarantine; the next run processes it


#: Statuses that are final for a request key: a rerun reuses them and never calls again.
FINAL_STATUSES = frozenset({Status.OK, Status.BLOCKED, Status.DENIED})
GUARD_ERROR = "guard_error"  # the rule of a record blocked because a check raised (fail closed)


@dataclass(frozen=True)
class Request:
    user: str
    department: str
    prompt: str  # name, name@alias, name@latest or name@1.2.3
    variables: dict[str, Any]
    record_key: str
    run_id: str
    purpose: str = "batch"
    priority: Priority | None = None
    data_class: DataClass = "internal"
    model: str | None = None  # pin a catalog model instead of routing

    def request_key(self, prompt_version: str) -> str:
        """Deterministic id of this unit of work: rerunning it never bills it twice."""
        return _digest(self.run_id, self.record_key, self.purpose, prompt_version)


def call_id_for(request_key: str, model: str) -> str:
    return _digest(request_key, model)


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\x1f")
    return h.hexdigest()[:32]


@dataclass
class Result:
    status: Status
    record_key: str
    request_key: str = ""
    call_id: str | None = None
    prompt_version: str | None = None
    model: str | None = None
    output: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    cost_nanousd: int = 0
    quality_score: float | None = None
    reasons: list[str] = field(default_factory=list)
    findings: dict[str, int] = field(default_factory=dict)
    replayed: bool = False  # True when the ledger already had a final result for this request

    @property
    def cost_usd(self) -> Decimal:
        return usd(self.cost_nanousd)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)
