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


def excerpt(text: str, *, redact: bool = True) -> str:
    """A single-line excerpt of at most 100 characters, with every PII finding of the whole text redacted.

    ``redact=False`` is for text the guard has already redacted with nothing let through (every finding is a
    placeholder already): detecting again would find nothing new. Redaction runs over the whole text, never a
    window of it — a finding cut at a window's end (a private-key block) would not be found and would leak."""
    flat = " ".join((redact_text(text) if redact else text).split())
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
