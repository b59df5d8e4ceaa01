"""The ledger: one row per call under a deterministic id, reservations, dead letters, batch runs."""

from llmops.ledger.models import (
    AlertState,
    BatchRun,
    BudgetAlert,
    BudgetDelta,
    BudgetTotal,
    DeadLetter,
    EvalResult,
    LlmCall,
    Quarantine,
    RateEvent,
)
from llmops.ledger.store import Ledger, is_final

__all__ = [
    "AlertState",
    "BatchRun",
    "BudgetAlert",
    "BudgetDelta",
    "BudgetTotal",
    "DeadLetter",
    "EvalResult",
    "Ledger",
    "LlmCall",
    "Quarantine",
    "RateEvent",
    "is_final",
]
