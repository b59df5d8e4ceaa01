"""The guard stage: injection screening and PII redaction of a record's template variables, before
anything leaves the process.

* Injection (:mod:`llmops.injection`): a string variable the screening flags blocks the record — a rule's hit
  the learned layer confirms (or any hit, with the layer off or ``guard.injection_rules_block``), a hit in a
  decoded or leetspeak view, or a text the layer flags on its own.
* PII (:mod:`llmops.pii`, Presidio analyzer): per type the policy says redact, block or allow — with
  the record's data class able to tighten it (``guard.data_classes``: per-class overrides and mandatory
  redaction). Redaction uses Presidio's anonymizer to put typed placeholders (``<EMAIL_1>``) in place,
  numbered consistently within the record: the same value gets the same placeholder in every variable.
* Placeholders may be restored in the output for the data owner (``restore_placeholders``); the mapping
  stays in memory, it is never logged or stored.

Fail closed: any exception inside the guard blocks the record with reason ``guard_error: <Type>``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmops import injection
from llmops.errors import raised_at
from llmops.pii import Finding, NamePipelineUnavailable, detect
from llmops.policy import GuardPolicy
from llmops.types import GUARD_ERROR

log = logging.getLogger("llmops.guard")

__all__ = ["Finding", "GuardVerdict", "detect", "guard_variables", "redact_text", "restore", "screen_injection"]


def screen_injection(
    text: str,
    *,
    released: str = "",
    learned: bool = True,
    threshold: float | None = None,
    rules_block: bool = False,
) -> str | None:
    """The injection rule ``text`` hits, or None; ``released`` is a rule a data owner released, not screened;
    ``learned``/``threshold`` switch and tune the learned layer (policy ``guard.injection_model``);
    ``rules_block`` makes every rule's hit block outright (policy ``guard.injection_rules_block``)."""
    hit = injection.screen(text, released, learned=learned, threshold=threshold, rules_block=rules_block)
    return hit.rule if hit else None


@dataclass
class GuardVerdict:
    action: str  # "allow" | "redact" | "block"
    variables: dict[str, Any]
    findings: dict[str, int] = field(default_factory=dict)
    rule: str | None = None
    placeholders: dict[str, str] = field(default_factory=dict)  # placeholder -> original (never logged)
    restore: bool = False  # may the placeholders be put back into the output for the data owner?
    allowed: set[str] = field(default_factory=set)  # PII types the policy let through unredacted
    spans: list[Finding] = field(default_factory=list)  # every finding, in the order the strings were screened


def guard_variables(
    variables: Mapping[str, Any], policy: GuardPolicy, data_class: str = "internal", *, released: str | None = None
) -> GuardVerdict:
    """Screen and redact every string variable of one record. Fails closed.

    ``released`` is the rule of a quarantine entry a data owner released for this very request: a released
    injection hit is not screened again; a released ``pii.<type>`` block becomes redaction (the value still
    never leaves). Nothing else is relaxed."""
    try:
        return _guard(variables, policy, data_class, released or "")
    except Exception as exc:
        # Never the exception's message (it may quote the record), except the name pipeline's install hint.
        detail = str(exc) if isinstance(exc, NamePipelineUnavailable) else f"raised at {raised_at(exc)}"
        log.error("guard error, record blocked: %s (%s)", type(exc).__name__, detail)
        return GuardVerdict("block", {}, rule=f"{GUARD_ERROR}: {type(exc).__name__}")


def _guard(variables: Mapping[str, Any], policy: GuardPolicy, data_class: str, released: str) -> GuardVerdict:
    block_rule: str | None = None
    if policy.injection == "block":
        released_rule = released if released.startswith("injection.") else ""
        for value in _strings(variables):
            block_rule = screen_injection(
                value,
                released=released_rule,
                learned=policy.injection_model,
                threshold=policy.injection_threshold,
                rules_block=policy.injection_rules_block,
            )  # a released rule only: the others still block
            if block_rule:
                break
    rules = policy.for_class(data_class)
    counters: dict[str, int] = {}
    by_value: dict[tuple[str, str], str] = {}
    placeholders: dict[str, str] = {}
    findings: dict[str, int] = {}
    allowed: set[str] = set()
    spans: list[Finding] = []

    # A blocked record is still screened to the end: its quarantine entry and audit line count every finding
    # type (a data owner reviewing an injection block learns the record also holds two e-mail addresses).
    def redact(text: str) -> str:
        nonlocal block_rule
        to_replace: list[Finding] = []
        for f in detect(text, ja_names=policy.ja_name_pipeline):
            spans.append(f)
            findings[f.pii_type] = findings.get(f.pii_type, 0) + 1
            action = rules.action_for(f.pii_type)
            if action == "block" and released == f"pii.{f.pii_type.lower()}":
                action = "redact"
            if action == "block":
                block_rule = block_rule or f"pii.{f.pii_type.lower()}"
                continue
            if action == "allow":
                allowed.add(f.pii_type)
                continue
            key = (f.pii_type, text[f.start : f.end])
            if key not in by_value:
                counters[f.pii_type] = counters.get(f.pii_type, 0) + 1
                by_value[key] = f"<{f.pii_type}_{counters[f.pii_type]}>"
                placeholders[by_value[key]] = key[1]
            to_replace.append(f)
        if block_rule:
            return text  # nothing of a blocked record is sent: no need to redact it
        return anonymize(text, to_replace, lambda f: by_value[(f.pii_type, text[f.start : f.end])])

    injection_rule = block_rule
    try:
        cleaned = _map_strings(variables, redact)
    except Exception:
        if injection_rule is None:
            raise  # fail closed: guard_error
        # already blocked: a fault while counting its PII must not turn the verdict into a guard error
        return GuardVerdict("block", {}, findings=findings, rule=injection_rule, spans=spans)
    if block_rule:
        return GuardVerdict("block", {}, findings=findings, rule=block_rule, spans=spans)
    action = "redact" if placeholders else "allow"
    return GuardVerdict(
        action,
        cleaned,
        findings=findings,
        placeholders=placeholders,
        restore=rules.restore,
        allowed=allowed,
        spans=spans,
    )


def anonymize(text: str, found: list[Finding], placeholder: Callable[[Finding], str]) -> str:
    """Replace each finding with its placeholder through Presidio's anonymizer (one operator per type)."""
    if not found:
        return text
    from presidio_anonymizer.entities import OperatorConfig, RecognizerResult

    by_span = {(f.start, f.end): placeholder(f) for f in found}
    results = [RecognizerResult(f.pii_type, f.start, f.end, f.score) for f in found]
    operators = {t: OperatorConfig("custom", {"lambda": _lookup(text, by_span)}) for t in {f.pii_type for f in found}}
    return str(_anonymizer().anonymize(text=text, analyzer_results=results, operators=operators).text)


def _lookup(text: str, by_span: dict[tuple[int, int], str]) -> Callable[[str], str]:
    # The custom operator receives the entity's text only; spans of equal text share a placeholder.
    by_text = {text[s:e]: ph for (s, e), ph in by_span.items()}
    return lambda value: by_text[value]


_ANONYMIZER: Any = None


def _anonymizer() -> Any:
    global _ANONYMIZER
    if _ANONYMIZER is None:
        from presidio_anonymizer import AnonymizerEngine

        _ANONYMIZER = AnonymizerEngine()
    return _ANONYMIZER


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _map_strings(value: Any, fn: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, Mapping):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_map_strings(v, fn) for v in value]
    return value


def restore(text: str, placeholders: Mapping[str, str]) -> str:
    """Put the original values back for the data owner (longest placeholder first: <EMAIL_10> before _1)."""
    for ph in sorted(placeholders, key=len, reverse=True):
        text = text.replace(ph, placeholders[ph])
    return text


def redact_text(text: str) -> str:
    """Redact every PII finding in free text (log excerpts, error messages): ``<TYPE>`` placeholders."""
    found = detect(text)
    out, last = [], 0
    for f in found:
        out.append(text[last : f.start])
        out.append(f"<{f.pii_type}>")
        last = f.end
    out.append(text[last:])
    return "".join(out)
