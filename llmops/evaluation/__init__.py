"""Quality evaluation: metrics, golden sets, the nightly regression, MLflow tracking."""

from llmops.evaluation.golden import GoldenCase, load_golden
from llmops.evaluation.metrics import METRICS, CaseView, register_metric, rouge_l, score_case, token_f1
from llmops.evaluation.nightly import PromptNight, alert_regressions, evaluate_prompt, measured_quality, tonight
from llmops.evaluation.runner import EvalRun, evaluate

__all__ = [
    "METRICS",
    "CaseView",
    "EvalRun",
    "GoldenCase",
    "PromptNight",
    "alert_regressions",
    "evaluate",
    "evaluate_prompt",
    "load_golden",
    "measured_quality",
    "register_metric",
    "rouge_l",
    "score_case",
    "token_f1",
    "tonight",
]
