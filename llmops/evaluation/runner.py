"""Run a golden set for one prompt version on one model through the production request path.

Every case is a normal :class:`~llmops.types.Request` (access, guard, budget, ledger included) billed
to the platform's evaluation identity, under a deterministic record key of (case, model, template,
parameters, inputs) and a fixed run id. The ledger's exactly-once replay is therefore the evaluation
cache: an unchanged combination is never called — or paid for — twice.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from llmops.evaluation.golden import GoldenCase
from llmops.evaluation.metrics import CaseView, overall, score_case
from llmops.gateway import Gateway
from llmops.prompts import PromptVersion, canonical_json
from llmops.types import Request, Result, Status

EVAL_RUN_ID = "llmops-evaluation"
JUDGE_PROMPT = "quality_judge"


@dataclass
class CaseResult:
    case_id: str
    status: str
    output: str
    scores: dict[str, float]
    overall: float
    passed: bool
    cost_nanousd: int
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    cached: bool
    reason: str = ""


@dataclass
class EvalRun:
    prompt: str
    version: str
    model: str
    threshold: float
    cases: list[CaseResult] = field(default_factory=list)

    @property
    def metric_means(self) -> dict[str, float]:
        names = sorted({k for c in self.cases for k in c.scores})
        out = {}
        for n in names:
            vals = [c.scores[n] for c in self.cases if n in c.scores]
            out[n] = sum(vals) / len(vals)
        return out

    @property
    def overall(self) -> float:
        return sum(c.overall for c in self.cases) / len(self.cases) if self.cases else 0.0

    @property
    def pass_rate(self) -> float:
        return sum(c.passed for c in self.cases) / len(self.cases) if self.cases else 0.0

    @property
    def cost_nanousd(self) -> int:
        return sum(c.cost_nanousd for c in self.cases)

    @property
    def new_calls(self) -> int:
        return sum(1 for c in self.cases if not c.cached and c.status in ("ok", "failed"))

    @property
    def tokens(self) -> int:
        return sum(c.prompt_tokens + c.completion_tokens for c in self.cases)

    @property
    def p95_latency_ms(self) -> float:
        lat = sorted(c.latency_ms for c in self.cases if c.status == "ok")
        return float(lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]) if lat else 0.0

    def worst(self, n: int = 3) -> list[CaseResult]:
        return sorted(self.cases, key=lambda c: (c.overall, c.case_id))[:n]


def case_key(case: GoldenCase, pv: PromptVersion, model: str) -> str:
    material = canonical_json(
        {
            "case": case.id,
            "model": model,
            "template": pv.source_hash,
            "params": pv.meta.parameters,
            "inputs": case.inputs,
        }
    )
    return f"{case.id}:{hashlib.sha256(material.encode()).hexdigest()[:20]}"


def _judge(
    gw: Gateway, pv: PromptVersion, case: GoldenCase, output: str, model: str, *, user: str, department: str
) -> float | None:
    """LLM-as-judge: the rubric is the library prompt ``quality_judge``; its model is chosen by the router.

    Runs through the same request path (guard, budget, ledger — and so the same cache)."""
    import json

    reference = case.expected if case.expected is not None else " ".join(case.facts)
    req = Request(
        user=user,
        department=department,
        prompt=JUDGE_PROMPT,
        purpose="judge",
        run_id=EVAL_RUN_ID,
        record_key=f"judge:{case_key(case, pv, model)}:{hashlib.sha256(output.encode()).hexdigest()[:16]}",
        variables={
            "task": f"{pv.meta.description}\nInputs: {canonical_json(case.inputs)[:6000]}",
            "answer": output[:6000],
            "reference": (reference if isinstance(reference, str) else canonical_json(reference))[:6000],
        },
        priority="quality",
    )
    res = gw.process(req)
    if res.status != Status.OK or not res.output:
        return None
    try:
        score = float(json.loads(res.output)["score"])
    except (ValueError, KeyError, TypeError):
        return None
    return min(1.0, max(0.0, score))


def evaluate(
    gw: Gateway,
    pv: PromptVersion,
    model: str,
    cases: list[GoldenCase],
    *,
    user: str,
    department: str,
    judge: bool = True,
) -> EvalRun:
    run = EvalRun(pv.name, str(pv.version), model, pv.meta.quality_threshold)

    def one(case: GoldenCase) -> CaseResult:
        req = Request(
            user=user,
            department=department,
            prompt=pv.ref,
            variables=dict(case.inputs),
            record_key=case_key(case, pv, model),
            run_id=EVAL_RUN_ID,
            purpose="evaluation",
            model=model,
        )
        res: Result = gw.process(req)
        scores: dict[str, float] = {}
        if res.status in (Status.OK, Status.FAILED) and res.output is not None:
            view = CaseView(
                output=res.output, expected=case.expected, facts=case.facts, inputs=case.inputs, spec=pv.meta.output
            )
            scores = score_case(view)
        if scores and judge and pv.meta.task_type != "evaluation":
            verdict = _judge(gw, pv, case, res.output or "", model, user=user, department=department)
            if verdict is not None:
                scores["llm_judge"] = verdict
        total = overall(scores, pv.meta.metric_weights) if scores else 0.0
        return CaseResult(
            case_id=case.id,
            status=str(res.status),
            output=res.output or "",
            scores=scores,
            overall=total,
            passed=total >= pv.meta.quality_threshold,
            cost_nanousd=res.cost_nanousd,
            prompt_tokens=res.prompt_tokens,
            completion_tokens=res.completion_tokens,
            latency_ms=res.latency_ms,
            cached=res.replayed,
            reason=res.reason if res.status != Status.OK else "",
        )

    with ThreadPoolExecutor(max_workers=gw.settings.concurrency, thread_name_prefix="llmops-eval") as pool:
        run.cases = list(pool.map(one, cases))
    return run


def as_rows(run: EvalRun) -> list[dict[str, Any]]:
    return [
        {
            "case": c.case_id,
            "status": c.status,
            "overall": round(c.overall, 4),
            "passed": c.passed,
            **{f"m_{k}": round(v, 4) for k, v in c.scores.items()},
            "output": c.output[:500],
            "cost_usd": c.cost_nanousd / 1e9,
            "cached": c.cached,
        }
        for c in run.cases
    ]
