"""Deterministic, honest model behaviour: answers are built from the prompt itself.

* **Classification** — the instructions list categories as ``- name: keyword, keyword`` lines and ask
  for JSON. The model scores each category by word overlap with the record. ``sim-small`` only looks at
  category names; ``sim-medium`` also at keywords; ``sim-large`` also matches word prefixes, weighs the
  subject and reads negation cues. So bigger models are measurably better, never by lookup.
* **Extraction / summarisation / review** — the record (inside ``<record>…</record>`` or the last
  message) is split into sentences and the most central ones are extracted; small models take the
  first sentences (lead baseline), larger ones rank by centrality and instruction keywords.
Japanese text is split on 。 and scored with character bigrams.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z0-9]+|[\u3040-\u30ff\u3400-\u9fff]+")
_STOP = frozenset(
    (
        "the a an and or of to in on for with is are was were be been it this that as at by from we you "
        "i our your their they he she them his her not no please can could would should will just have "
        "has had do does did so if but about into than then there here what which who when where how "
        "all any some "
    ).split()
)


@dataclass(frozen=True)
class SimModel:
    name: str
    level: int  # 1 small, 2 medium, 3 large
    latency_ms: float  # base latency
    ms_per_token: float  # added per completion token
    default_rpm: int
    default_tpm: int


MODELS: dict[str, SimModel] = {
    m.name: m
    for m in (
        SimModel("sim-small", 1, 40, 0.3, 3000, 1_000_000),
        SimModel("sim-medium", 2, 90, 0.6, 2000, 1_000_000),
        SimModel("sim-large", 3, 180, 1.0, 1000, 500_000),
    )
}


def _terms(text: str) -> list[str]:
    out: list[str] = []
    for w in _WORD.findall(text.lower()):
        if re.match(r"[\u3040-\u30ff\u3400-\u9fff]", w):
            out.extend(w[i : i + 2] for i in range(max(1, len(w) - 1)))
        elif w not in _STOP and len(w) > 1:
            out.append(w)
    return out


def _split_sections(messages: list[dict[str, str]]) -> tuple[str, str]:
    """(instructions, record) from the chat messages."""
    joined = "\n\n".join(str(m.get("content") or "") for m in messages)
    start = joined.rfind("<record>")
    end = joined.find("</record>", start + 1) if start >= 0 else -1
    if start >= 0 and end > start:
        record = joined[start + len("<record>") : end].strip()
        return joined[:start] + joined[end + len("</record>") :], record
    last = str(messages[-1].get("content") or "") if messages else ""
    return joined[: -len(last)] if last else joined, last


_CATEGORY_LINE = re.compile(r"^\s*[-*]\s*([a-z][a-z0-9_]*)\s*:\s*(.+)$", re.M)


def _classify(model: SimModel, instructions: str, record: str) -> str:
    categories = _CATEGORY_LINE.findall(instructions)
    record_terms = Counter(_terms(record))
    subject = ""
    sm = re.search(r"subject:\s*(.*)", record, re.I)
    if sm:
        subject = sm.group(1)
    subject_terms = set(_terms(subject))
    scores: dict[str, float] = {}
    for name, desc in categories:
        keys = set(_terms(name.replace("_", " ")))
        if model.level >= 2:
            keys |= set(_terms(desc))
        score = 0.0
        for term, n in record_terms.items():
            hit = term in keys or (model.level >= 3 and any(len(k) > 4 and term[:5] == k[:5] for k in keys))
            if hit:
                score += n * (2.0 if model.level >= 3 and term in subject_terms else 1.0)
        scores[name] = score
    if not scores:
        return json.dumps({"category": "other", "confidence": 0.0})
    best = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
    if scores[best] == 0:
        fallback = "other" if "other" in scores else best
        return json.dumps({"category": fallback, "confidence": 0.2})
    total = sum(scores.values()) or 1.0
    urgent = bool(re.search(r"\b(urgent|asap|immediately|outage|down|cannot|can't)\b|至急|緊急", record, re.I))
    payload: dict[str, object] = {"category": best, "confidence": round(scores[best] / total, 2)}
    if "urgency" in instructions.lower():
        payload["urgency"] = "high" if urgent else "normal"
    return json.dumps(payload, ensure_ascii=False)


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?。！？])\s*|\n+", text)
    return [p.strip(" -•*\t") for p in parts if len(p.strip(" -•*\t")) > 1]


def _wanted_count(instructions: str) -> int:
    m = re.search(r"(\d+)\s*(sentences?|bullet|points?|文|項目|つ)", instructions, re.I)
    return max(1, min(10, int(m.group(1)))) if m else 3


def _extract(model: SimModel, instructions: str, record: str) -> str:
    sentences = _sentences(record)
    if not sentences:
        return "No content to summarise."
    n = min(_wanted_count(instructions), len(sentences))
    if model.level == 1:
        chosen = sentences[:n]
    else:
        doc = Counter(t for s in sentences for t in set(_terms(s)))
        focus = set(_terms(instructions)) if model.level >= 3 else set()

        def score(idx_s: tuple[int, str]) -> float:
            idx, s = idx_s
            terms = set(_terms(s))
            if not terms:
                return 0.0
            centrality = sum(doc[t] for t in terms) / (len(terms) ** 0.5)
            return centrality + 2.0 * len(terms & focus) + (0.5 if idx == 0 else 0.0)

        ranked = sorted(enumerate(sentences), key=score, reverse=True)[:n]
        chosen = [s for _, s in sorted(ranked)]
    bullets = "bullet" in instructions.lower() or "箇条書き" in instructions
    if bullets:
        return "\n".join(f"- {s}" for s in chosen)
    joiner = "" if re.search(r"[\u3040-\u30ff\u3400-\u9fff]", record) else " "
    return joiner.join(chosen)


def _tag(text: str, name: str) -> str | None:
    m = re.search(rf"<{name}>(.*?)</{name}>", text, re.S)
    return m.group(1).strip() if m else None


def _judge(model: SimModel, joined: str) -> str:
    """Score an answer by its overlap with the reference (or the task): bag-of-terms F1."""
    answer_text = _tag(joined, "answer") or ""
    reference = _tag(joined, "reference") or _tag(joined, "task") or ""
    a, r = Counter(_terms(answer_text)), Counter(_terms(reference))
    common = sum((a & r).values())
    if not a or not r or common == 0:
        score = 0.0
    else:
        precision, recall = common / sum(a.values()), common / sum(r.values())
        score = 2 * precision * recall / (precision + recall)
    if model.level >= 2:  # larger judges check structured answers exactly
        try:
            if json.loads(answer_text) == json.loads(reference):
                score = 1.0
        except ValueError:
            pass
    verdict = "agrees with the reference" if score >= 0.5 else "misses the reference"
    return json.dumps({"score": round(score, 2), "reason": f"The answer {verdict}."})


def answer(model: SimModel, messages: list[dict[str, str]]) -> str:
    joined = "\n\n".join(str(m.get("content") or "") for m in messages)
    if "<answer>" in joined and re.search(r'"score"', joined):
        return _judge(model, joined)
    instructions, record = _split_sections(messages)
    if re.search(r"\bjson\b", instructions, re.I) and _CATEGORY_LINE.search(instructions):
        return _classify(model, instructions, record)
    if re.search(r"\bjson\b", instructions, re.I):
        return json.dumps({"summary": _extract(model, instructions, record)}, ensure_ascii=False)
    return _extract(model, instructions, record)
