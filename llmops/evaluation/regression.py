"""Regression detection: each version × model against its own previous night, and each version newer
than production (a promotion candidate) against the production version on the same model and night.
A metric drop beyond the margin, or any pass-rate drop, is a regression."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from packaging.version import Version

from llmops.evaluation.runner import EvalRun


@dataclass(frozen=True)
class Regression:
    prompt: str
    version: str
    model: str
    baseline: str  # "production x.y.z" or "previous night YYYY-MM-DD"
    metric: str
    before: float
    after: float
    worst_cases: tuple[str, ...]

    def line(self) -> str:
        return (
            f"{self.prompt}@{self.version} on {self.model}: {self.metric} {self.before:.3f} → {self.after:.3f} "
            f"(vs {self.baseline})"
        )


def _compare(
    run: EvalRun, base_metrics: dict[str, float], base_pass: float, label: str, margin: float
) -> list[Regression]:
    worst = tuple(f"{c.case_id} ({c.overall:.2f})" for c in run.worst())
    found = []
    now = {**run.metric_means, "overall": run.overall}
    for metric, before in base_metrics.items():
        after = now.get(metric)
        if after is not None and before - after > margin:
            found.append(Regression(run.prompt, run.version, run.model, label, metric, before, after, worst))
    if run.pass_rate < base_pass - 1e-9:
        found.append(
            Regression(run.prompt, run.version, run.model, label, "pass_rate", base_pass, run.pass_rate, worst)
        )
    return found


def detect_regressions(
    runs: list[EvalRun],
    *,
    production_version: str | None,
    previous: dict[tuple[str, str], dict[str, Any]],
    previous_night: str | None,
    margin: float,
) -> list[Regression]:
    out: list[Regression] = []
    prod = {r.model: r for r in runs if r.version == production_version}
    for r in runs:
        base = prod.get(r.model)
        # candidates newer than production must not be worse than it; older versions are history
        if base is not None and production_version and Version(r.version) > Version(production_version):
            out += _compare(
                r,
                {**base.metric_means, "overall": base.overall},
                base.pass_rate,
                f"production {production_version}",
                margin,
            )
        prev = previous.get((r.version, r.model))
        if prev is not None:
            out += _compare(
                r,
                {**prev["metrics"], "overall": prev["overall"]},
                prev["pass_rate"],
                f"previous night {previous_night}",
                margin,
            )
    return out
