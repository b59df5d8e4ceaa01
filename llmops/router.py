"""Model routing: pick a catalog model for a request by task type × priority, after hard constraints.

Hard constraints first (access for person and department, data-class clearance, context window);
then the priority decides among what is left:

* ``cost``      cheapest expected cost
* ``quality``   cheapest model whose quality meets the prompt's threshold (not "the most expensive")
* ``speed``     lowest p95 latency
* ``balanced``  weighted score of normalised quality, cost and speed (weights from the policy)

Quality and latency come from pluggable sources (catalog defaults here; the evaluation and ledger
issues plug in measured numbers). Every decision carries its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from llmops.access import check_model
from llmops.policy import DATA_CLASS_RANK, ModelEntry, Policy, Priority
from llmops.prompts import PromptMeta

QualitySource = Callable[[str, str], float | None]  # (prompt name, model) -> measured quality
LatencySource = Callable[[str], float | None]  # model -> p95 latency ms


@dataclass(frozen=True)
class RouteDecision:
    model: str | None
    fallbacks: tuple[str, ...]
    reason: str
    denied: bool = False  # True when no model is allowed by policy (vs. none fits technically)


class Router:
    def __init__(
        self,
        policy: Policy,
        quality: QualitySource | None = None,
        latency: LatencySource | None = None,
    ) -> None:
        self.policy = policy
        self._quality = quality or (lambda _p, _m: None)
        self._latency = latency or (lambda _m: None)

    def quality_of(self, prompt: str, model: str) -> float:
        measured = self._quality(prompt, model)
        return measured if measured is not None else self.policy.models[model].quality

    def latency_of(self, model: str) -> float:
        measured = self._latency(model)
        return measured if measured is not None else float(self.policy.models[model].latency_ms)

    def route(
        self,
        *,
        meta: PromptMeta,
        user: str,
        department: str,
        data_class: str,
        prompt_tokens: int,
        max_tokens: int,
        priority: Priority | None = None,
        pinned: str | None = None,
    ) -> RouteDecision:
        prio: Priority = priority or self.policy.routing.default_priority
        candidates = [pinned] if pinned else (meta.candidate_models or self.policy.routing.default_models)
        allowed: list[str] = []
        rejections: list[str] = []
        policy_only = True
        for name in candidates:
            if name not in self.policy.models:
                rejections.append(f"{name}: not in the catalog")
                continue
            entry = self.policy.models[name]
            decision = check_model(self.policy, user, department, name)
            if not decision:
                rejections.append(decision.rule)
                continue
            if DATA_CLASS_RANK[entry.clearance] < DATA_CLASS_RANK[data_class]:
                rejections.append(f"route.clearance: {name} is cleared for {entry.clearance}, data is {data_class}")
                continue
            if prompt_tokens + max_tokens > entry.context_window:
                policy_only = False
                rejections.append(
                    f"route.context: {name} holds {entry.context_window} tokens, "
                    f"request needs {prompt_tokens}+{max_tokens}"
                )
                continue
            allowed.append(name)
        if not allowed:
            return RouteDecision(None, (), "route.no_model: " + "; ".join(rejections), denied=policy_only)

        def expected_cost(name: str) -> Decimal:
            inp, out = self.policy.models[name].price()
            return Decimal(prompt_tokens) * inp + Decimal(max_tokens) * out

        ranked = self._rank(allowed, prio, meta, expected_cost)
        best = ranked[0]
        why = self._explain(best, prio, meta, expected_cost)
        depth = self.policy.routing.fallback_depth
        return RouteDecision(best, tuple(ranked[1 : 1 + depth]), why)

    def _rank(self, names: list[str], prio: Priority, meta: PromptMeta, cost: Callable[[str], Decimal]) -> list[str]:
        if prio == "cost":
            return sorted(names, key=lambda n: (cost(n), n))
        if prio == "speed":
            return sorted(names, key=lambda n: (self.latency_of(n), cost(n), n))
        if prio == "quality":
            good = [n for n in names if self.quality_of(meta.name, n) >= meta.quality_threshold]
            rest = [n for n in names if n not in good]
            return sorted(good, key=lambda n: (cost(n), n)) + sorted(
                rest, key=lambda n: (-self.quality_of(meta.name, n), cost(n), n)
            )
        weights = self.policy.routing.balanced_weights
        max_cost = max(cost(n) for n in names) or Decimal(1)
        max_lat = max(self.latency_of(n) for n in names) or 1.0

        def score(n: str) -> float:
            return (
                weights.get("quality", 0) * self.quality_of(meta.name, n)
                + weights.get("cost", 0) * (1 - float(cost(n) / max_cost))
                + weights.get("speed", 0) * (1 - self.latency_of(n) / max_lat)
            )

        return sorted(names, key=lambda n: (-score(n), n))

    def _explain(self, name: str, prio: Priority, meta: PromptMeta, cost: Callable[[str], Decimal]) -> str:
        entry: ModelEntry = self.policy.models[name]
        return (
            f"route.{prio}: {name} (tier {entry.tier}, quality {self.quality_of(meta.name, name):.2f}, "
            f"expected ${cost(name) / Decimal(1_000_000):.6f}, p95 {self.latency_of(name):.0f} ms)"
        )
