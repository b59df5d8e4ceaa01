"""Cheap output checks run on every answer: format (JSON and schema), length, PII leaked."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

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
                import jsonschema

                try:
                    jsonschema.validate(value, spec.json_schema)
                except jsonschema.ValidationError as exc:
                    report.failed.append(f"check.schema: {exc.message[:120]}")
                else:
                    report.passed.append("check.schema")
    leaked = [f.pii_type for f in detect(text)]
    if leaked:
        report.failed.append(f"check.pii_leak: {', '.join(sorted(set(leaked)))}")
    else:
        report.passed.append("check.pii_leak")
    return report


def _strip_fence(text: str) -> str:
    if text.startswith("```"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
        text = text.rsplit("```", 1)[0]
    return text.strip()
