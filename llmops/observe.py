"""Observability: one structured JSON log line per call with the seed's fields.

Only the *redacted* prompt excerpt (≤ 100 characters) is logged, never raw prompts, secrets or PII.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from llmops.guard import redact_text
from llmops.types import Result

log = logging.getLogger("llmops.calls")

EXCERPT_CHARS = 100


_WINDOW = 400  # characters redacted for an excerpt; doubled until well past what the excerpt shows


def excerpt(text: str) -> str:
    """A redacted, single-line excerpt of at most 100 characters.

    Only a leading window is redacted (a 2 KB record costs a fifth of a full pass): the window grows until
    the redacted text runs at least 200 characters past what the excerpt shows, so no finding that
    touches the excerpt can be cut by the window's end."""
    window = _WINDOW
    while True:
        head = text[:window]
        flat = " ".join(redact_text(head).split())
        if window >= len(text) or len(flat) >= EXCERPT_CHARS + 200:
            break
        window *= 2
    return flat if len(flat) <= EXCERPT_CHARS else flat[: EXCERPT_CHARS - 1] + "…"


def log_call(result: Result, *, user: str, department: str, prompt: str, prompt_excerpt: str) -> None:
    record = {
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": "llm_call",
        "call_id": result.call_id,
        "user": user,
        "department": department,
        "prompt": prompt,
        "prompt_version": result.prompt_version,
        "prompt_excerpt": prompt_excerpt,
        "model": result.model,
        "status": str(result.status),
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "latency_ms": result.latency_ms,
        "cost_usd": float(result.cost_usd),
        "quality_score": result.quality_score,
        "reasons": result.reasons,
        "findings": result.findings,  # PII types and counts only, never values
        "replayed": result.replayed,
    }
    log.info(json.dumps(record, ensure_ascii=False))
