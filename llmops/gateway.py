"""The one request path every call takes — DAGs, CLI and tests alike::

    access → guard → render → route → budget (reserve) → call → checks → ledger (settle) → log

:meth:`Gateway.process` returns a :class:`~llmops.types.Result` with a terminal status. A request whose
key already has a final ledger row is *replayed* from the ledger and never called (or billed) again.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from llmops.access import check_request
from llmops.breaker import CircuitBreaker
from llmops.budget import Alerter, Budget
from llmops.checks import check_output
from llmops.errors import ProviderError, RenderError
from llmops.guard import guard_variables, restore
from llmops.ledger import Ledger, LlmCall, is_final
from llmops.observe import excerpt, log_call
from llmops.policy import Policy, load_policy
from llmops.pricing import cost_nano
from llmops.prompts import PromptLibrary, PromptVersion
from llmops.provider import Completion, LiteLLMProvider
from llmops.quarantine import released_rule
from llmops.quotas import QuotaLimiter
from llmops.router import Router
from llmops.settings import Settings
from llmops.tokens import count_messages
from llmops.types import Request, Result, Status, call_id_for

log = logging.getLogger("llmops.gateway")


class Provider:  # structural type of the call stage (LiteLLMProvider, or a test double transport)
    def complete(
        self, entry: Any, messages: list[dict[str, str]], params: dict[str, Any], timeout: float
    ) -> Completion:
        raise NotImplementedError


@dataclass
class _Ctx:
    req: Request
    key: str
    base: dict[str, Any]


@dataclass
class Prepared:
    """A request past access, guard, render and route: ready for budget, call and settle."""

    ctx: _Ctx
    pv: PromptVersion
    messages: list[dict[str, str]]
    params: dict[str, Any]
    max_tokens: int
    prompt_tokens: int
    models: tuple[str, ...]  # the routed model, then its fallbacks
    reasons: list[str]
    findings: dict[str, int]
    placeholders: dict[str, str]
    prompt_excerpt: str


@dataclass
class Rejected:
    """A request that ends before any call — denied, blocked, failed to render or route, deferred: its
    terminal status and why (the fields of its final ledger row)."""

    ctx: _Ctx
    status: Status
    reasons: list[str]
    findings: dict[str, int] | None = None
    prompt_excerpt: str = ""


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        policy: Policy | None = None,
        library: PromptLibrary | None = None,
        ledger: Ledger | None = None,
        provider: Provider | LiteLLMProvider | None = None,
        router: Router | None = None,
        breaker: CircuitBreaker | None = None,
        alerter: Alerter | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.policy = policy or load_policy(settings.policy_path)
        self.library = library or PromptLibrary(settings.prompts_path, settings.max_rendered_chars)
        self.ledger = ledger or Ledger(settings.ledger_database_url)
        self.provider = provider or LiteLLMProvider(
            settings.simulator_url, settings.simulator_api_key.get_secret_value()
        )
        if router is None:
            from llmops.evaluation.nightly import measured_quality

            router = Router(self.policy, quality=measured_quality(self), latency=self._observed_p95())
        self.router = router
        self.budget = Budget(self.ledger, self.policy, settings.timezone, alerter)
        self.breaker = breaker or CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s)
        self.rates = QuotaLimiter(self.ledger, self.policy)
        self._sleep = sleep

    def _observed_p95(self) -> Callable[[str], float | None]:
        """p95 latency per model from the ledger over the recent window, cached for a minute."""
        cache: dict[str, tuple[float, float | None]] = {}

        def source(model: str) -> float | None:
            now = time.monotonic()
            hit = cache.get(model)
            if hit is not None and now - hit[0] < 60:
                return hit[1]
            since = datetime.now(UTC) - timedelta(hours=self.settings.latency_window_hours)
            value = self.ledger.p95_latency_ms(model, since)
            cache[model] = (now, value)
            return value

        return source

    def endpoint(self, entry: Any) -> str:
        """The circuit-breaker key of a catalog model: its provider endpoint."""
        base = entry.api_base or (self.settings.simulator_url if entry.provider == "simulator" else "default")
        return f"{entry.provider}:{base}"

    def warm_up(self) -> None:
        """Build what the request path otherwise builds inside its first record: the PII analyzer (with the
        Japanese name pipeline when the policy turns it on), the anonymizer, the injection screen and its
        learned layer, the tokenizer, the ledger's ORM mapping and connection. Once per process; ~0.1 s
        without the name pipeline. Nothing is written or logged: the texts are the module's own."""
        self.ledger.get("warm-up")  # a read: no row has this key
        # screened for injection (rules and learned layer), then redacted: every part of the guard runs
        guard_variables({"text": "Warm-up: write to warm.up@example.com or call 090-0000-0000."}, self.policy.guard)
        count_messages([{"role": "user", "content": "warm up"}])

    # -- the path -------------------------------------------------------------------------------
    def process(self, req: Request, *, run_cost_cap_nano: int | None = None) -> Result:
        pv, key, existing = self.lookup(req)
        if existing is not None and is_final(existing):
            return self.replay(req, pv, existing)
        prep = self.prepare(req, pv, key, existing)
        if isinstance(prep, Rejected):
            return self.reject(prep)
        ctx, base, reasons, params = prep.ctx, prep.ctx.base, prep.reasons, prep.params
        prompt_tokens, max_tokens, prompt_excerpt = prep.prompt_tokens, prep.max_tokens, prep.prompt_excerpt
        # Per-person / per-department rate limits: wait (never drop) until the minute has room.
        waited = self.rates.wait_for(req.user, req.department, prompt_tokens + max_tokens, self._sleep)
        if waited:
            reasons.append(f"rate.throttled: waited {waited:.1f}s")

        errors: list[str] = []
        attempts = existing.attempts if existing is not None else 0
        for model in prep.models:
            entry = self.policy.models[model]
            endpoint = self.endpoint(entry)
            if not self.breaker.allow(endpoint):
                errors.append(f"circuit_open: {endpoint} ({model} skipped)")
                continue
            inp, out = entry.price()
            estimate = cost_nano(inp, out, prompt_tokens, max_tokens)
            call_id = call_id_for(key, model)
            with self.ledger.transaction() as s:
                res = self.budget.reserve(
                    s,
                    department=req.department,
                    month=base["budget_month"],
                    request_key=key,
                    estimate_nano=estimate,
                    user=req.user,
                    prompt=pv.name,
                )
                if res.ok and run_cost_cap_nano is not None:
                    res = self._check_run_cap(s, req.run_id, key, estimate, run_cost_cap_nano)
                attempts += 1
                fields = self.call_fields(prep, model, attempts)
                if not res.ok:
                    self.ledger.upsert_call(
                        s,
                        key,
                        **fields,
                        status=Status.BUDGET_EXCEEDED,
                        reserved_nanousd=0,
                        reasons="; ".join([*reasons, res.reason]),
                    )
                    result = Result(
                        Status.BUDGET_EXCEEDED,
                        req.record_key,
                        key,
                        call_id,
                        pv.ref,
                        model,
                        reasons=[*reasons, res.reason],
                        findings=prep.findings,
                    )
                    log_call(
                        result, user=req.user, department=req.department, prompt=pv.name, prompt_excerpt=prompt_excerpt
                    )
                    return result
                self.ledger.upsert_call(
                    s, key, **fields, status=Status.PENDING, reserved_nanousd=estimate, reasons="; ".join(reasons)
                )
            try:
                completion = self._call_with_retries(entry, endpoint, prep.messages, params)
            except ProviderError as exc:
                errors.append(str(exc))
                with self.ledger.transaction() as s:
                    self.ledger.upsert_call(
                        s, key, reserved_nanousd=0, status=Status.FAILED, reasons="; ".join([*reasons, *errors])
                    )
                if not exc.retryable:
                    break
                continue
            if errors:  # record why earlier models of the chain were passed over
                reasons = [*reasons, *[f"fallback: {e}" for e in errors], f"route.fallback: answered by {model}"]
            return self._settle(prep, model, call_id, completion, reasons)
        all_reasons = [*reasons, *[f"call: {e}" for e in errors]]
        if self.ledger.get(key) is None:  # no model was even tried (every circuit open)
            return self._final(ctx, Status.FAILED, all_reasons, findings=prep.findings, prompt_excerpt=prompt_excerpt)
        with self.ledger.transaction() as s:  # keep model, call_id and attempts of the last call
            row = self.ledger.upsert_call(
                s,
                key,
                status=Status.FAILED,
                reserved_nanousd=0,
                reasons="; ".join(all_reasons),
            )
        result = _from_row(row, replayed=False)
        log_call(result, user=req.user, department=req.department, prompt=pv.name, prompt_excerpt=prompt_excerpt)
        return result

    # -- reusable stages (Gateway.process and the batch engine share them) ----------------------
    def lookup(self, req: Request) -> tuple[PromptVersion, str, LlmCall | None]:
        """The prompt version, the deterministic request key, and the ledger row it may already have."""
        pv = self.library.resolve(req.prompt)
        key = req.request_key(pv.ref)
        return pv, key, self.ledger.get(key)

    def prepare(
        self, req: Request, pv: PromptVersion, key: str, existing: LlmCall | None = None
    ) -> Prepared | Rejected:
        """The CPU stages — access → guard → render → route — with nothing written and nothing sent.

        ``existing`` is the request's ledger row, if any: a row a data owner released from quarantine
        exempts the request from exactly the released rule."""
        ctx = _Ctx(req, key, self._base(req, pv))
        decision = check_request(self.policy, req.user, req.department, pv.name, req.data_class)
        if not decision:
            return Rejected(ctx, Status.DENIED, [decision.rule])
        try:
            values = self.library.check_variables(pv, req.variables)
        except RenderError as exc:
            return Rejected(ctx, Status.FAILED, [f"render: {exc}"])
        released = (
            released_rule(self.ledger, key) if existing is not None and existing.status == Status.RELEASED else None
        )
        verdict = guard_variables(values, self.policy.guard, req.data_class, released=released)
        if verdict.action == "block":
            return Rejected(ctx, Status.BLOCKED, [verdict.rule or "guard.block"], verdict.findings)
        try:
            rendered = self.library.render(pv, verdict.variables)
        except RenderError as exc:
            return Rejected(ctx, Status.FAILED, [f"render: {exc}"], verdict.findings)
        # The excerpt shows the record's (already redacted) variables: the part that differs per call.
        prompt_excerpt = excerpt(" | ".join(str(v) for v in verdict.variables.values()), redact=bool(verdict.allowed))
        params = dict(pv.meta.parameters)
        max_tokens = int(params.get("max_tokens", 512))
        prompt_tokens = count_messages(rendered.messages)
        route = self.router.route(
            meta=pv.meta,
            user=req.user,
            department=req.department,
            data_class=req.data_class,
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            priority=req.priority,
            pinned=req.model,
        )
        reasons = [route.reason]
        if verdict.action == "redact":
            reasons.append("guard.redacted: " + ", ".join(f"{k}×{v}" for k, v in sorted(verdict.findings.items())))
        if released:
            reasons.append(f"quarantine.released: {released}")
        if route.model is None:
            status = Status.DENIED if route.denied else Status.FAILED
            return Rejected(ctx, status, reasons, verdict.findings, prompt_excerpt)
        return Prepared(
            ctx,
            pv,
            rendered.messages,
            params,
            max_tokens,
            prompt_tokens,
            (route.model, *route.fallbacks),
            reasons,
            verdict.findings,
            verdict.placeholders if verdict.restore else {},  # only where the policy lets the owner see them
            prompt_excerpt,
        )

    def reject(self, rej: Rejected) -> Result:
        """Record a request that ends before any call (denied, blocked, failed to render or route)."""
        return self.reject_many([rej])[0]

    def reject_many(self, rejs: list[Rejected]) -> list[Result]:
        """Record requests that end before any call, all in one transaction."""
        return self._final_many(rejs)

    def call_fields(self, prep: Prepared, model: str, attempts: int) -> dict[str, Any]:
        """Ledger fields of a request about to call ``model`` (its row is written PENDING with a reservation)."""
        return dict(
            prep.ctx.base,
            call_id=call_id_for(prep.ctx.key, model),
            model=model,
            provider=self.policy.models[model].provider,
            prompt_excerpt=prep.prompt_excerpt,
            findings=json.dumps(prep.findings, sort_keys=True),
            attempts=attempts,
            prompt_tokens=0,
            completion_tokens=0,
            cost_nanousd=0,
            output=None,
        )

    def replay(self, req: Request, pv: Any, row: LlmCall) -> Result:
        """A final ledger row, returned as is — with placeholders restored again where the policy allows
        (redaction is deterministic, so the same record gives the same mapping; nothing is stored)."""
        result = _from_row(row, replayed=True)
        if result.output and "<" in result.output and self.policy.guard.for_class(req.data_class).restore:
            try:
                values = self.library.check_variables(pv, req.variables)
            except RenderError:
                return result
            verdict = guard_variables(values, self.policy.guard, req.data_class)
            if verdict.placeholders:
                result.output = restore(result.output, verdict.placeholders)
        return result

    def defer(self, req: Request, reason: str) -> Result:
        """Record a request as deferred without calling anything (its batch stopped at the budget)."""
        return self.defer_many([req], reason)[0]

    def defer_many(self, reqs: list[Request], reason: str) -> list[Result]:
        """Record requests as deferred, in one transaction; a request already final is returned as it is."""
        finals: list[Rejected] = []
        replayed: dict[int, Result] = {}
        for req in reqs:
            pv = self.library.resolve(req.prompt)
            finals.append(Rejected(_Ctx(req, req.request_key(pv.ref), self._base(req, pv)), Status.DEFERRED, [reason]))
        with self.ledger.transaction() as s:
            final_rows = {
                r.request_key: r
                for r in s.scalars(
                    select(LlmCall).where(LlmCall.request_key.in_([f.ctx.key for f in finals])).with_for_update()
                )
                if is_final(r)
            }
            for n, f in enumerate(finals):
                if f.ctx.key in final_rows:
                    replayed[n] = _from_row(final_rows[f.ctx.key], replayed=True)
            rows = [self._write_final(s, f) for n, f in enumerate(finals) if n not in replayed]
        written = iter(self._log_finals([f for n, f in enumerate(finals) if n not in replayed], rows))
        return [replayed[n] if n in replayed else next(written) for n in range(len(finals))]

    def _base(self, req: Request, pv: Any) -> dict[str, Any]:
        return {
            "run_id": req.run_id,
            "record_key": req.record_key,
            "purpose": req.purpose,
            "user": req.user,
            "department": req.department,
            "prompt_name": pv.name,
            "prompt_version": str(pv.version),
            "budget_month": self.budget.month(),
        }

    # -- stages ---------------------------------------------------------------------------------
    def _check_run_cap(self, s: Any, run_id: str, key: str, estimate: int, cap: int) -> Any:
        from sqlalchemy import func, select

        from llmops.budget import Reservation

        used = s.execute(
            select(func.coalesce(func.sum(LlmCall.cost_nanousd + LlmCall.reserved_nanousd), 0)).where(
                LlmCall.run_id == run_id, LlmCall.request_key != key
            )
        ).scalar_one()
        if int(used) + estimate > cap:
            return Reservation(
                False, f"budget.run_cap: the run's cost cap of ${cap / 1e9:.4f} would be passed", cap, int(used)
            )
        return Reservation(True, "budget.reserved", cap, int(used))

    def _call_with_retries(
        self, entry: Any, endpoint: str, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> Completion:
        retries = self.settings.max_retries
        for attempt in range(retries + 1):
            try:
                completion = self.provider.complete(entry, messages, params, self.settings.request_timeout_s)
            except ProviderError as exc:
                if exc.retryable:
                    self.breaker.record_failure(endpoint)
                if not exc.retryable or attempt == retries:
                    raise
                if not self.breaker.allow(endpoint):  # the circuit opened: go to the next fallback now
                    raise
                backoff = min(30.0, 0.25 * (2**attempt)) * random.uniform(0.5, 1.5)
                delay = max(backoff, exc.retry_after or 0.0)  # never earlier than Retry-After
                log.info("retrying %s in %.2fs after %s", entry.litellm_model, delay, exc.problem)
                self._sleep(delay)
            else:
                self.breaker.record_success(endpoint)
                return completion
        raise AssertionError("unreachable")  # pragma: no cover

    def _settle(self, prep: Prepared, model: str, call_id: str, completion: Completion, reasons: list[str]) -> Result:
        fields, result = self.settlement(prep, model, call_id, completion, reasons)
        ctx = prep.ctx
        dept, month = ctx.req.department, ctx.base["budget_month"]
        with self.ledger.transaction() as s:
            self.ledger.upsert_call(s, ctx.key, **fields)
        self.budget.after_settle(dept, ctx.req.user, ctx.base["prompt_name"], month)
        log_call(
            result,
            user=ctx.req.user,
            department=dept,
            prompt=ctx.base["prompt_name"],
            prompt_excerpt=prep.prompt_excerpt,
        )
        return result

    def settlement(
        self, prep: Prepared, model: str, call_id: str, completion: Completion, reasons: list[str]
    ) -> tuple[dict[str, Any], Result]:
        """Checks and the actual cost of a completed call of ``model``: the ledger fields that settle it,
        and its result (placeholders restored where the policy allows)."""
        ctx, placeholders = prep.ctx, prep.placeholders
        inp, out = self.policy.models[model].price()
        cost = cost_nano(inp, out, completion.prompt_tokens, completion.completion_tokens)
        report = check_output(completion.text, prep.pv.meta.output)
        status = Status.FAILED if report.hard_failure else Status.OK
        # The ledger keeps the output as the provider wrote it (placeholders); the data owner gets it restored.
        text = restore(completion.text, placeholders) if placeholders else completion.text
        all_reasons = [*reasons, *report.failed]
        fields = {
            "status": status,
            "cost_nanousd": cost,
            "reserved_nanousd": 0,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "latency_ms": completion.latency_ms,
            "output": completion.text,
            "quality_score": report.score,
            "reasons": "; ".join(all_reasons),
        }
        result = Result(
            status,
            ctx.req.record_key,
            ctx.key,
            call_id,
            f"{ctx.base['prompt_name']}@{ctx.base['prompt_version']}",
            model,
            text,
            completion.prompt_tokens,
            completion.completion_tokens,
            completion.latency_ms,
            cost,
            report.score,
            all_reasons,
            prep.findings,
        )
        return fields, result

    def _final(
        self,
        ctx: _Ctx,
        status: Status,
        reasons: list[str],
        *,
        findings: dict[str, int] | None = None,
        prompt_excerpt: str = "",
    ) -> Result:
        return self._final_many([Rejected(ctx, status, reasons, findings, prompt_excerpt)])[0]

    def _final_many(self, finals: list[Rejected]) -> list[Result]:
        """Write final rows of requests that made no call (and quarantine the blocked and denied), in one
        transaction; then log them."""
        with self.ledger.transaction() as s:
            rows = [self._write_final(s, f) for f in finals]
        return self._log_finals(finals, rows)

    def _write_final(self, s: Any, f: Rejected) -> LlmCall:
        row = self.ledger.upsert_call(
            s,
            f.ctx.key,
            **f.ctx.base,
            call_id=call_id_for(f.ctx.key, "-"),
            model=None,
            provider=None,
            status=f.status,
            reasons="; ".join(f.reasons),
            findings=json.dumps(f.findings or {}, sort_keys=True),
            prompt_excerpt=f.prompt_excerpt,
            reserved_nanousd=0,
            cost_nanousd=0,
            prompt_tokens=0,
            completion_tokens=0,
            latency_ms=0,
            output=None,
            attempts=0,
        )
        if f.status in (Status.BLOCKED, Status.DENIED):
            self._quarantine(s, f.ctx, f.status, f.reasons, f.findings or {})
        return row

    def _log_finals(self, finals: list[Rejected], rows: list[LlmCall]) -> list[Result]:
        results = []
        for f, row in zip(finals, rows, strict=True):
            result = _from_row(row, replayed=False)
            log_call(
                result,
                user=f.ctx.req.user,
                department=f.ctx.req.department,
                prompt=f.ctx.base["prompt_name"],
                prompt_excerpt=f.prompt_excerpt,
            )
            results.append(result)
        return results

    def _quarantine(self, s: Any, ctx: _Ctx, status: Status, reasons: list[str], findings: dict[str, int]) -> None:
        """Record a blocked/denied request for review: rule, reason, finding types and counts — no text."""
        from sqlalchemy import select

        from llmops.ledger import Quarantine

        fields = {
            "run_id": ctx.req.run_id,
            "record_key": ctx.req.record_key,
            "user": ctx.req.user,
            "department": ctx.req.department,
            "prompt_name": ctx.base["prompt_name"],
            "prompt_version": ctx.base["prompt_version"],
            "status": str(status),
            "rule": (reasons[0].split(":", 1)[0] if reasons else str(status))[:200],
            "reason": "; ".join(reasons),
            "findings": json.dumps(findings, sort_keys=True),
        }
        row = s.scalar(select(Quarantine).where(Quarantine.request_key == ctx.key))
        if row is None:
            s.add(Quarantine(request_key=ctx.key, **fields))
        else:  # blocked again (another rule, or after a release): a new decision awaits review
            for k, v in fields.items():
                setattr(row, k, v)
            row.released_by = row.released_at = row.release_note = None

    def close(self) -> None:
        """Fold the budget deltas this gateway's calls left (see ``Ledger.fold_all``), then let the ledger go."""
        try:
            self.ledger.fold_all()
        except Exception:  # housekeeping: the totals stay exact unfolded, the next fold catches up
            log.exception("budget totals could not be folded")
        self.ledger.dispose()


def _from_row(row: LlmCall, *, replayed: bool) -> Result:
    return Result(
        status=Status(row.status),
        record_key=row.record_key,
        request_key=row.request_key,
        call_id=row.call_id,
        prompt_version=f"{row.prompt_name}@{row.prompt_version}",
        model=row.model,
        output=row.output,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms,
        cost_nanousd=row.cost_nanousd,
        quality_score=row.quality_score,
        reasons=[r for r in (row.reasons or "").split("; ") if r],
        findings=json.loads(row.findings or "{}"),
        replayed=replayed,
    )
