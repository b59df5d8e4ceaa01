"""The batch engine: many requests through the one request path at the provider's ceiling.

It keeps every guarantee of :meth:`llmops.gateway.Gateway.process` — the same stages, run by the
Gateway's own methods — and adds what a batch needs to go fast::

    input (streamed) → replay check (one query per group) → access/guard/render/route (runs ahead)
      → budget reservation (one transaction per group, PENDING rows written before any call)
      → per-endpoint RPM/TPM buckets (llmops.ratelimit) → bounded concurrent calls (litellm.acompletion)
      → checks and settle, batched on the database thread (one transaction per N results or T ms)
      → log → output (streamed)

* **Exactly once**: the request key and call id are the Gateway's; a record whose key has a final row is
  replayed, never called; every call is reserved (a PENDING row) in the database before it leaves, so a
  crash leaves rows a rerun settles, never unbilled calls. A result is handed out only after its
  settlement is committed.
* **Fail closed**: access, guard and routing run before anything leaves; a budget refusal stops the run
  (the rest is recorded as deferred, as ``llmops.batch`` did).
* **Rate limits**: requests leave only when the endpoint's buckets admit them (prompt tokens + max_tokens
  against TPM); limits come from the catalog or are learnt from ``x-ratelimit-*`` headers; a 429
  blocks the endpoint until ``Retry-After`` and is retried then, never earlier. 429s do not open the
  circuit breaker (the limiter handles them) and do not use up the retry budget of 5xx/timeouts.
* **Flat memory**: a bounded window of records is in flight; results go to a callback as they settle.
* **Off the critical path**: the CPU stages run in a producer that stays ahead of admission, one record
  at a time between event-loop turns; database work runs on one dedicated thread.
* **No full garbage collections mid-run**: the objects alive when a run starts (imported modules, litellm,
  the policy, the guard's tables — ~500k objects) are frozen out of the cyclic collector for the run
  (:func:`gc.freeze`), so the collections the run's own garbage triggers never walk them: a full collection
  of that heap cost ~0.35-0.42 s, once or more per thousand records. They are unfrozen when the run ends.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select, update

from llmops.errors import ProviderError
from llmops.gateway import Gateway, Prepared, Rejected
from llmops.ledger import LlmCall, is_final
from llmops.observe import log_call
from llmops.pricing import cost_nano
from llmops.provider import Completion
from llmops.ratelimit import EndpointLimiter
from llmops.types import Request, Result, Status

# the most prepared records held back to leave together as a wave (see _prepare_group)
_WAVE_MAX = 16

log = logging.getLogger("llmops.engine")

ResultSink = Callable[[int, Result], None]
_TABLE: Table = LlmCall.__table__  # type: ignore[assignment]
_DONE = object()


@dataclass
class EngineStats:
    records: int = 0
    replayed: int = 0
    rejected: int = 0  # denied, blocked, failed before any call
    deferred: int = 0
    calls: int = 0  # HTTP attempts sent
    ok: int = 0
    failed: int = 0
    budget_exceeded: int = 0
    rate_limited: int = 0  # 429 answers
    retries: int = 0  # attempts after the first (any cause)
    flushes: int = 0
    settled_rows: int = 0
    elapsed_s: float = 0.0
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Item:
    index: int
    req: Request
    prep: Prepared
    attempts: int  # ledger attempts so far (a rerun continues the count)
    own_reserved: int  # reservation the row already holds (a crashed run's PENDING row)
    exists: bool  # the request key already has a ledger row
    model_pos: int = 0
    tried: str | None = None  # the model of the last call sent (what a failed record reports)
    errors: list[str] = field(default_factory=list)
    overhead_ns: int = 0  # CPU the platform spent on this record (profile=True)
    stages: dict[str, int] = field(default_factory=dict)  # overhead_ns by stage (profile=True)


@dataclass
class _Settle:
    item: _Item
    fields: dict[str, Any]
    result: Result | None  # None: answered, its checks not run yet (the writer runs them with the batch)
    answer: tuple[str, Completion] | None = None  # (model, completion) of such an answer

    @property
    def settled(self) -> Result:
        assert self.result is not None, "an answer's result is set when its batch is written"
        return self.result


class Engine:
    """Run requests through the request path with bounded concurrency and client-side rate limits."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        concurrency: int | None = None,
        run_cost_cap_nano: int | None = None,
        group_size: int = 64,
        flush_rows: int = 256,
        flush_interval_s: float = 0.25,
        use_catalog_limits: bool = True,
        headroom: float = 0.99,
        burst_s: float = 1.0,
        max_rate_limit_retries: int = 50,
        alert_interval_s: float = 1.0,
        fold_interval_s: float = 5.0,
        profile: bool = False,
    ) -> None:
        self.gw = gateway
        self.concurrency = concurrency or gateway.settings.concurrency
        self.run_cost_cap_nano = run_cost_cap_nano
        self.group_size = group_size
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.use_catalog_limits = use_catalog_limits
        self.headroom = headroom
        self.burst_s = burst_s
        self.max_rate_limit_retries = max_rate_limit_retries
        # budget alert thresholds are checked (a read of the budget's month usage) at most this often per
        # budget during a run, and once more for every budget the run touched when it ends
        self.alert_interval_s = alert_interval_s
        # the budget deltas no reservation folds (budgets that are not checked) are folded this often and
        # when the run ends (Ledger.fold_all), so they never pile up
        self.fold_interval_s = fold_interval_s
        self._folded_at = time.monotonic()
        self.limiters: dict[str, EndpointLimiter] = {}
        self.stats = EngineStats()
        self.profile = profile
        #: with ``profile=True``: CPU ns per called record spent in the platform's own stages (prepare,
        #: reservation and settlement shares, checks) — everything but the provider call itself
        self.overheads: list[int] = []
        #: with ``profile=True``: the same CPU ns by stage (lookup, prepare, reserve, settle, write), per record
        self.stage_overheads: list[dict[str, int]] = []

    # -- public API -----------------------------------------------------------------------------
    def run(self, requests: Iterable[Request], on_result: ResultSink) -> EngineStats:
        """Run every request; ``on_result(index, result)`` is called once per request, after its row is durable."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.arun(requests, on_result))
        raise RuntimeError("Engine.run() called from a running event loop; await Engine.arun() instead")

    async def arun(self, requests: Iterable[Request], on_result: ResultSink) -> EngineStats:
        frozen = not gc.get_freeze_count()  # not already frozen (by the host or a run around this one)
        if frozen:
            gc.freeze()
        try:
            return await self._arun(requests, on_result)
        finally:
            if frozen:
                gc.unfreeze()  # back to the oldest generation: collected as usual from here on

    async def _arun(self, requests: Iterable[Request], on_result: ResultSink) -> EngineStats:
        started = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmops-engine-db")
        self._sync_calls: ThreadPoolExecutor | None = None
        self._sink = on_result
        self._stop_reason: str | None = None
        self._conc = asyncio.Semaphore(self.concurrency)
        window = self.concurrency * 2 + self.group_size
        self._window = asyncio.Semaphore(window)  # reserved, not yet settled
        # settled results wait for their batch's transaction holding window slots: write at a quarter of the
        # window at the latest, so a fast run never stalls admission on the flush interval
        self._flush_at = max(1, min(self.flush_rows, window // 4))
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=self.concurrency * 2 + self.group_size)
        self._pending: list[_Settle] = []
        self._alerts_checked: dict[tuple[str, str, str, str], float] = {}  # budget scope -> last check
        self._alerts_due: set[tuple[str, str, str, str]] = set()  # settled since its last check
        self._flush_now = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._admitting = 0  # records taken off the queue by admission whose calls are not started yet
        self._writer_done = False
        writer = asyncio.create_task(self._writer())
        producer = asyncio.create_task(self._produce(iter(requests)))
        dispatch = asyncio.create_task(self._dispatch())
        # A failed ledger write ends the writer, whose window slots would then never be released: stop the
        # dispatcher instead of letting it wait for them forever; the writer's error is raised below.
        writer.add_done_callback(lambda w: dispatch.cancel() if not w.cancelled() and w.exception() else None)
        try:
            await dispatch
            await producer
        except asyncio.CancelledError:
            if not (writer.done() and not writer.cancelled() and writer.exception()):
                raise
        finally:
            if not producer.done():  # the dispatcher failed: stop reading input
                producer.cancel()
            # Calls already sent finish and are settled even when the run fails: a call the provider
            # answered must not be left unrecorded (its PENDING row would be called again on rerun).
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            self._writer_done = True
            self._flush_now.set()
            await writer
            self._db.shutdown(wait=True)
            if self._sync_calls is not None:
                self._sync_calls.shutdown(wait=False)
        self.stats.elapsed_s = time.perf_counter() - started
        self.stats.limits = {
            k: {"rpm": v.rpm, "tpm": v.tpm, "source": v.source, "429": v.stats.rate_limited}
            for k, v in self.limiters.items()
        }
        return self.stats

    # -- stage 1: replay check and the CPU stages, ahead of admission -----------------------------
    async def _produce(self, requests: Iterator[Request]) -> None:
        try:
            index = 0
            while True:
                group: list[tuple[int, Request]] = []
                for req in requests:
                    group.append((index, req))
                    index += 1
                    if len(group) >= self.group_size:
                        break
                if not group:
                    break
                self.stats.records += len(group)
                await self._prepare_group(group)
        finally:
            await self._queue.put(_DONE)

    async def _prepare_group(self, group: list[tuple[int, Request]]) -> None:
        gw = self.gw
        t0 = time.thread_time_ns()
        lookups = [(i, req, *_resolve(gw, req)) for i, req in group]
        share = time.thread_time_ns() - t0
        existing, db_ns = await self._in_db(_timed(_existing_rows), gw, [key for *_, key in lookups])
        share = (share + db_ns) // len(group)
        rejected: list[tuple[int, Rejected]] = []
        deferred: list[tuple[int, Request]] = []
        throttled: list[_Item] = []  # under a person/department rate limit: admitted together below
        streak = 0
        held: list[_Item] = []  # prepared, handed on together while slots are idle
        for i, req, pv, key in lookups:
            row = existing.get(key)
            if row is not None and is_final(row):
                self.stats.replayed += 1
                self._emit(i, gw.replay(req, pv, row))
                continue
            if self._stop_reason is not None:
                deferred.append((i, req))
                continue
            t0 = time.thread_time_ns()
            prep = gw.prepare(req, pv, key, row)
            spent = time.thread_time_ns() - t0 + share
            if isinstance(prep, Rejected):
                rejected.append((i, prep))
                continue
            item = _Item(
                i,
                req,
                prep,
                attempts=row.attempts if row is not None else 0,
                own_reserved=row.reserved_nanousd if row is not None else 0,
                exists=row is not None,
                overhead_ns=spent,
                stages={"lookup": share, "prepare": spent - share},
            )
            if gw.rates.scopes(req.user, req.department):
                throttled.append(item)
                continue
            # While slots are idle (the first wave, or calls that outran the producer), hold prepared records
            # until they fill them (at most _WAVE_MAX: the loop does nothing else meanwhile, ~1 ms a record),
            # then hand them on together: admission reserves them in one transaction and they leave as one
            # wave, as a bare client's first calls do. Handed on one by one, the first wave left spread over
            # 0.1-0.2 s, and the run kept that spread to its end (idle slots in the last wave as well).
            held.append(item)
            idle = self._idle_slots()
            if len(held) < min(idle, _WAVE_MAX):
                continue
            for h in held:
                await self._queue.put(h)
            held.clear()
            # Let answers, admissions and settlements through: at once after a wave (it leaves now), else
            # every fourth record, so admission reserves groups in one transaction (one record per
            # transaction tripled the reservation's share of a record's CPU at p95).
            streak += 1
            if idle > 0 or streak >= 4:
                streak = 0
                await asyncio.sleep(0)
        for h in held:
            await self._queue.put(h)
        if rejected:
            results = await self._in_db(gw.reject_many, [r for _, r in rejected])
            for (i, _), result in zip(rejected, results, strict=True):
                self.stats.rejected += 1
                self._emit(i, result)
        await self._defer_many(deferred)
        await self._admit_quota(throttled)

    def _idle_slots(self) -> int:
        """Call slots that no admitted call, admission or queued record is going to take."""
        return self.concurrency - len(self._tasks) - self._admitting - self._queue.qsize()

    async def _admit_quota(self, items: list[_Item]) -> None:
        """Per-person / per-department rate limits (the policy's ``rate_limit``): admit each run of items
        of one person and department in one transaction, as many as the shared minute has room for, and
        wait for the rest. A throttled batch slows down; it never drops a record."""
        start = 0
        while start < len(items):
            user, dept = items[start].req.user, items[start].req.department
            end = start
            while end < len(items) and (items[end].req.user, items[end].req.department) == (user, dept):
                end += 1
            waited = 0.0
            while start < end:
                if self._stop_reason is not None:  # the batch stopped while these waited: no quota for them
                    await self._defer_many([(it.index, it.req) for it in items[start:]])
                    return
                tokens = [it.prep.prompt_tokens + it.prep.max_tokens for it in items[start:end]]
                n, adm = await self._in_db(self.gw.rates.admit_many, user, dept, tokens)
                for it in items[start : start + n]:
                    if waited:
                        it.prep.reasons.append(f"rate.throttled: waited {waited:.1f}s")
                    await self._queue.put(it)
                start += n
                if start < end:
                    delay = min(adm.wait_s, 60.0) + 0.01
                    await asyncio.sleep(delay)
                    waited += delay

    async def _defer_many(self, items: list[tuple[int, Request]]) -> None:
        """Record requests as deferred after the batch stopped, in one transaction."""
        if not items:
            return
        reason = self._stop_reason or "budget: batch stopped"
        results = await self._in_db(self.gw.defer_many, [req for _, req in items], reason)
        for (index, _), result in zip(items, results, strict=True):
            if result.status == Status.DEFERRED:
                self.stats.deferred += 1
            self._emit(index, result)

    # -- stage 2: admission (budget reservation for a group in one transaction) -------------------
    async def _dispatch(self) -> None:
        done = False
        while not done:
            first = await self._queue.get()
            if first is _DONE:
                break
            batch: list[_Item] = [first]
            while len(batch) < self.group_size:
                try:
                    nxt = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if nxt is _DONE:
                    done = True
                    break
                batch.append(nxt)
            self._admitting = len(batch)
            try:
                for _ in batch:
                    await self._window.acquire()
                if self._stop_reason is not None:
                    for _ in batch:
                        self._window.release()
                    await self._defer_many([(it.index, it.req) for it in batch])
                    continue
                await self._admit(batch)
            finally:
                self._admitting = 0

    async def _admit(self, batch: list[_Item]) -> None:
        """Reserve the batch for each item's current model; start the calls of those admitted."""
        ready: list[_Item] = []
        for it in batch:
            if self._next_open_model(it):
                ready.append(it)
            else:
                self._finish_failed(it)  # the writer releases its window slot
        if not ready:
            return
        (admitted, refused, reason), db_ns = await self._in_db(_timed(self._reserve), ready)
        for it in ready:
            it.overhead_ns += db_ns // len(ready)
            it.stages["reserve"] = it.stages.get("reserve", 0) + db_ns // len(ready)
        for it in admitted:
            task = asyncio.create_task(self._call(it))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if refused:
            self._stop_reason = "budget: batch stopped after the budget's hard stop"
            first, *rest = refused
            self.stats.budget_exceeded += 1
            self._window.release()
            self._emit(first.index, reason)
            for _ in rest:
                self._window.release()
            await self._defer_many([(it.index, it.req) for it in rest])

    def _next_open_model(self, it: _Item) -> bool:
        """Advance past models whose circuit is open; False when none is left."""
        while it.model_pos < len(it.prep.models):
            model = it.prep.models[it.model_pos]
            endpoint = self.gw.endpoint(self.gw.policy.models[model])
            if self.gw.breaker.allow(endpoint):
                return True
            it.errors.append(f"circuit_open: {endpoint} ({model} skipped)")
            it.model_pos += 1
        return False

    def _reserve(self, items: list[_Item]) -> tuple[list[_Item], list[_Item], Result | None]:
        """DB thread: one transaction reserves the items' estimates and writes their PENDING rows."""
        gw = self.gw
        admitted: list[_Item] = []
        refused: list[_Item] = []
        refusal: Result | None = None
        groups: dict[tuple[str, str, str, str], list[_Item]] = {}
        for it in items:
            b = it.prep.ctx.base
            groups.setdefault((b["department"], b["user"], b["prompt_name"], b["budget_month"]), []).append(it)
        for (dept, user, prompt, month), group in groups.items():
            if refused:
                refused.extend(group)
                continue
            estimates = [self._estimate(it) for it in group]
            with gw.ledger.transaction() as s:
                n, res = gw.budget.reserve_many(
                    s,
                    department=dept,
                    month=month,
                    user=user,
                    prompt=prompt,
                    items=[(e, it.own_reserved) for e, it in zip(estimates, group, strict=True)],
                )
                if self.run_cost_cap_nano is not None:
                    n, res = self._run_cap(s, group[:n], estimates[:n], n, res)
                inserts: list[dict[str, Any]] = []
                updates: list[dict[str, Any]] = []
                now = datetime.now(UTC)
                for it, estimate in zip(group[:n], estimates[:n], strict=True):
                    it.attempts += 1
                    row = gw.call_fields(it.prep, it.prep.models[it.model_pos], it.attempts)
                    row.update(status=Status.PENDING.value, reserved_nanousd=estimate)
                    row["reasons"] = "; ".join(it.prep.reasons)
                    if it.exists:
                        updates.append(dict(row, _key=it.prep.ctx.key))
                    else:
                        inserts.append(dict(row, request_key=it.prep.ctx.key, created_at=now, updated_at=now))
                    it.exists = True
                    it.own_reserved = estimate
                if inserts:
                    s.connection().execute(insert(_TABLE), inserts)
                if updates:
                    _update_rows(s, updates, now)
                if n < len(group):
                    it = group[n]
                    it.attempts += 1
                    model = it.prep.models[it.model_pos]
                    fields = gw.call_fields(it.prep, model, it.attempts)
                    reasons = [*it.prep.reasons, res.reason]
                    gw.ledger.upsert_call(
                        s,
                        it.prep.ctx.key,
                        **fields,
                        status=Status.BUDGET_EXCEEDED,
                        reserved_nanousd=0,
                        reasons="; ".join(reasons),
                    )
                    refusal = Result(
                        Status.BUDGET_EXCEEDED,
                        it.req.record_key,
                        it.prep.ctx.key,
                        fields["call_id"],
                        it.prep.pv.ref,
                        model,
                        reasons=reasons,
                        findings=it.prep.findings,
                    )
                    log_call(
                        refusal,
                        user=user,
                        department=dept,
                        prompt=prompt,
                        prompt_excerpt=it.prep.prompt_excerpt,
                    )
                    refused.extend(group[n:])
            admitted.extend(group[:n])
        return admitted, refused, refusal

    def _estimate(self, it: _Item) -> int:
        inp, out = self.gw.policy.models[it.prep.models[it.model_pos]].price()
        return cost_nano(inp, out, it.prep.prompt_tokens, it.prep.max_tokens)

    def _run_cap(self, s: Any, group: list[_Item], estimates: list[int], n: int, res: Any) -> tuple[int, Any]:
        from llmops.budget import Reservation

        cap = self.run_cost_cap_nano
        assert cap is not None
        if not group:
            return n, res
        run_id = group[0].req.run_id
        keys = [it.prep.ctx.key for it in group]
        used = int(
            s.execute(
                select(func.coalesce(func.sum(LlmCall.cost_nanousd + LlmCall.reserved_nanousd), 0)).where(
                    LlmCall.run_id == run_id, LlmCall.request_key.not_in(keys)
                )
            ).scalar_one()
        )
        for i, estimate in enumerate(estimates):
            if used + estimate > cap:
                return i, Reservation(
                    False, f"budget.run_cap: the run's cost cap of ${cap / 1e9:.4f} would be passed", cap, used
                )
            used += estimate
        return n, res

    # -- stage 3: the call, within the endpoint's limits --------------------------------------------
    def _limiter(self, model: str) -> EndpointLimiter:
        entry = self.gw.policy.models[model]
        key = f"{self.gw.endpoint(entry)}/{entry.litellm_model}"
        lim = self.limiters.get(key)
        if lim is None:
            rpm, tpm = (entry.rpm, entry.tpm) if self.use_catalog_limits else (None, None)
            lim = self.limiters[key] = EndpointLimiter(
                rpm, tpm, headroom=self.headroom, burst_s=self.burst_s, wave=self.concurrency
            )
        return lim

    async def _send(self, entry: Any, it: _Item) -> Completion:
        provider = self.gw.provider
        timeout = self.gw.settings.request_timeout_s
        acomplete = getattr(provider, "acomplete", None)
        if acomplete is not None:
            completion: Completion = await acomplete(entry, it.prep.messages, it.prep.params, timeout)
            return completion
        if self._sync_calls is None:  # a provider with only a blocking complete(): run it on threads
            self._sync_calls = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llmops-engine-call")
        return await self._loop.run_in_executor(
            self._sync_calls, provider.complete, entry, it.prep.messages, it.prep.params, timeout
        )

    async def _call(self, it: _Item) -> None:
        gw = self.gw
        try:
            while True:
                model = it.prep.models[it.model_pos]
                it.tried = model
                entry = gw.policy.models[model]
                endpoint = gw.endpoint(entry)
                limiter = self._limiter(model)
                charge = it.prep.prompt_tokens + it.prep.max_tokens
                failures = 0
                limited = 0
                error: ProviderError | None = None
                while True:
                    async with self._conc:
                        await limiter.acquire(charge)
                        self.stats.calls += 1
                        try:
                            completion = await self._send(entry, it)
                        except ProviderError as exc:
                            error = exc
                        else:
                            error = None
                        finally:
                            limiter.answered()
                    if error is None:
                        gw.breaker.record_success(endpoint)
                        limiter.observe(completion.headers)
                        break
                    self.stats.retries += 1
                    headers = getattr(error, "headers", None)
                    if error.status_code == 429:
                        self.stats.rate_limited += 1
                        limiter.rate_limited(error.retry_after, headers)
                        limited += 1
                        if limited <= self.max_rate_limit_retries:
                            if error.retry_after is None:
                                await asyncio.sleep(_backoff(min(limited, 6)))
                            continue  # the limiter holds every request of the endpoint until Retry-After
                    elif error.retryable:
                        gw.breaker.record_failure(endpoint)
                        limiter.observe(headers)
                        failures += 1
                        if failures <= gw.settings.max_retries and gw.breaker.allow(endpoint):
                            delay = max(_backoff(failures - 1), error.retry_after or 0.0)  # never before Retry-After
                            await asyncio.sleep(delay)
                            continue
                    break
                if error is None:
                    if it.errors:  # record why earlier models of the chain were passed over
                        it.prep.reasons = [
                            *it.prep.reasons,
                            *[f"fallback: {e}" for e in it.errors],
                            f"route.fallback: answered by {model}",
                        ]
                    # checked and costed with its flush batch, one after another on the database thread:
                    # run alone right after the event loop woke for the response, the same checks took
                    # ~10x the CPU (cold caches) and held up the loop
                    self._settle(_Settle(it, {}, None, (model, completion)))
                    return
                it.errors.append(str(error))
                it.model_pos += 1
                if not error.retryable or not self._next_open_model(it):
                    self._finish_failed(it)
                    return
                # fall back: release this reservation, reserve for the next model
                _, refused, refusal = await self._in_db(self._reserve, [it])
                if refused:
                    self._stop_reason = "budget: batch stopped after the budget's hard stop"
                    self.stats.budget_exceeded += 1
                    assert refusal is not None
                    self._window.release()
                    self._emit(it.index, refusal)
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the record: fail it, keep the run going
            log.exception("engine: record %s failed unexpectedly", it.req.record_key)
            it.errors.append(f"engine: {type(exc).__name__}")
            self._finish_failed(it)

    def _finish_failed(self, it: _Item) -> None:
        self._settle(self._failed(it))

    def _failed(self, it: _Item) -> _Settle:
        """The settlement of a record that ends failed (its errors in ``it.errors``)."""
        reasons = [*it.prep.reasons, *[f"call: {e}" for e in it.errors]]
        model = it.tried or it.prep.models[min(it.model_pos, len(it.prep.models) - 1)]
        fields = {"status": Status.FAILED.value, "reserved_nanousd": 0, "reasons": "; ".join(reasons)}
        result = Result(
            Status.FAILED,
            it.req.record_key,
            it.prep.ctx.key,
            result_call_id(self.gw, it, model) if it.exists else None,
            it.prep.pv.ref,
            model if it.exists else None,
            reasons=reasons,
            findings=it.prep.findings,
        )
        if not it.exists:  # no model was even tried (every circuit open): a plain final row
            return _Settle(it, {"__reject__": True, "reasons": reasons}, result)
        return _Settle(it, fields, result)

    def _check_answer(self, s: _Settle) -> int:
        """DB thread: the output checks and actual cost of an answered call (``Gateway.settlement``); the CPU ns
        they took."""
        assert s.answer is not None
        it, (model, completion) = s.item, s.answer
        t0 = time.thread_time_ns()
        try:
            s.fields, s.result = self.gw.settlement(
                it.prep, model, result_call_id(self.gw, it, model), completion, it.prep.reasons
            )
        except Exception as exc:  # a bug must not lose the record: fail it, keep the run going
            log.exception("engine: record %s failed unexpectedly", it.req.record_key)
            it.errors.append(f"engine: {type(exc).__name__}")
            failed = self._failed(it)
            s.fields, s.result = failed.fields, failed.result
        s.answer = None
        it.overhead_ns += (ns := time.thread_time_ns() - t0)
        it.stages["settle"] = ns
        return ns

    # -- stage 4: settle in batches -----------------------------------------------------------------
    def _settle(self, s: _Settle) -> None:
        self._pending.append(s)
        if len(self._pending) >= self._flush_at:
            self._flush_now.set()

    async def _writer(self) -> None:
        try:
            while True:
                if not self._writer_done:  # at the end, the last batch is written at once
                    try:
                        await asyncio.wait_for(self._flush_now.wait(), self.flush_interval_s)
                    except TimeoutError:
                        pass
                self._flush_now.clear()
                if self._pending:
                    batch, self._pending = self._pending, []
                    checks_ns, db_ns = await self._in_db(_timed(self._write), batch)
                    db_ns -= checks_ns  # the answers' checks: counted per record as "settle"
                    for s in batch:
                        if self.profile and s.item.exists:
                            self.overheads.append(s.item.overhead_ns + db_ns // len(batch))
                            self.stage_overheads.append({**s.item.stages, "write": db_ns // len(batch)})
                        self._window.release()
                        r = s.settled
                        if r.status == Status.OK:
                            self.stats.ok += 1
                        else:
                            self.stats.failed += 1
                        self._emit(s.item.index, r)
                    if time.monotonic() - self._folded_at >= self.fold_interval_s:
                        await self._fold()
                elif self._writer_done:
                    return
        finally:
            await self._fold()
            # budgets whose check was put off: their spending is committed, so check them even when a
            # write failed or the run was cancelled (an alert missed now would wait for the next settle)
            if self._alerts_due:
                try:
                    await self._in_db(self._check_alerts, set(), True)
                except Exception:
                    log.exception("budget alerts could not be checked at the end of the run")

    async def _fold(self) -> None:
        """Fold the pending budget deltas (housekeeping: a failure is logged, the run goes on)."""
        self._folded_at = time.monotonic()
        try:
            await self._in_db(self.gw.ledger.fold_all)
        except Exception:
            log.exception("budget totals could not be folded (they stay exact; the next fold catches up)")

    def _write(self, batch: list[_Settle]) -> int:
        """DB thread: check the batch's answers, settle the batch in one transaction, then alerts and logs.
        Returns the CPU ns the answers' checks took."""
        gw = self.gw
        checks_ns = 0
        for s in batch:
            if s.answer is not None:
                checks_ns += self._check_answer(s)
        now = datetime.now(UTC)
        plain = [s for s in batch if "__reject__" not in s.fields]
        with gw.ledger.transaction() as session:
            by_shape: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for s in plain:
                row = {k: (v.value if isinstance(v, Status) else v) for k, v in s.fields.items()}
                row["_key"] = s.item.prep.ctx.key
                by_shape.setdefault(tuple(sorted(row)), []).append(row)
            for rows in by_shape.values():
                _update_rows(session, rows, now)
        for s in batch:
            if "__reject__" in s.fields:
                gw._final(
                    s.item.prep.ctx,
                    Status.FAILED,
                    s.fields["reasons"],
                    findings=s.item.prep.findings,
                    prompt_excerpt=s.item.prep.prompt_excerpt,
                )
        self.stats.flushes += 1
        self.stats.settled_rows += len(batch)
        scopes = {
            (
                s.item.req.department,
                s.item.req.user,
                s.item.prep.ctx.base["prompt_name"],
                s.item.prep.ctx.base["budget_month"],
            )
            for s in plain
            if s.settled.status == Status.OK or s.fields.get("cost_nanousd")
        }
        self._check_alerts(scopes)
        for s in plain:
            req = s.item.req
            log_call(
                s.settled,
                user=req.user,
                department=req.department,
                prompt=s.item.prep.ctx.base["prompt_name"],
                prompt_excerpt=s.item.prep.prompt_excerpt,
            )
        return checks_ns

    def _check_alerts(self, scopes: set[tuple[str, str, str, str]], final: bool = False) -> None:
        """DB thread: fire the budget alerts of the budgets a settle touched (department, person and prompt
        of one month, checked together) — each at most every ``alert_interval_s`` while the run goes on,
        every one due when it ends (``final``)."""
        self._alerts_due |= scopes
        now = time.monotonic()
        for scope in sorted(self._alerts_due):
            if final or now - self._alerts_checked.get(scope, -math.inf) >= self.alert_interval_s:
                self._alerts_due.discard(scope)
                self._alerts_checked[scope] = now
                self.gw.budget.after_settle(*scope)

    # -- helpers ------------------------------------------------------------------------------------
    def _emit(self, index: int, result: Result) -> None:
        self._sink(index, result)

    async def _in_db(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self._loop.run_in_executor(self._db, fn, *args)


def result_call_id(gw: Gateway, it: _Item, model: str) -> str:
    from llmops.types import call_id_for

    return call_id_for(it.prep.ctx.key, model)


def _timed(fn: Callable[..., Any]) -> Callable[..., tuple[Any, int]]:
    """Run ``fn`` and also return the CPU ns it took on its thread."""

    def run(*args: Any) -> tuple[Any, int]:
        t0 = time.thread_time_ns()
        out = fn(*args)
        return out, time.thread_time_ns() - t0

    return run


def _resolve(gw: Gateway, req: Request) -> tuple[Any, str]:
    pv = gw.library.resolve(req.prompt)
    return pv, req.request_key(pv.ref)


def _existing_rows(gw: Gateway, keys: list[str]) -> dict[str, LlmCall]:
    with gw.ledger.transaction() as s:
        rows = s.scalars(select(LlmCall).where(LlmCall.request_key.in_(keys))).all()
        for r in rows:
            s.expunge(r)
    return {r.request_key: r for r in rows}


def _update_rows(session: Any, rows: list[dict[str, Any]], now: datetime) -> None:
    """One executemany UPDATE … WHERE request_key = ? for rows of the same shape."""
    if not rows:
        return
    columns = [k for k in rows[0] if k != "_key"]
    stmt = (
        update(_TABLE)
        .where(_TABLE.c.request_key == bindparam("b__key"))
        .values({c: bindparam(f"b_{c}") for c in [*columns, "updated_at"]})
    )
    params = [{**{f"b_{k}": v for k, v in r.items()}, "b__key": r["_key"], "b_updated_at": now} for r in rows]
    session.connection().execute(stmt, params)


def _backoff(attempt: int) -> float:
    return min(30.0, 0.25 * (2**attempt)) * random.uniform(0.5, 1.5)


def json_line(result: Result) -> str:
    """A result as one JSON line (the engine's streaming output format)."""
    return json.dumps(
        {
            "record_key": result.record_key,
            "status": str(result.status),
            "output": result.output,
            "model": result.model,
            "prompt_version": result.prompt_version,
            "cost_nanousd": result.cost_nanousd,
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "latency_ms": result.latency_ms,
            "reasons": result.reason,
            "call_id": result.call_id,
            "replayed": result.replayed,
        },
        ensure_ascii=False,
    )
