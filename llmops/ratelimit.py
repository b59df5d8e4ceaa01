"""Client-side rate limits per model endpoint: continuously refilled request and token buckets.

A provider admits a request against two buckets — requests per minute and tokens per minute, where a
request is charged ``prompt_tokens + max_tokens`` at admission — and answers 429 with ``Retry-After``
when either is short. :class:`EndpointLimiter` mirrors those buckets on the client so requests leave
only when the provider will admit them:

* limits come from the policy's model catalog (``rpm``/``tpm``) when known, else they are *discovered*
  from the ``x-ratelimit-limit-*`` headers of the first answers (until then only concurrency bounds);
* the buckets' burst capacity and current level follow ``x-ratelimit-remaining-*`` and
  ``x-ratelimit-reset-*`` (capacity = remaining + reset × rate), so a provider with a smaller burst, or
  another client sharing the key, slows us down instead of earning 429s;
* a 429 blocks the endpoint until its ``Retry-After`` has passed (never earlier) and empties the
  buckets, so the endpoint restarts at the refill rate instead of in a storm;
* waiters are served first come, first served (one lock per endpoint), so there is no thundering herd;
* the first request to an endpoint goes ahead alone (a probe) and the others wait for its answer when a
  limit is unknown or tight: the answer brings the headers (the provider's real level) before the first
  wave leaves, and the first call's lazy imports and connection set-up, which can block the event loop for
  seconds, are over — a burst admitted while they ran reached the provider bunched up with the next one
  and drew 429s (waiting only 50 ms of loop time past the probe did not prevent it). Known limits whose
  burst holds two whole waves of the client (``wave`` requests — its concurrency — at the first request's
  charge) cannot be overrun by such bunching, so there the first wave leaves at once: the probe would cost
  one full latency of every other slot (2.5 % of a 640-call run at 16 slots and 0.48 s per call).

Requests reach the provider with network and scheduling jitter, so two that left 1/rate apart may arrive
together. The client therefore keeps ``jitter_s`` (default 0.25 s) of the provider's bucket unused: its
own burst capacity and level stay that much below the provider's. That slack costs a one-off fraction of
a second of throughput, not a share of it; rates run at ``headroom`` (default 0.99) of the limit.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_duration(value: str | None) -> float | None:
    """``x-ratelimit-reset-*`` values: ``1.5s``, ``6m0s``, ``20ms``, or bare seconds."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    m = _DURATION.match(value)
    if not m or not any(m.groups()):
        return None
    h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


class TokenBucket:
    """A continuously refilled bucket: ``rate`` per second, at most ``capacity`` banked."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self._clock = clock
        self._stamp = clock()

    def refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is now)."""
        self.refill()
        need = min(amount, self.capacity)  # a request larger than the burst waits for a full bucket
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def clamp(self, level: float) -> None:
        self.refill()
        self.level = min(self.level, level)


@dataclass
class LimiterStats:
    admitted: int = 0
    rate_limited: int = 0  # 429 answers seen
    waited_s: float = 0.0  # total time requests waited for the buckets or a Retry-After


class EndpointLimiter:
    """The RPM/TPM buckets of one model endpoint, known or discovered."""

    def __init__(
        self,
        rpm: int | None = None,
        tpm: int | None = None,
        *,
        headroom: float = 0.99,
        burst_s: float = 1.0,
        jitter_s: float = 0.25,
        wave: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.headroom = headroom
        self.wave = wave  # the most requests the client has in flight to the endpoint (None: unknown)
        self.burst_s = burst_s
        self.jitter_s = jitter_s
        self._clock = clock
        self.source = "catalog" if (rpm or tpm) else "unknown"
        self.requests: TokenBucket | None = None
        self.tokens: TokenBucket | None = None
        self.rpm: int | None = None
        self.tpm: int | None = None
        if rpm:
            self._set_requests(rpm)
        if tpm:
            self._set_tokens(tpm)
        self.blocked_until = 0.0
        self.stats = LimiterStats()
        self._lock = asyncio.Lock()
        self._probe_sent = False
        self._probe_done = asyncio.Event()

    def _set_requests(self, rpm: int) -> None:
        self.rpm = rpm
        self.requests = self._bucket(self.requests, rpm)

    def _set_tokens(self, tpm: int) -> None:
        self.tpm = tpm
        self.tokens = self._bucket(self.tokens, tpm)

    def _bucket(self, bucket: TokenBucket | None, per_minute: int) -> TokenBucket:
        """A new bucket for a limit of ``per_minute``, or the existing one moved to that rate."""
        rate = per_minute / 60 * self.headroom
        if bucket is None:
            return TokenBucket(rate, self._capacity(rate * self.burst_s, rate), self._clock)
        bucket.refill()
        bucket.rate = rate
        return bucket

    def _slack(self, rate: float) -> float:
        return max(1.0, rate * self.jitter_s)

    def _capacity(self, provider_capacity: float, rate: float) -> float:
        """Our burst: the provider's, less the slack that absorbs arrival jitter."""
        return max(1.0, provider_capacity - self._slack(rate))

    def wait_time(self, tokens: int) -> float:
        wait = max(0.0, self.blocked_until - self._clock())
        if self.requests is not None:
            wait = max(wait, self.requests.wait_for(1))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_for(tokens))
        return wait

    async def acquire(self, tokens: int) -> None:
        """Wait (first come, first served) until one request of ``tokens`` may leave, and charge it."""
        async with self._lock:
            started = self._clock()
            if not self._probe_done.is_set():
                if self._probe_sent:
                    await self._probe_done.wait()
                elif self._needs_probe(tokens):
                    self._probe_sent = True  # this request is the probe; the others wait for its answer
                else:
                    self._probe_done.set()
            while True:
                wait = self.wait_time(tokens)
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self.requests is not None:
                self.requests.take(1)
            if self.tokens is not None:
                self.tokens.take(tokens)
            self.stats.admitted += 1
            self.stats.waited_s += self._clock() - started

    def _needs_probe(self, tokens: int) -> bool:
        """Whether the first wave must wait for one answer: a limit unknown (RPM or TPM — the one the catalog
        leaves out may be the provider's tighter one), the client's wave unknown, or a bucket whose burst
        does not hold two waves at this charge."""
        if self.requests is None or self.tokens is None or self.wave is None:
            return True
        return self.requests.capacity < 2 * self.wave or self.tokens.capacity < 2 * self.wave * tokens

    def answered(self) -> None:
        """A request of this endpoint came back (any outcome): the probe, if it was, is over."""
        self._probe_done.set()

    def observe(self, headers: Mapping[str, str] | None) -> None:
        """Learn limits, burst capacity and the current level from ``x-ratelimit-*`` headers."""
        if not headers:
            return
        for kind in ("requests", "tokens"):
            limit = _int(headers.get(f"x-ratelimit-limit-{kind}"))
            remaining = _int(headers.get(f"x-ratelimit-remaining-{kind}"))
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{kind}"))
            current = self.rpm if kind == "requests" else self.tpm
            if limit and (current is None or limit < current):  # discovered, or the catalog was too generous
                (self._set_requests if kind == "requests" else self._set_tokens)(limit)
                if self.source == "unknown":
                    self.source = "headers"
            bucket = self.requests if kind == "requests" else self.tokens
            if bucket is None or remaining is None:
                continue
            slack = self._slack(bucket.rate)
            if reset is not None and limit:
                # the provider refills at limit/60 per second and is full after `reset` seconds
                bucket.capacity = self._capacity(remaining + reset * limit / 60, bucket.rate)
            bucket.clamp(remaining - slack)

    def rate_limited(self, retry_after: float | None, headers: Mapping[str, str] | None = None) -> None:
        """A 429: block until Retry-After has passed and restart from empty buckets."""
        self.stats.rate_limited += 1
        self.observe(headers)
        now = self._clock()
        if retry_after is not None:
            self.blocked_until = max(self.blocked_until, now + retry_after)
        for bucket in (self.requests, self.tokens):
            if bucket is not None:
                bucket.clamp(0.0)


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None
