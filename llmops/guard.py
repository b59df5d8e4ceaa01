"""The guard stage: PII redaction and injection screening of template variables, before anything
leaves. Recognizers are pattern + checksum based (no model download) and register through
:func:`register_recognizer`. Text is folded (full-width → ASCII, zero-width removed) for detection,
with offsets mapped back to the original so redaction cuts the original text.

Fail closed: any error inside the guard blocks the record.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmops.policy import GuardPolicy

_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"), None)


def fold(text: str) -> tuple[str, list[int]]:
    """NFKC-fold each character (full-width digits/letters → ASCII) and drop zero-width characters.

    Returns the folded text and, for each folded character, the index of its source character.
    """
    out: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ord(ch) in _ZERO_WIDTH:
            continue
        folded = unicodedata.normalize("NFKC", ch) if ord(ch) > 127 else ch
        if folded in "‐‑‒–—―−ー" and ord(ch) > 127 and _near_digit(text, i):
            folded = "-"
        for c in folded:
            out.append(c)
            index.append(i)
    return "".join(out), index


def _near_digit(text: str, i: int) -> bool:
    prev = unicodedata.normalize("NFKC", text[i - 1]) if i > 0 else ""
    nxt = unicodedata.normalize("NFKC", text[i + 1]) if i + 1 < len(text) else ""
    return prev.isdigit() and nxt.isdigit()


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def my_number_ok(digits: str) -> bool:
    """Check digit of the Japanese Individual Number (12 digits)."""
    if len(digits) != 12 or not digits.isdigit():
        return False
    body = [int(c) for c in digits[:11]][::-1]
    s = sum(p * (n + 1 if n <= 5 else n - 5) for n, p in enumerate(body, start=1))
    check = 0 if s % 11 <= 1 else 11 - s % 11
    return check == int(digits[11])


@dataclass(frozen=True)
class Recognizer:
    pii_type: str
    pattern: re.Pattern[str]
    validate: Callable[[str, str, int], bool] | None = None  # (match, folded text, start) -> keep?


_RECOGNIZERS: list[Recognizer] = []


def register_recognizer(recognizer: Recognizer) -> None:
    """The one way to add a PII recognizer; the built-ins use it too."""
    _RECOGNIZERS.append(recognizer)


def _digits(s: str) -> str:
    return re.sub(r"\D", "", s)


def _card(m: str, _t: str, _s: int) -> bool:
    d = _digits(m)
    return 13 <= len(d) <= 19 and luhn_ok(d)


def _my_number(m: str, text: str, start: int) -> bool:
    window = text[max(0, start - 40) : start + len(m) + 20].lower()
    has_context = any(w in window for w in ("マイナンバー", "個人番号", "my number", "mynumber"))
    return has_context and my_number_ok(_digits(m))


def _ipv4(m: str, _t: str, _s: int) -> bool:
    return all(0 <= int(p) <= 255 for p in m.split("."))


_A = re.ASCII
for _r in (
    Recognizer(
        "PRIVATE_KEY", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----")
    ),
    Recognizer(
        "API_KEY",
        re.compile(
            r"(?<![A-Za-z0-9])(?:sk-(?:proj-|ant-)?[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16}|ghp_[A-Za-z0-9]{36}"
            r"|xox[baprs]-[A-Za-z0-9\-]{10,}|AIza[0-9A-Za-z_\-]{35})",
            _A,
        ),
    ),
    Recognizer("EMAIL", re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}", _A)),
    Recognizer("CREDIT_CARD", re.compile(r"(?<!\d)(?:\d[ \-]?){12,18}\d(?!\d)", _A), _card),
    Recognizer("MY_NUMBER", re.compile(r"(?<!\d)\d{4}[ \-]?\d{4}[ \-]?\d{4}(?!\d)", _A), _my_number),
    Recognizer(
        "PHONE",
        re.compile(
            r"(?<![\d\-])(?:\+\d{1,3}[ \-]?)?(?:\(?0\d{1,4}\)?[ \-]?\d{1,4}[ \-]?\d{3,4}"
            r"|\d{3}[ \-.]\d{3}[ \-.]\d{4})(?![\d\-])",
            _A,
        ),
        lambda m, _t, _s: 10 <= len(_digits(m)) <= 13,
    ),
    Recognizer("US_SSN", re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)", _A)),
    Recognizer("IP_ADDRESS", re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])", _A), _ipv4),
    Recognizer("JP_POSTAL_CODE", re.compile(r"〒\s?\d{3}-\d{4}|(?<!\d)\d{3}-\d{4}(?![\d\-])", _A)),
):
    register_recognizer(_r)


@dataclass(frozen=True)
class Finding:
    pii_type: str
    start: int  # offsets in the original text
    end: int


def detect(text: str) -> list[Finding]:
    folded, index = fold(text)
    spans: list[Finding] = []
    taken: list[tuple[int, int]] = []
    for rec in _RECOGNIZERS:
        for m in rec.pattern.finditer(folded):
            if rec.validate and not rec.validate(m.group(0), folded, m.start()):
                continue
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue  # an earlier, more specific recognizer already owns this span
            taken.append((m.start(), m.end()))
            spans.append(Finding(rec.pii_type, index[m.start()], index[m.end() - 1] + 1))
    return sorted(spans, key=lambda f: f.start)


# -- injection ------------------------------------------------------------------------------------
_INJECTION_RULES: list[tuple[str, re.Pattern[str]]] = [
    (
        "injection.override",
        re.compile(
            r"\b(ignore|disregard|forget|override)\b[^.\n]{0,40}\b(previous|prior|above|earlier|all|your|system)\b"
            r"[^.\n]{0,20}\b(instructions?|prompts?|rules|directions|guidelines)\b",
            re.I,
        ),
    ),
    (
        "injection.roleplay",
        re.compile(
            r"\b(you are now|from now on you are|pretend to be|act as)\b[^.\n]{0,40}"
            r"\b(dan|jailbroken|unfiltered|developer mode|no (rules|restrictions|limits))\b",
            re.I,
        ),
    ),
    (
        "injection.extraction",
        re.compile(
            r"\b(reveal|print|show|repeat|output|leak)\b[^.\n]{0,30}\b(system prompt|hidden instructions|"
            r"initial instructions|your instructions)\b",
            re.I,
        ),
    ),
    (
        "injection.markup",
        re.compile(r"<\s*/?\s*(system|assistant|im_start|im_end)\s*>|\[/?INST\]|^#{2,}\s*system\b", re.I | re.M),
    ),
    (
        "injection.override_ja",
        re.compile(r"(以前|前|上記|これまで|今まで)の(指示|命令|ルール|設定)を?(すべて|全て)?(無視|忘れ|破棄)"),
    ),
    ("injection.extraction_ja", re.compile(r"システムプロンプト(を|の内容を)?(表示|出力|教え|開示|見せ)")),
    (
        "injection.roleplay_ja",
        re.compile(r"(あなたは今から|これからあなたは).{0,20}(制限|ルール)(の)?(ない|なし|無し)"),
    ),
]


def screen_injection(text: str) -> str | None:
    folded, _ = fold(text)
    folded = unicodedata.normalize("NFKC", folded)
    for rule, pattern in _INJECTION_RULES:
        if pattern.search(folded):
            return rule
    return None


# -- the stage ------------------------------------------------------------------------------------
@dataclass
class GuardVerdict:
    action: str  # "allow" | "redact" | "block"
    variables: dict[str, Any]
    findings: dict[str, int] = field(default_factory=dict)
    rule: str | None = None
    placeholders: dict[str, str] = field(default_factory=dict)  # placeholder -> original (never logged)


def guard_variables(variables: Mapping[str, Any], policy: GuardPolicy) -> GuardVerdict:
    """Screen and redact every string variable of one record. Fails closed."""
    try:
        return _guard(variables, policy)
    except Exception as exc:
        return GuardVerdict("block", {}, rule=f"guard_error: {type(exc).__name__}")


def _guard(variables: Mapping[str, Any], policy: GuardPolicy) -> GuardVerdict:
    if policy.injection == "block":
        for value in _strings(variables):
            rule = screen_injection(value)
            if rule:
                return GuardVerdict("block", {}, rule=rule)
    counters: dict[str, int] = {}
    by_value: dict[tuple[str, str], str] = {}
    placeholders: dict[str, str] = {}
    findings: dict[str, int] = {}

    def redact(text: str) -> str:
        found = detect(text)
        out, last = [], 0
        for f in found:
            findings[f.pii_type] = findings.get(f.pii_type, 0) + 1
            action = policy.action_for(f.pii_type)
            if action == "block":
                raise _Blocked(f"pii.{f.pii_type.lower()}")
            if action == "allow":
                continue
            original = text[f.start : f.end]
            key = (f.pii_type, original)
            if key not in by_value:
                counters[f.pii_type] = counters.get(f.pii_type, 0) + 1
                by_value[key] = f"<{f.pii_type}_{counters[f.pii_type]}>"
                placeholders[by_value[key]] = original
            out.append(text[last : f.start])
            out.append(by_value[key])
            last = f.end
        out.append(text[last:])
        return "".join(out)

    try:
        cleaned = _map_strings(variables, redact)
    except _Blocked as b:
        return GuardVerdict("block", {}, findings=findings, rule=str(b))
    action = "redact" if placeholders else "allow"
    return GuardVerdict(action, cleaned, findings=findings, placeholders=placeholders)


class _Blocked(Exception):
    pass


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
    for ph, original in placeholders.items():
        text = text.replace(ph, original)
    return text


def redact_text(text: str) -> str:
    """Redact every PII finding in free text (used for log excerpts and error messages)."""
    found = detect(text)
    out, last = [], 0
    for f in found:
        out.append(text[last : f.start])
        out.append(f"<{f.pii_type}>")
        last = f.end
    out.append(text[last:])
    return "".join(out)
