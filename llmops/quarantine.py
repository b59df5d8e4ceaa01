"""Review and release of quarantined records.

The gateway writes a quarantine row for every blocked or denied request: rule, reason, finding types
and counts — never the text. A data owner (the head of the record's department, or a platform admin)
reviews it and may *release* a guard block:

* the quarantine row records who released it, when and why;
* the ledger row becomes ``released`` (no longer final), so the next run of the same batch (same run id:
  Airflow "clear", or ``llmops batch run --run-id``) processes the record again;
* that request is then exempt from exactly the released rule: an injection hit is not screened again,
  a ``pii.<type>`` block becomes redaction. PII is still never sent in clear.

Access denials cannot be released: the policy file decides who may run what.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import select

from llmops.errors import RequestError
from llmops.ledger import Ledger, LlmCall, Quarantine
from llmops.policy import Policy
from llmops.types import Status

log = logging.getLogger("llmops.audit")

RELEASABLE = ("injection.", "pii.")


def release(ledger: Ledger, policy: Policy, request_key: str, *, by: str, note: str) -> Quarantine:
    """Release one quarantined request. Raises RequestError with the fix when it may not be released."""
    if not note.strip():
        raise RequestError("a release needs a reason", "pass --note 'why this record is safe to send'")
    with ledger.transaction() as s:
        q = s.scalar(select(Quarantine).where(Quarantine.request_key == request_key))
        if q is None:
            raise RequestError(
                f"no quarantined record with request key {request_key!r}",
                "list them with: llmops guard quarantine",
            )
        if q.released_at is not None:
            raise RequestError(f"{request_key} was already released by {q.released_by}", "nothing to do")
        if not q.rule.startswith(RELEASABLE):
            raise RequestError(
                f"{request_key} was {q.status} by rule {q.rule!r}, which cannot be released",
                "access denials are decided by llmops.yaml; a guard error is screened again when its run is rerun "
                "(same run id: Airflow clear, or llmops batch run --run-id)",
            )
        head = policy.departments[q.department].head if q.department in policy.departments else None
        if by != head and by not in policy.admins:
            raise RequestError(
                f"{by} may not release records of department {q.department!r}",
                f"ask the department head ({head or 'none set'}) or a platform admin",
            )
        q.released_by, q.released_at, q.release_note = by, datetime.now(UTC), note.strip()
        row = s.scalar(select(LlmCall).where(LlmCall.request_key == request_key))
        if row is not None and row.status == Status.BLOCKED:
            row.status = Status.RELEASED
            row.reasons = f"{row.reasons}; quarantine.released by {by}"
        s.flush()
        s.expunge(q)
    log.info(
        '{"event": "quarantine_release", "request_key": "%s", "rule": "%s", "by": "%s", "department": "%s"}',
        request_key,
        q.rule,
        by,
        q.department,
    )
    return q


def released_rule(ledger: Ledger, request_key: str) -> str | None:
    """The rule a data owner released for this request, if any."""
    with ledger.transaction() as s:
        q = s.scalar(
            select(Quarantine).where(Quarantine.request_key == request_key, Quarantine.released_at.is_not(None))
        )
        return q.rule if q is not None else None
