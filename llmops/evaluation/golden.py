"""Golden sets: ``prompts/<name>/eval/golden.jsonl``, one case per line, validated on load."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmops.errors import PromptError


class GoldenCase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    inputs: dict[str, Any]
    expected: Any = None
    facts: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


def load_golden(path: Path) -> list[GoldenCase]:
    if not path.exists():
        raise PromptError(f"{path}: golden set missing", "add eval/golden.jsonl (one JSON case per line)")
    cases: list[GoldenCase] = []
    seen: set[str] = set()
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            case = GoldenCase.model_validate(json.loads(line))
        except ValueError as exc:
            detail = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc).splitlines()[0]
            raise PromptError(
                f"{path}:{lineno}: malformed golden case: {detail}",
                'write {"id": ..., "inputs": {...}, "expected": ..., "facts": [...]}',
            ) from None
        if case.id in seen:
            raise PromptError(f"{path}:{lineno}: duplicate case id {case.id!r}", "give every case a unique id")
        seen.add(case.id)
        cases.append(case)
    if not cases:
        raise PromptError(f"{path}: golden set is empty", "add at least one case")
    return cases


def golden_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
