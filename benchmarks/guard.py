"""Guard benchmark: PII recall/precision per entity, injection detection and false-positive rates, and
guard time per 2 KB record (p50/p95, with and without the Japanese name pipeline).

    .venv/bin/python benchmarks/guard.py              # full run (regenerates nothing; reads benchmarks/data)
    .venv/bin/python benchmarks/guard.py --check      # exit 1 when an accuracy target is missed
    .venv/bin/python benchmarks/guard.py --no-ginza   # skip the name-pipeline timing (no ja-ginza installed)

Matching: a detected span counts for a labelled one when the types agree and the spans overlap; the
share of those with exactly the labelled boundaries is printed too. Targets (issue #3): structured PII
recall >= 0.99 and precision >= 0.95; injection detection >= 0.90 with <= 0.02 false positives on hard
negatives; guard p95 <= 2 ms per 2 KB record without the name pipeline. Times are of this machine at
this moment; the accuracy figures are exact and repeatable.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llmops import injection, injection_model
from llmops.guard import guard_variables, screen_injection
from llmops.pii import STRUCTURED, detect, warm_up
from llmops.policy import GuardPolicy

DATA = Path(__file__).parent / "data"
# the held-out sets, oldest first: the last is the freshest (never screened before its first run)
HELD_OUT = (4, 5, 6, 7, 11, 15, 16, 17, 18)
TARGETS = {"recall": 0.99, "precision": 0.95, "detection": 0.90, "false_positives": 0.02, "p95_ms": 2.0}


def load_pii() -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / "pii_corpus.jsonl").read_text(encoding="utf-8").splitlines()]


def load_injection(name: str = "injection.txt") -> tuple[list[str], list[str]]:
    """The attacks and the legitimate lines of one labelled set (read as the training reads them)."""
    texts, labels = injection_model.read_labelled([DATA / name])
    return [t for t, y in zip(texts, labels, strict=True) if y], [
        t for t, y in zip(texts, labels, strict=True) if not y
    ]


def pii_scores(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    tp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    exact: Counter[str] = Counter()
    misses: list[str] = []
    for rec in records:
        found = detect(rec["text"])
        used: set[int] = set()
        for gold in rec["spans"]:
            hit = next(
                (
                    i
                    for i, f in enumerate(found)
                    if i not in used and f.pii_type == gold["type"] and f.start < gold["end"] and gold["start"] < f.end
                ),
                None,
            )
            if hit is None:
                fn[gold["type"]] += 1
                misses.append(f"  miss {gold['type']}: {rec['text'][gold['start'] : gold['end']]!r} in {rec['text']!r}")
            else:
                used.add(hit)
                tp[gold["type"]] += 1
                exact[gold["type"]] += (found[hit].start, found[hit].end) == (gold["start"], gold["end"])
        for i, f in enumerate(found):
            if i not in used:
                fp[f.pii_type] += 1
                misses.append(f"  false {f.pii_type}: {rec['text'][f.start : f.end]!r} in {rec['text']!r}")
    table: dict[str, dict[str, float]] = {}
    for entity in sorted(set(tp) | set(fn) | set(fp)):
        t, n, p = tp[entity], fn[entity], fp[entity]
        table[entity] = {
            "labelled": t + n,
            "recall": t / (t + n) if t + n else 1.0,
            "precision": t / (t + p) if t + p else 1.0,
            "exact": exact[entity] / t if t else 0.0,
            "false": p,
        }
    structured = [e for e in table if e in STRUCTURED]
    t = sum(tp[e] for e in structured)
    table["structured (all)"] = {
        "labelled": t + sum(fn[e] for e in structured),
        "recall": t / (t + sum(fn[e] for e in structured)),
        "precision": t / (t + sum(fp[e] for e in structured)),
        "exact": sum(exact[e] for e in structured) / t,
        "false": sum(fp[e] for e in structured),
    }
    table["_misses"] = misses  # type: ignore[assignment]
    return table


def two_kb_records(records: list[dict[str, Any]], lang: str, n: int, pii_per_record: int | None = None) -> list[str]:
    """2 KB records in one language. Dense (``pii_per_record=None``): every sentence carries PII, about 25
    values per record. Typical: ``pii_per_record`` PII sentences among ordinary ones (a support ticket)."""
    with_pii = [r["text"] for r in records if r["lang"] == lang and r["spans"]]
    plain = [r["text"] for r in records if r["lang"] == lang and not r["spans"]]
    sep = " " if lang == "en" else ""
    rng = random.Random(f"{lang}-{pii_per_record}")  # seeded: the same records every run, all distinct
    out: list[str] = []
    while len(out) < n:
        parts: list[str] = []
        if pii_per_record is not None:
            parts = rng.sample(with_pii, pii_per_record)
        while len(sep.join(parts).encode()) < 2048:
            pool = with_pii if pii_per_record is None else plain
            parts.insert(len(parts) // 2, rng.choice(pool))
        record = sep.join(parts).encode()[:2048].decode("utf-8", "ignore")
        if record not in out:  # a repeated record would be timed from the screening cache
            out.append(record)
    return out


def timing(texts: list[str], policy: GuardPolicy, repeat: int = 3) -> tuple[float, float]:
    """CPU time (process_time) per record in ms: p50, p95 over the records of each record's best of
    ``repeat`` passes over all of them. CPU time, not wall time, and the best of passes a second or more
    apart, so that other tenants of a shared machine (whose bursts slow the CPU a process gets, not only its
    share) do not count against the guard; each run screens the record afresh (the screening cache is
    cleared before it)."""
    best = [float("inf")] * len(texts)
    for _ in range(repeat):
        for i, t in enumerate(texts):
            injection.screen.cache_clear()  # a text screened before must be screened again
            start = time.process_time()
            guard_variables({"body": t}, policy)
            best[i] = min(best[i], time.process_time() - start)
    times = sorted(b * 1e3 for b in best)
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def injection_rates(name: str, label: str, verbose: bool, *, learned: bool = True) -> tuple[int, int, int, int]:
    """Print the detection and false-positive rates of the screening on one injection set; return the counts:
    attacks caught, attacks, false alarms, legitimate lines."""
    pos, neg = load_injection(name)
    caught = [t for t in pos if screen_injection(t, learned=learned)]
    false = [t for t in neg if screen_injection(t, learned=learned)]
    print(f"{label}: {len(pos)} attacks, {len(neg)} hard negatives")
    print(f"  detection rate      {len(caught) / len(pos):.3f}  ({len(caught)}/{len(pos)})")
    print(f"  false-positive rate {len(false) / len(neg):.3f}  ({len(false)}/{len(neg)})")
    if verbose:
        for t in pos:
            if t not in caught:
                print(f"  missed: {t!r}")
        for t in false:
            print(f"  false alarm: {t!r} ({screen_injection(t, learned=learned)})")
    return len(caught), len(pos), len(false), len(neg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when an accuracy target is missed")
    ap.add_argument("--no-ginza", action="store_true", help="skip timing the Japanese name pipeline")
    ap.add_argument("--records", type=int, default=400, help="2 KB records per language for timing")
    ap.add_argument("--verbose", action="store_true", help="list every miss and false alarm")
    args = ap.parse_args()

    records = load_pii()
    table = pii_scores(records)
    misses = table.pop("_misses")
    print(f"PII corpus: {len(records)} records, {sum(len(r['spans']) for r in records)} labelled spans")
    print(f"{'entity':18} {'labelled':>8} {'recall':>7} {'precision':>9} {'exact':>6} {'false':>5}")
    for entity, row in table.items():
        print(
            f"{entity:18} {int(row['labelled']):>8} {row['recall']:>7.3f} {row['precision']:>9.3f} "
            f"{row['exact']:>6.2f} {int(row['false']):>5}"
        )
    if args.verbose:
        print("\n".join(misses))  # type: ignore[arg-type]

    print()
    caught, attacks, false, legit = injection_rates("injection.txt", "injection", args.verbose)
    detection, fp_rate = caught / attacks, false / legit
    for name, label in (
        ("injection_round2.txt", "round 2 (tuning set)"),
        ("injection_round3.txt", "round 3 (tuning set)"),
        ("injection_round4.txt", "round 4 (tuning set)"),
        ("injection_round5.txt", "round 5 (tuning set)"),
        ("injection_round6.txt", "round 6 (tuning set)"),
    ):
        injection_rates(name, label, args.verbose)
    model = injection_model.load()
    print(
        f"\nlearned layer: {model.meta['lines']} training lines from {len(model.meta['files'])} files, threshold "
        f"{model.threshold:.3f}, rule weight "
        f"{'blocks' if model.rule_weight is None else f'{model.rule_weight:.3f}'} (margin "
        f"{model.meta.get('rule_margin')}), soft-rule weight {model.soft_weight:.1f}; "
        f"cross-validated blocking rules "
        f"{model.meta['cv_rules_detection']:.3f} / {model.meta['cv_rules_false_alarms']:.3f}, soft rule "
        f"{model.meta['cv_soft_detection']:.3f} / {model.meta['cv_soft_false_alarms']:.3f}, rules + layer "
        f"{model.meta['cv_detection']:.3f} / {model.meta['cv_false_alarms']:.3f} (detection / false alarms)"
    )
    counts = []
    for n in HELD_OUT:
        name, label = f"injection_heldout{n}.txt", f"held-out set {n}"
        injection_rates(name, f"{label}, rules only", args.verbose, learned=False)
        counts.append(injection_rates(name, f"{label}, rules + learned layer", args.verbose))
    caught, attacks, false, legit = (sum(c) for c in zip(*counts, strict=True))
    held = (counts[-1][0] / counts[-1][1], counts[-1][2] / counts[-1][3])  # the freshest set
    pooled = (caught / attacks, false / legit)
    print(
        f"held-out sets {HELD_OUT[0]}-{HELD_OUT[-1]} pooled ({attacks} + {legit}): "
        f"detection {pooled[0]:.3f}, false positives {pooled[1]:.3f}"
    )

    plain = GuardPolicy()
    warm_up()
    guard_variables({"body": "warm-up bob@example.com 090-1234-5678"}, plain)  # anonymizer, lazy imports
    print(f"\nguard CPU time per 2 KB record ({args.records} records per row, best of 3 passes, after warm-up):")
    worst_typical = 0.0
    for label, density in (("typical (3 PII values)", 3), ("dense (~25 PII values)", None)):
        for lang, name in (("en", "English"), ("ja", "Japanese")):
            texts = two_kb_records(records, lang, args.records, density)
            p50, p95 = timing(texts, plain)
            if density is not None:
                worst_typical = max(worst_typical, p95)
            print(f"  {name:9} {label:24} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
    rules_only = GuardPolicy(injection_model=False)
    for lang, name in (("en", "English"), ("ja", "Japanese")):
        texts = two_kb_records(records, lang, args.records, 3)
        base50, base95 = timing(texts, rules_only)
        with50, with95 = timing(texts, plain)
        print(
            f"  {name:9} typical, learned layer off  p50 {base50:6.2f} ms   p95 {base95:6.2f} ms"
            f"   (layer on / off, same run: p50 x{with50 / base50:.2f}, p95 x{with95 / base95:.2f})"
        )
    if not args.no_ginza:
        named = GuardPolicy(ja_name_pipeline=True)
        start = time.perf_counter()
        warm_up(ja_names=True)
        load_s = time.perf_counter() - start
        texts = two_kb_records(records, "ja", max(20, args.records // 4), 3)
        p50_g, p95_g = timing(texts, named)
        print(
            f"  Japanese  typical + ja-ginza names    p50 {p50_g:6.2f} ms   p95 {p95_g:6.2f} ms"
            f"   (load {load_s:.1f} s once)"
        )

    s = table["structured (all)"]
    results = {
        "structured recall": (s["recall"], s["recall"] >= TARGETS["recall"]),
        "structured precision": (s["precision"], s["precision"] >= TARGETS["precision"]),
        "injection detection": (detection, detection >= TARGETS["detection"]),
        "injection false positives": (fp_rate, fp_rate <= TARGETS["false_positives"]),
        f"held-out {HELD_OUT[-1]} detection": (held[0], held[0] >= TARGETS["detection"]),
        f"held-out {HELD_OUT[-1]} false positives": (held[1], held[1] <= TARGETS["false_positives"]),
        "held-out pooled detection": (pooled[0], pooled[0] >= TARGETS["detection"]),
        "held-out pooled false positives": (pooled[1], pooled[1] <= TARGETS["false_positives"]),
        "guard p95 ms, typical (no names)": (worst_typical, worst_typical <= TARGETS["p95_ms"]),
    }
    print("\ntargets:")
    for name, (value, ok) in results.items():
        print(f"  {name:32} {value:7.3f}  {'met' if ok else 'MISSED'}")
    accuracy_ok = all(ok for name, (_, ok) in results.items() if "ms" not in name)
    return 0 if accuracy_ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
