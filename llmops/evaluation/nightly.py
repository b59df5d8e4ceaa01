"""The nightly regression: every prompt × version × candidate model on its golden set, tracked in
MLflow, stored in the quality table, compared, and alerted on."""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select

from llmops.errors import RequestError
from llmops.evaluation.golden import golden_hash, load_golden
from llmops.evaluation.regression import Regression, detect_regressions
from llmops.evaluation.runner import JUDGE_PROMPT, EvalRun, evaluate
from llmops.gateway import Gateway
from llmops.ledger import EvalResult

log = logging.getLogger("llmops.evaluation")
SendMail = Callable[[list[str], str, str, list[str]], None]


@dataclass
class PromptNight:
    prompt: str
    night: str
    runs: list[EvalRun] = field(default_factory=list)
    regressions: list[Regression] = field(default_factory=list)
    mlflow_runs: dict[str, str] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "night": self.night,
            "runs": [
                {
                    "version": r.version,
                    "model": r.model,
                    "overall": round(r.overall, 4),
                    "pass_rate": round(r.pass_rate, 4),
                    "new_calls": r.new_calls,
                    "cost_usd": r.cost_nanousd / 1e9,
                }
                for r in self.runs
            ],
            "regressions": [r.line() for r in self.regressions],
            "regression_details": [r.__dict__ for r in self.regressions],
            "mlflow_runs": self.mlflow_runs,
        }


def tonight(tz: str) -> str:
    return datetime.now(UTC).astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d")


def evaluate_prompt(
    gw: Gateway,
    prompt: str,
    *,
    night: str,
    versions: list[str] | None = None,
    models: list[str] | None = None,
    track: bool = True,
    margin: float = 0.05,
) -> PromptNight:
    s = gw.settings
    if s.eval_department not in gw.policy.departments or s.eval_user not in gw.policy.people:
        raise RequestError(
            f"the evaluation identity {s.eval_user} / {s.eval_department} is not in the policy",
            "add them to llmops.yaml or set LLMOPS_EVAL_USER and LLMOPS_EVAL_DEPARTMENT",
        )
    meta = gw.library.meta(prompt)
    golden_path = gw.library.root / prompt / "eval" / "golden.jsonl"
    cases = load_golden(golden_path)
    chosen = [gw.library.resolve(f"{prompt}@{v}") for v in versions] if versions else gw.library.versions(prompt)
    candidates = models or meta.candidate_models or gw.policy.routing.default_models
    result = PromptNight(prompt, night)
    for pv in chosen:
        for model in candidates:
            run = evaluate(
                gw,
                pv,
                model,
                cases,
                user=s.eval_user,
                department=s.eval_department,
                judge=s.eval_judge and JUDGE_PROMPT in gw.library.names(),
            )
            result.runs.append(run)
            log.info(
                "eval %s@%s on %s: overall %.3f pass %.0f%% (%d new calls)",
                prompt,
                pv.version,
                model,
                run.overall,
                run.pass_rate * 100,
                run.new_calls,
            )
    previous_night, previous = _previous(gw, prompt, night)
    production = str(gw.library.resolve(f"{prompt}@production").version) if "production" in meta.aliases else None
    result.regressions = detect_regressions(
        result.runs, production_version=production, previous=previous, previous_night=previous_night, margin=margin
    )
    ids: dict[tuple[str, str], str] = {}
    if track:
        from llmops.evaluation.tracking import log_night

        ids = log_night(s.mlflow_uri, gw.library, night, prompt, result.runs, golden_hash(golden_path))
        result.mlflow_runs = {f"{v}|{m}": rid for (v, m), rid in ids.items()}
    _store(gw, night, result.runs, ids)
    return result


def _previous(gw: Gateway, prompt: str, night: str) -> tuple[str | None, dict[tuple[str, str], dict[str, Any]]]:
    with gw.ledger.transaction() as s:
        last = s.scalar(
            select(EvalResult.night)
            .where(EvalResult.prompt_name == prompt, EvalResult.night < night)
            .order_by(EvalResult.night.desc())
            .limit(1)
        )
        if last is None:
            return None, {}
        rows = s.scalars(select(EvalResult).where(EvalResult.prompt_name == prompt, EvalResult.night == last))
        return last, {
            (r.prompt_version, r.model): {
                "metrics": json.loads(r.metrics),
                "overall": r.overall,
                "pass_rate": r.pass_rate,
            }
            for r in rows
        }


def _store(gw: Gateway, night: str, runs: list[EvalRun], ids: dict[tuple[str, str], str]) -> None:
    with gw.ledger.transaction() as s:
        for r in runs:
            row = s.scalar(
                select(EvalResult).where(
                    EvalResult.night == night,
                    EvalResult.prompt_name == r.prompt,
                    EvalResult.prompt_version == r.version,
                    EvalResult.model == r.model,
                )
            )
            fields = dict(
                cases=len(r.cases),
                overall=r.overall,
                pass_rate=r.pass_rate,
                metrics=json.dumps(r.metric_means, sort_keys=True),
                cost_nanousd=r.cost_nanousd,
                mlflow_run_id=ids.get((r.version, r.model)),
            )
            if row is None:
                s.add(EvalResult(night=night, prompt_name=r.prompt, prompt_version=r.version, model=r.model, **fields))
            else:
                for k, v in fields.items():
                    setattr(row, k, v)


def alert_regressions(gw: Gateway, regressions: list[Regression], night: str, send: SendMail) -> list[str]:
    """One mail to the prompt owners and the admins listing every regression, with the worst cases."""
    found = [(None, r) for r in regressions]
    if not found:
        return []
    owners = [gw.library.meta(r.prompt).owner for _, r in found]
    to = list(dict.fromkeys([*(o for o in owners if "@" in o), *gw.policy.admins]))
    rows = "".join(
        f"<tr><td>{html.escape(r.prompt)}</td><td>{html.escape(r.version)}</td><td>{html.escape(r.model)}</td>"
        f"<td>{html.escape(r.metric)}</td><td>{r.before:.3f} → {r.after:.3f}</td><td>{html.escape(r.baseline)}</td>"
        f"<td>{html.escape(', '.join(r.worst_cases))}</td></tr>"
        for _, r in found
    )
    body = (
        f"<h1>Prompt quality regressions — {html.escape(night)}</h1>"
        "<table border='1' cellpadding='4' cellspacing='0'><tr><th>prompt</th><th>version</th><th>model</th>"
        f"<th>metric</th><th>before → after</th><th>baseline</th><th>worst cases</th></tr>{rows}</table>"
        "<p>Compare the runs in MLflow (experiment llmops/&lt;prompt&gt;, select runs → Compare).</p>"
    )
    subject = f"[llmops] {len(found)} prompt regression(s) in the nightly evaluation {night}"
    send(to, subject, body, [])
    return to


def measured_quality(gw: Gateway) -> Callable[[str, str], float | None]:
    """Router quality source: the latest night's overall score of the prompt's production version."""
    import time

    cache: dict[tuple[str, str], tuple[float, float | None]] = {}

    def source(prompt: str, model: str) -> float | None:
        now = time.monotonic()
        hit = cache.get((prompt, model))
        if hit is not None and now - hit[0] < 300:
            return hit[1]
        try:
            version = str(gw.library.resolve(prompt).version)
        except Exception:
            return None
        with gw.ledger.transaction() as s:
            value = s.scalar(
                select(EvalResult.overall)
                .where(
                    EvalResult.prompt_name == prompt, EvalResult.prompt_version == version, EvalResult.model == model
                )
                .order_by(EvalResult.night.desc())
                .limit(1)
            )
        cache[(prompt, model)] = (now, value)
        return value

    return source
