"""The learned layer of injection screening: a linear model over word and character n-grams.

The rules in :mod:`llmops.injection` name what they catch and why, but hand-written patterns plateau on
attacks phrased in ways nobody wrote a rule for. This layer scores the same normalised text with a
logistic-regression model trained on labelled lines (``benchmarks/data/injection*.txt``, held-out sets
excluded) and flags it when the score passes a threshold chosen on cross-validated predictions.

* **Features**: lower-cased words and word pairs of the normalised text, character pairs of
  Japanese runs (no tokenizer needed), runs of markup symbols (``<|``, ``</``, ``###``, ``[[``). A feature counts
  as often as it occurs.
* **Windows**: a long record is scored in windows of up to three sentences and its score is the highest
  window's, so an attack buried in a long benign document is not diluted by it.
* **No pickle**: the model is JSON (vocabulary with idf weights, coefficients, intercept, thresholds),
  scored in pure Python; loading it never runs code and never imports scikit-learn, which is only needed
  to train (``llmops guard train-injection``).
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from pathlib import Path
from typing import Any

MODEL_PATH = Path(__file__).with_name("injection_model.json")
FORMAT = "llmops-injection-linear/3"  # /2: soft_weight; /3: rule_weight
# inverse regularisation and the fewest training lines a feature must occur in: the best cross-validated
# detection at 2 % false alarms on 7,539 lines among C 8-64 and min_df 1-8 (min_df 3 also keeps 18k features of
# 104k: rarer ones were noise — detection 0.800 with all of them — and the smaller tables score faster)
C = 32.0
MIN_DF = 3
TARGET_FALSE_ALARMS = 0.02
# what a soft rule's hit (:data:`llmops.injection.SOFT_RULES`) may add to the learned score; training keeps
# the one with the best cross-validated detection at the false-alarm budget
SOFT_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 3.0)
# what any other rule's hit adds is the threshold plus one of these margins: a hit is waived only where the
# layer scores the sentences around it below minus the margin — sure they are legitimate, not merely unsure.
# A margin, not an absolute weight: with absolute weights a retraining that raised the threshold (1.8 -> 2.2)
# silently waived a one-sentence extraction attack (tests/test_injection_model.py). None: the rule blocks
# outright (first: a tie goes to the safer choice); the smallest margin is 1.5 logits.
RULE_MARGINS: tuple[float | None, ...] = (None, 6.0, 4.0, 3.0, 2.5, 2.0, 1.5)

# markup tags whole (``<system>``, ``</user>``, ``<|im_start|>``, ``[INST]``), words, Japanese runs, runs of
# markup symbols, and sentence ends (a full stop before a space, a Japanese full stop, a line break) as
# tokens of their own, so that one pass splits and tokenizes
_TOKEN = re.compile(
    r"</?\|?[a-z_]{1,24}\|?>|\[/?[a-z_]{1,12}\]|[a-z0-9_]+|[\u3040-\u30ff\u3400-\u9fff\uff66-\uff9f]+|[<>\[\]{}|#`*=/]{2,}|[.!?](?=\s|\Z)|[。\n]"
)
_ENDS = frozenset({".", "!", "?", "。", "\n"})
# addresses are dropped: which mailbox or site a record names says nothing about its intent, and their
# parts ("org", "com", a user name) — or one token per address — made records that merely list contact
# details read as exfiltration (attacks name addresses far more often than the training negatives do;
# exfiltration itself is the rules' to catch: markdown images, links with placeholders, "send … to")
_ADDRESS = re.compile(
    r"(?:https?://|www\.)[^\s<>\"')\]]*[^\s<>\"')\].,;:!?]|(?<![\w.+\-])[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+"
)


def _drop_addresses(text: str) -> str:
    """``_ADDRESS.sub(" ", text)``, run only over the whitespace-free chunks around ``@``, ``http`` and
    ``www.``: no address holds whitespace or can be found without one of them, so the rest cannot change
    (and the regex over a whole 2 KB record cost 0.09 ms)."""
    chunks: set[tuple[int, int]] = set()
    for needle in ("@", "http", "www."):
        i = text.find(needle)
        while i != -1:
            start, end = i, i + len(needle)
            while start > 0 and not text[start - 1].isspace():
                start -= 1
            while end < len(text) and not text[end].isspace():
                end += 1
            chunks.add((start, end))  # chunks are maximal: two are the same or apart
            i = text.find(needle, end)
    if not chunks:
        return text
    out: list[str] = []
    last = 0
    for start, end in sorted(chunks):
        out += [text[last:start], _ADDRESS.sub(" ", text[start:end])]
        last = end
    out.append(text[last:])
    return "".join(out)


_WINDOW_SENTENCES = 3
# a window needs this many features to be scored: one or two words say nothing ("AI" alone would score as
# an attack, "support" as legitimate); short payloads are the rules' to catch
MIN_FEATURES = 8


def features(text: str) -> tuple[list[str], list[int]]:
    """The (already normalised) text's features in order, and where each sentence's features end.

    Features: the lower-cased tokens, pairs of neighbouring ASCII tokens (``"a b"``), and the character
    pairs of Japanese runs. The kinds cannot collide: pairs hold a space, Japanese runs no ASCII, and a
    character pair is a run of its own only when the run is that short. (Character triples cost 40 % more
    time and did not raise cross-validated detection.)"""
    feats: list[str] = []
    ends: list[int] = []
    prev = ""
    lowered = _drop_addresses(text.lower())
    for tok in _TOKEN.findall(lowered):
        if tok in _ENDS:
            if feats and (not ends or ends[-1] != len(feats)):
                ends.append(len(feats))
            prev = ""
            continue
        feats.append(tok)
        if tok.isascii():
            if prev:
                feats.append(prev + " " + tok)
            prev = tok
        else:
            prev = ""
            if len(tok) > 2:
                feats.extend([tok[i : i + 2] for i in range(len(tok) - 1)])
    if feats and (not ends or ends[-1] != len(feats)):
        ends.append(len(feats))
    return feats, ends


_SENTENCE_END = re.compile(r"[.!?](?=\s|\Z)|[。\n]")  # the sentence ends of _TOKEN


def sentences_around(text: str, start: int, end: int) -> str:
    """The sentences of ``text`` that hold ``text[start:end]`` (sentence ends as :func:`features` sees them):
    what a rule's hit is judged by, so that ordinary sentences around a payload do not dilute it."""
    first, last = 0, len(text)
    for m in _SENTENCE_END.finditer(text):
        if m.end() <= start:
            first = m.end()
        elif m.start() >= max(end - 1, start):
            last = m.end()
            break
    return text[first:last]


def text_features(text: str) -> list[str]:
    """The training analyzer: every feature of the text, as often as it occurs."""
    return features(text)[0]


@dataclass(frozen=True)
class InjectionModel:
    """A trained linear model: ``weight[f] = coef[f] * idf[f]`` and ``idf2[f] = idf[f] ** 2``."""

    weight: dict[str, float]
    idf2: dict[str, float]
    intercept: float
    threshold: float  # a score at or above it flags the text on its own
    meta: dict[str, Any]
    soft_weight: float = 0.0  # added to the score of a text a soft rule hit
    rule_weight: float | None = None  # added to the score of a text any other rule hit; None: the rule blocks
    # weight + idf2·j per feature: one lookup and one running sum give both (real and imaginary parts are
    # summed separately, in the same order: the same floats as two sums)
    packed: dict[str, complex] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "packed", {f: complex(w, self.idf2[f]) for f, w in self.weight.items()})

    def score(self, text: str) -> float:
        """The decision value (log-odds) of the text's most suspicious window of three sentences, or -inf
        when no window has :data:`MIN_FEATURES` features.

        A window's vector holds its features' counts times their idf, scaled by the square root of the
        summed squared idf of its features (the norm when no feature repeats). A running sum over the
        text's features (:attr:`packed`: weight and squared idf as one complex number) makes every window
        one subtraction: each feature is looked up once, however long the text, and the dictionary lookups
        and sums run in C."""
        feats, ends = features(text)
        if not feats:
            return -math.inf
        sums = [0j, *accumulate(map(self.packed.get, feats, repeat(0j)))]
        starts = [0, *ends[:-1]]
        k = min(len(ends), _WINDOW_SENTENCES)
        windows = [
            d.real / math.sqrt(d.imag)
            for first, last in zip(starts, ends[k - 1 :], strict=False)
            if last - first >= MIN_FEATURES and (d := sums[last] - sums[first]).imag > 1e-12
        ]
        return max(windows, default=-math.inf) + self.intercept  # -inf: no window long enough to judge

    def to_json(self) -> dict[str, Any]:
        idf = {f: math.sqrt(v) for f, v in self.idf2.items()}
        coef = {f: self.weight[f] / idf[f] for f in idf}
        return {
            "format": FORMAT,
            "intercept": self.intercept,
            "threshold": self.threshold,
            "soft_weight": self.soft_weight,
            "rule_weight": self.rule_weight,
            "meta": self.meta,
            "vocabulary": {f: [round(idf[f], 6), round(coef[f], 6)] for f in sorted(idf)},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InjectionModel:
        if data.get("format") != FORMAT:
            raise ValueError(f"not an injection model of format {FORMAT}: {data.get('format')!r}")
        vocab: dict[str, list[float]] = data["vocabulary"]
        numbers = [data["intercept"], data["threshold"], data["soft_weight"]]
        numbers += [v for pair in vocab.values() for v in pair]
        if data["rule_weight"] is not None:
            numbers.append(data["rule_weight"])
        # NaN or infinite numbers (which Python's json reads) would make comparisons false: refuse the model
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in numbers):
            raise ValueError("injection model holds a number that is not finite")
        if data["soft_weight"] < 0 or (data["rule_weight"] is not None and data["rule_weight"] < 0):
            raise ValueError("injection model's rule weights must not be negative")
        return cls(
            weight={f: idf * coef for f, (idf, coef) in vocab.items()},
            idf2={f: idf * idf for f, (idf, _coef) in vocab.items()},
            intercept=float(data["intercept"]),
            threshold=float(data["threshold"]),
            soft_weight=float(data["soft_weight"]),
            rule_weight=None if data["rule_weight"] is None else float(data["rule_weight"]),
            meta=dict(data.get("meta", {})),
        )


@functools.cache
def load(path: str | None = None) -> InjectionModel:
    """The shipped model (or the one at ``path``), read once per process."""
    return InjectionModel.from_json(json.loads(Path(path or MODEL_PATH).read_text(encoding="utf-8")))


# --- training (scikit-learn, imported only here) -------------------------------------------------------


def read_labelled(paths: Iterable[Path]) -> tuple[list[str], list[int]]:
    """Lines ``+ text`` (attack, 1) and ``- text`` (legitimate, 0); ``\\n`` and ``\\uXXXX`` are unescaped."""
    texts: list[str] = []
    labels: list[int] = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith(("+ ", "- ")):
                raw = re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), line[2:])
                texts.append(raw.replace("\\n", "\n"))
                labels.append(1 if line[0] == "+" else 0)
    return texts, labels


def fit(texts: Sequence[str], labels: Sequence[int] | Any, *, c: float = C, min_df: int = MIN_DF) -> InjectionModel:
    """Fit the model on already normalised texts (thresholds are set by :func:`train`)."""
    import numpy as np
    from scipy import sparse
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
    from sklearn.linear_model import LogisticRegression

    vectorizer = CountVectorizer(analyzer=text_features, min_df=min_df)
    counts = vectorizer.fit_transform(texts)
    idf = TfidfTransformer(use_idf=True, smooth_idf=True).fit(counts).idf_
    # the same vector as score(): features summed over sentences, scaled by sqrt(sum of squared weights)
    x = counts.multiply(idf).tocsr()
    norm = np.sqrt(np.asarray(counts @ (idf**2)).ravel())
    x = sparse.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ x
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, solver="liblinear")
    clf.fit(x, list(labels))
    names = vectorizer.get_feature_names_out()
    coef = clf.coef_[0]
    return InjectionModel(
        weight={str(f): float(coef[i] * idf[i]) for i, f in enumerate(names)},
        idf2={str(f): float(idf[i] ** 2) for i, f in enumerate(names)},
        intercept=float(clf.intercept_[0]),
        threshold=0.0,
        meta={},
    )


def train(
    paths: Sequence[Path],
    *,
    background: Sequence[Path] = (),
    folds: int = 5,
    false_alarms: float = TARGET_FALSE_ALARMS,
    seed: int = 0,
) -> InjectionModel:
    """Train on labelled files and set the threshold from ``folds``-fold cross-validated scores.

    A rule's hit in the text as written is evidence: ``rule_weight`` (a soft rule's,
    :data:`llmops.injection.SOFT_RULES`: ``soft_weight``) is added to the score of the sentences around the
    hit (as :func:`llmops.injection.screen` weighs it); a hit in a decoded or leetspeak view, or in sentences
    too short to score, blocks outright, and so does every hit when ``rule_weight`` is None. ``rule_weight`` is
    the threshold plus a margin from :data:`RULE_MARGINS` (a hit is waived only where the layer scores its
    sentences below minus the margin, whatever the threshold); the margin and :data:`SOFT_WEIGHTS`' weight are
    chosen by cross-validated detection at the false-alarm budget (a tie keeps the stricter margin); the
    detection with every hit blocking is kept in ``meta``.
    The threshold is the lowest at which the rules and the layer together flag at most ``false_alarms`` of the
    legitimate lines, cross-validated; where the rules alone flag more, the layer may add at most a quarter of the
    budget. The rates at that threshold are kept in ``meta``.

    ``background`` files hold ordinary legitimate text (``- `` lines): it trains the weights — without it
    the layer only ever saw legitimate text that reads like an attack, and words such as "this" and "all"
    counted as attack words, flagging plain contract clauses — but it is left out of the false-alarm
    budget, which easy text would otherwise loosen."""
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    from llmops import injection

    raw, labels = read_labelled(paths)
    if len(set(labels)) < 2 or min(labels.count(0), labels.count(1)) < folds:
        raise ValueError(f"need at least {folds} attack and {folds} legitimate lines to train; got {len(labels)} lines")
    extra, extra_labels = read_labelled(background)
    if any(extra_labels):
        raise ValueError("background files hold legitimate text only ('- ' lines)")
    norms = [injection.normalise(t) for t in [*raw, *extra]]
    texts = [injection.prose(n) for n in norms]  # what screen() scores
    y = np.array([*labels, *extra_labels])
    labelled = np.arange(len(y)) < len(raw)
    found = [injection.rule_hits(t) for t in [*raw, *extra]]
    # what screen() weighs a hit in the text as written by: the sentences around it
    around = [
        [sentences_around(n, hit.start, hit.end) if hit is not None and hit.view == "text" else None for hit in pair]
        for n, pair in zip(norms, found, strict=True)
    ]
    scores = np.zeros(len(y))
    local = np.full((len(y), 2), -np.inf)  # the hard and the soft hit's sentences, out of fold
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(texts, y):
        fold_model = fit([texts[i] for i in tr], y[tr])
        for i in te:
            scores[i] = fold_model.score(texts[i])
            for j, part in enumerate(around[i]):
                if part is not None:
                    local[i, j] = fold_model.score(part)
    hard = np.array([rule is not None for rule, _ in found])
    soft = np.array([hit is not None for _, hit in found])
    hidden = np.array([any(h is not None and h.view != "text" for h in pair) for pair in found])
    # blocked whatever the layer says: a hit in a decoded or leetspeak view, or in sentences too short to score
    short = hidden | (hard & ~np.isfinite(local[:, 0])) | (soft & ~np.isfinite(local[:, 1]))
    legit = (y == 0) & labelled
    attacks = (y == 1) & labelled
    best: tuple[float, float | None, float, float, Any] | None = None  # detection, weights, threshold, flagged
    outright: tuple[float, float] | None = None  # detection and false alarms when every hit blocks
    for margin in RULE_MARGINS:
        # a rule's hit blocks whatever the threshold turns out to be: its sentences score at least -margin
        # (rule_weight = threshold + margin), or every hit when the rules block outright
        always = short | (hard if margin is None else hard & (local[:, 0] >= -margin))
        budget = max(false_alarms * legit.sum() - always[legit].sum(), false_alarms / 4 * legit.sum())
        for soft_w in SOFT_WEIGHTS:
            # a line's decision value: the whole text's score, or the soft hit's sentences' score plus its weight
            value = np.maximum(scores, np.where(soft, local[:, 1] + soft_w, -np.inf))
            # the false alarms among legitimate lines not blocked outright, highest value first
            candidates = np.sort(value[legit & ~always & np.isfinite(value)])[::-1]  # -inf: too short
            if not len(candidates):
                raise ValueError("no legitimate line is long enough to score (8 features): add longer ones")
            k = int(budget)
            th = float(np.nextafter(candidates[k], np.inf)) if k < len(candidates) else float(candidates[-1])
            flagged_w = always | (value >= th)
            detection = float(flagged_w[attacks].mean())
            if margin is None and (outright is None or detection > outright[0]):
                outright = (detection, float(flagged_w[legit].mean()))
            if best is None or detection > best[0] + 1e-9 or (abs(detection - best[0]) <= 1e-9 and margin == best[1]):
                best = (detection, margin, soft_w, th, flagged_w)  # a tie keeps the safer margin, larger soft
    assert best is not None and outright is not None
    _, rule_margin, weight, threshold, flagged = best
    rule_weight = None if rule_margin is None else threshold + rule_margin
    if rule_weight is not None and rule_weight < 0:  # load() refuses it: every record would be a guard_error
        raise ValueError(f"training chose a negative rule weight ({rule_weight:.3f}): add legitimate lines")
    background_flagged = float(flagged[~labelled].mean()) if len(extra) else 0.0
    model = fit(texts, y)
    return InjectionModel(
        weight=model.weight,
        idf2=model.idf2,
        intercept=model.intercept,
        threshold=threshold,
        soft_weight=weight,
        rule_weight=rule_weight,
        meta={
            "files": [p.name for p in paths],
            "background": [p.name for p in background],
            "lines": int(labelled.sum()),
            "background_lines": len(extra),
            "attacks": int(y.sum()),
            "c": C,
            "min_df": MIN_DF,
            "folds": folds,
            "rule_margin": rule_margin,
            "cv_detection": round(float(flagged[attacks].mean()), 4),
            "cv_false_alarms": round(float(flagged[legit].mean()), 4),
            "cv_background_false_alarms": round(background_flagged, 4),
            "cv_rules_detection": round(float(hard[attacks].mean()), 4),
            "cv_rules_false_alarms": round(float(hard[legit].mean()), 4),
            "cv_soft_detection": round(float((soft & ~hard)[attacks].mean()), 4),
            "cv_soft_false_alarms": round(float((soft & ~hard)[legit].mean()), 4),
            # rule hits the layer's score waived (none when rule_weight is None): attacks let through, and
            # legitimate lines spared
            "cv_rule_hits_waived_attacks": int((hard & ~flagged)[attacks].sum()),
            "cv_rule_hits_waived_legitimate": int((hard & ~flagged)[legit].sum()),
            "cv_rule_hits_attacks": int(hard[attacks].sum()),
            "cv_rule_hits_legitimate": int(hard[legit].sum()),
            # the same training run with every rule hit blocking outright (RULE_MARGINS' None)
            "cv_detection_rules_block": round(outright[0], 4),
            "cv_false_alarms_rules_block": round(outright[1], 4),
        },
    )
