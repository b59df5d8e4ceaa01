"""The guard benchmark's accuracy part as a regression test (the timing part is not asserted: times are
measured by `benchmarks/guard.py`, not in unit tests)."""

from __future__ import annotations

import sys

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import guard as bench

from llmops.guard import screen_injection


def test_structured_pii_recall_and_precision_on_the_labelled_corpus():
    table = bench.pii_scores(bench.load_pii())
    table.pop("_misses")
    s = table["structured (all)"]
    assert s["labelled"] >= 200
    assert s["recall"] >= 0.99 and s["precision"] >= 0.95, s
    for entity in ("EMAIL", "PHONE", "CREDIT_CARD", "MY_NUMBER", "IP_ADDRESS", "API_KEY"):
        assert table[entity]["recall"] >= 0.95, (entity, table[entity])


def test_injection_rates_on_the_tuning_sets():
    for name in (
        "injection.txt",
        "injection_round2.txt",
        "injection_round3.txt",
        "injection_round4.txt",
        "injection_round5.txt",
        "injection_round6.txt",
    ):
        pos, neg = bench.load_injection(name)
        assert len(pos) >= 20 and len(neg) >= 20
        detection = sum(bool(screen_injection(t)) for t in pos) / len(pos)
        false_positives = sum(bool(screen_injection(t)) for t in neg) / len(neg)
        assert detection >= 0.90 and false_positives <= 0.02, (name, detection, false_positives)


def test_learned_layer_on_the_held_out_sets():
    """Held-out sets are never trained or tuned on; this guards against regressions only: detection stays at
    0.85 or more on each set, false positives at 5 % or less on each and 2 % or less pooled."""
    false_total = legit_total = 0
    for name in (
        "injection_heldout4.txt",
        "injection_heldout5.txt",
        "injection_heldout6.txt",
        "injection_heldout7.txt",
        "injection_heldout11.txt",
        "injection_heldout15.txt",
        "injection_heldout16.txt",
        "injection_heldout17.txt",
        "injection_heldout18.txt",
    ):
        pos, neg = bench.load_injection(name)
        detection = sum(bool(screen_injection(t)) for t in pos) / len(pos)
        false = sum(bool(screen_injection(t)) for t in neg)
        assert detection >= 0.85 and false <= 0.05 * len(neg), (name, detection, false)
        false_total, legit_total = false_total + false, legit_total + len(neg)
    assert false_total <= 0.02 * legit_total, (false_total, legit_total)
