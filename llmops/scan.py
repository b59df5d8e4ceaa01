"""``llmops guard scan``: pre-screen a dataset with the guard before a job runs.

Reads JSONL records ``{"text", "user", "department", "data_class"}`` and writes, per record, the
decision the request path would take (allow, redact, block or denied), the rule, the findings (type,
start, end, score) and the redacted text. The raw text is never echoed back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from llmops.guard import guard_variables
from llmops.policy import Policy


def scan_record(record: dict[str, Any], policy: Policy) -> dict[str, Any]:
    text = record.get("text")
    if not isinstance(text, str):
        return {"decision": "error", "rule": "scan.input", "reason": "record has no string field 'text'"}
    out: dict[str, Any] = {k: record[k] for k in ("id", "user", "department", "data_class") if k in record}
    user, department = record.get("user"), record.get("department")
    data_class = record.get("data_class", "internal")
    if user is not None or department is not None:
        person = policy.people.get(str(user))
        if person is None:
            return {**out, "decision": "denied", "rule": "access.unknown_user", "findings": []}
        if department != person.department:
            return {**out, "decision": "denied", "rule": "access.department", "findings": []}
        if not any(data_class in policy.roles[r].data_classes for r in person.roles):
            return {**out, "decision": "denied", "rule": "access.data_class", "findings": []}
    verdict = guard_variables({"text": text}, policy.guard, str(data_class))
    decision = verdict.action
    # every finding, a blocked record's too (the guard screens it to the end); none after a guard error
    findings = [{"type": f.pii_type, "start": f.start, "end": f.end, "score": f.score} for f in verdict.spans]
    result = {**out, "decision": decision, "rule": verdict.rule, "findings": findings}
    if decision != "block":
        result["redacted_text"] = verdict.variables.get("text", text)
    return result


def scan_lines(lines: Iterable[str], policy: Policy) -> Iterator[dict[str, Any]]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            yield {"line": lineno, "decision": "error", "rule": "scan.input", "reason": "not valid JSON"}
            continue
        if not isinstance(record, dict):
            yield {"line": lineno, "decision": "error", "rule": "scan.input", "reason": "not a JSON object"}
            continue
        yield {"line": lineno, **scan_record(record, policy)}
