"""Evaluation metrics: small functions registered through one call, usable alone.

A metric takes a :class:`Case` view (output, expected, facts, inputs, spec) and returns a score in
[0, 1], or ``None`` when it does not apply (e.g. exact match without an expected answer). Deterministic
metrics need no model. Register your own with :func:`register_metric`.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmops.guard import detect
from llmops.prompts import OutputSpec


@dataclass(frozen=True)
class CaseView:
    output: str
    expected: Any = None
    facts: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    spec: OutputSpec = field(default_factory=lambda: OutputSpec.model_validate({}))


Metric = Callable[[CaseView], float | None]
METRICS: dict[str, Metric] = {}


def register_metric(name: str) -> Callable[[Metric], Metric]:
    def deco(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return deco


# -- text normalisation (SQuAD-style for English, characters for CJK) ---------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]")


def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, no punctuation, no articles, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def tokens(text: str) -> list[str]:
    """Words for Latin text; single characters for Japanese/Chinese (no segmenter needed)."""
    out: list[str] = []
    for word in normalize_answer(text).split():
        if _CJK.search(word):
            out.extend(ch for ch in word if not unicodedata.category(ch).startswith("P"))
        else:
            out.append(word)
    return out


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token-level F1."""
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _rouge_tokens(text: str) -> list[str]:
    # rouge-score's default tokenizer: lower case, non-alphanumerics become spaces; CJK as characters
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    for word in re.sub(r"[^a-z0-9\u3040-\u30ff\u3400-\u9fff]+", " ", text).split():
        out.extend(list(word) if _CJK.search(word) else [word])
    return out


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence), as rouge-score computes it."""
    a, b = _rouge_tokens(prediction), _rouge_tokens(reference)
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def _expected_text(expected: Any) -> str | None:
    if expected is None:
        return None
    return expected if isinstance(expected, str) else json.dumps(expected, ensure_ascii=False, sort_keys=True)


def _parsed(output: str) -> Any:
    text = output.strip()
    if text.startswith("```"):
        text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
    try:
        return json.loads(text)
    except ValueError:
        return None


# -- the built-in metrics --------------------------------------------------------------------------
@register_metric("length")
def length_ok(c: CaseView) -> float:
    n = len(c.output.strip())
    return float(max(c.spec.min_chars, 1) <= n <= (c.spec.max_chars or 10**9))


@register_metric("exact_match")
def exact_match(c: CaseView) -> float | None:
    if isinstance(c.expected, dict):
        got = _parsed(c.output)
        return None if got is None else float(all(got.get(k) == v for k, v in c.expected.items()))
    ref = _expected_text(c.expected)
    return None if ref is None else float(normalize_answer(c.output) == normalize_answer(ref))


@register_metric("token_f1")
def token_f1_metric(c: CaseView) -> float | None:
    if isinstance(c.expected, dict) or c.expected is None:
        return None
    return token_f1(c.output, str(c.expected))


@register_metric("rouge_l")
def rouge_l_metric(c: CaseView) -> float | None:
    if isinstance(c.expected, str):
        return rouge_l(c.output, c.expected)
    if c.facts:  # summaries and reviews: against the reference facts joined
        return rouge_l(c.output, " ".join(c.facts))
    return None


@register_metric("json_valid")
def json_valid(c: CaseView) -> float | None:
    if c.spec.format != "json":
        return None
    return float(_parsed(c.output) is not None)


@register_metric("schema")
def schema_valid(c: CaseView) -> float | None:
    if c.spec.format != "json" or not c.spec.json_schema:
        return None
    value = _parsed(c.output)
    if value is None:
        return 0.0
    import jsonschema

    try:
        jsonschema.validate(value, c.spec.json_schema)
    except jsonschema.ValidationError:
        return 0.0
    return 1.0


@register_metric("relevance")
def relevance(c: CaseView) -> float | None:
    """Share of the answer's content words that come from the inputs (an on-topic, grounded answer)."""
    source = set(tokens(" ".join(str(v) for v in c.inputs.values())))
    answer = [t for t in tokens(c.output) if len(t) > 2 or _CJK.match(t)]
    if not answer or not source:
        return None
    return sum(1 for t in answer if t in source) / len(answer)


@register_metric("factuality")
def factuality(c: CaseView) -> float | None:
    """Share of reference facts the answer supports (≥ 60 % of a fact's tokens appear in the answer)."""
    if not c.facts:
        return None
    answer = Counter(tokens(c.output))
    supported = 0
    for fact in c.facts:
        ft = tokens(fact)
        if ft and sum(1 for t in ft if answer[t] > 0) / len(ft) >= 0.6:
            supported += 1
    return supported / len(c.facts)


_TOXIC_EN = frozenset("idiot stupid moron dumb hate kill shut useless pathetic disgusting loser".split())
_TOXIC_JA = ("馬鹿", "バカ", "アホ", "死ね", "殺す", "役立たず", "黙れ", "クズ", "ぶっ殺")


@register_metric("toxicity")
def non_toxic(c: CaseView) -> float:
    """1.0 when the answer uses no word of the English and Japanese toxicity lexicons."""
    words = set(re.findall(r"[a-z]+", c.output.lower()))
    return float(not (words & _TOXIC_EN) and not any(w in c.output for w in _TOXIC_JA))


@register_metric("pii_leak")
def no_pii_leak(c: CaseView) -> float:
    """1.0 when the guard's detector finds no personal data in the answer."""
    return float(not detect(c.output))


def score_case(c: CaseView, names: list[str] | None = None) -> dict[str, float]:
    out: dict[str, float] = {}
    for name in names or list(METRICS):
        value = METRICS[name](c)
        if value is not None:
            out[name] = float(value)
    return out


def overall(scores: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted mean of the applicable metrics (weight 1 for metrics the prompt does not weigh)."""
    if not scores:
        return 0.0
    total = sum(weights.get(k, 1.0) for k in scores)
    return sum(v * weights.get(k, 1.0) for k, v in scores.items()) / total if total else 0.0
