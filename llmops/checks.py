"""Cheap output checks run on every answer: format (JSON and schema), length, PII leaked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmops.guard import detect
from llmops.prompts import OutputSpec


@dataclass
class CheckReport:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def score(self) -> float:
        total = len(self.passed) + len(self.failed)
        return 1.0 if total == 0 else len(self.passed) / total

    @property
    def hard_failure(self) -> bool:
        return any(f.startswith(("check.json", "check.schema")) for f in self.failed)


def check_output(text: str, spec: OutputSpec, placeholders: dict[str, str] | None = None) -> CheckReport:
    report = CheckReport()
    stripped = text.strip()
    if len(stripped) < max(spec.min_chars, 1):
        report.failed.append("check.length: answer is empty or too short")
    elif spec.max_chars and len(stripped) > spec.max_chars:
        report.failed.append(f"check.length: answer has {len(stripped)} characters, over {spec.max_chars}")
    else:
        report.passed.append("check.length")
    if spec.format == "json":
        try:
            value = json.loads(_strip_fence(stripped))
        except ValueError:
            report.failed.append("check.json: answer is not valid JSON")
        else:
            report.passed.append("check.json")
            if spec.json_schema:
                error = _schema_error(value, spec.json_schema)
                if error is not None:
                    report.failed.append(f"check.schema: {error[:120]}")
                else:
                    report.passed.append("check.schema")
    leaked = [f.pii_type for f in detect(text)]
    if leaked:
        report.failed.append(f"check.pii_leak: {', '.join(sorted(set(leaked)))}")
    else:
        report.passed.append("check.pii_leak")
    return report


_VALIDATORS: dict[str, Any] = {}


def _schema_error(value: Any, schema: dict[str, Any]) -> str | None:
    """The best-matching schema violation, or None. Validators are built (and schemas checked) once per
    schema: ``jsonschema.validate`` re-checks the schema on every call, ~1 ms each."""
    import jsonschema

    key = json.dumps(schema, sort_keys=True, default=str)
    validator = _VALIDATORS.get(key)
    if validator is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        validator = _VALIDATORS[key] = cls(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if error is None else str(error.message)


def _strip_fence(text: str) -> str:
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()
