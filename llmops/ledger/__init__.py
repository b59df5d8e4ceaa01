"""The ledger: one row per call under a deterministic id, reservations, dead letters, batch runs."""

from llmops.ledger.models import BatchRun, BudgetAlert, DeadLetter, EvalResult, LlmCall, Quarantine
from llmops.ledger.store import Ledger, is_final

__all__ = ["BatchRun", "BudgetAlert", "DeadLetter", "EvalResult", "Ledger", "LlmCall", "Quarantine", "is_final"]
