"""The simulator's HTTP server (aiohttp): ``/v1/chat/completions``, ``/v1/models``, ``/health``.

Limits per model are enforced like a provider: a request is admitted against continuously refilled
request and token buckets (tokens charged = prompt tokens + max_tokens); when refused the answer is
429 with ``Retry-After`` / ``retry-after-ms`` and ``x-ratelimit-*`` headers. A bucket holds
``bucket_seconds`` of its refill (60 s: a full minute of burst; less models providers that enforce
limits over shorter windows). Faults (5xx, timeouts) are injected at configured rates from a seeded
generator, so runs are reproducible.

``/health`` also reports what a benchmark needs to judge a client: ``early_retries`` (a request that
arrives again — same model and messages — before the ``Retry-After`` it was given) and ``billed``, a
histogram ``model:prompt_tokens:completion_tokens → count`` of the answered (billable) calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from llmops.simulator.behaviour import MODELS, SimModel, answer
from llmops.tokens import count_messages, count_text, truncate

RECEIVED: web.AppKey[list[list[dict[str, str]]]] = web.AppKey("received")


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    api_key: str | None = None  # when set, requests must carry it as a Bearer token
    latency_scale: float = 1.0
    rpm: int | None = None  # overrides every model's default
    tpm: int | None = None
    error_rate: float = 0.0  # share of requests answered 500/503
    timeout_rate: float = 0.0  # share of requests that hang for ``hang_seconds``
    hang_seconds: float = 120.0
    bucket_seconds: float = 60.0  # burst capacity of the RPM/TPM buckets, in seconds of refill
    seed: int = 7
    send_ratelimit_headers: bool = True
    model_limits: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (rpm, tpm)
    model_error_rates: dict[str, float] = field(default_factory=dict)  # name -> error rate (overrides)
    record_requests: bool = False  # keep received messages in memory (tests: "what did the provider see?")


class _Bucket:
    """Continuously refilled bucket: capacity per minute, refill rate capacity/60 per second."""

    def __init__(self, per_minute: int, seconds: float = 60.0) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * seconds)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        self._refill()
        if amount > self.capacity:
            return math.inf
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def reset_seconds(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


class _Limits:
    def __init__(self, rpm: int, tpm: int, seconds: float = 60.0) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.requests = _Bucket(rpm, seconds)
        self.tokens = _Bucket(tpm, seconds)

    def admit(self, tokens: int) -> float:
        """0 if admitted (and charged), else seconds to wait."""
        wait = max(self.requests.wait_for(1), self.tokens.wait_for(tokens))
        if wait == 0:
            self.requests.take(1)
            self.tokens.take(tokens)
        return wait

    def headers(self) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(self.rpm),
            "x-ratelimit-remaining-requests": str(max(0, int(self.requests.level))),
            "x-ratelimit-reset-requests": f"{self.requests.reset_seconds():.3f}s",
            "x-ratelimit-limit-tokens": str(self.tpm),
            "x-ratelimit-remaining-tokens": str(max(0, int(self.tokens.level))),
            "x-ratelimit-reset-tokens": f"{self.tokens.reset_seconds():.3f}s",
        }


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "type": kind, "code": status}}, status=status, headers=headers
    )


def build_app(config: SimConfig) -> web.Application:
    rng = random.Random(config.seed)
    limits: dict[str, _Limits] = {}
    stats = {"requests": 0, "ok": 0, "rate_limited": 0, "errors": 0, "timeouts": 0, "early_retries": 0}
    billed: dict[str, int] = {}
    not_before: dict[str, float] = {}  # request fingerprint -> the Retry-After deadline it was given
    received: list[list[dict[str, str]]] = []

    def limits_for(model: SimModel) -> _Limits:
        if model.name not in limits:
            rpm, tpm = config.model_limits.get(
                model.name, (config.rpm or model.default_rpm, config.tpm or model.default_tpm)
            )
            limits[model.name] = _Limits(rpm, tpm, config.bucket_seconds)
        return limits[model.name]

    async def completions(request: web.Request) -> web.StreamResponse:
        if config.api_key and request.headers.get("Authorization") != f"Bearer {config.api_key}":
            return _error(401, "invalid API key", "authentication_error")
        try:
            body: dict[str, Any] = await request.json()
        except ValueError:
            return _error(400, "request body is not JSON", "invalid_request_error")
        name = str(body.get("model", "")).removeprefix("openai/")
        model = MODELS.get(name)
        if model is None:
            return _error(404, f"model {name!r} does not exist", "not_found_error")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list", "invalid_request_error")
        max_tokens = int(body.get("max_tokens") or body.get("max_completion_tokens") or 512)
        if config.record_requests:
            received.append(messages)
        stats["requests"] += 1
        fingerprint = hashlib.sha1(
            json.dumps([name, max_tokens, messages], sort_keys=True).encode(), usedforsecurity=False
        ).hexdigest()
        deadline = not_before.pop(fingerprint, None)
        if deadline is not None and time.monotonic() < deadline:
            stats["early_retries"] += 1
        prompt_tokens = count_messages(messages)
        lim = limits_for(model)
        wait = lim.admit(prompt_tokens + max_tokens)
        if wait > 0:
            stats["rate_limited"] += 1
            retry = 60.0 if math.isinf(wait) else wait
            not_before[fingerprint] = time.monotonic() + (int(retry * 1000) + 1) / 1000
            headers = {"retry-after": str(max(1, math.ceil(retry))), "retry-after-ms": str(int(retry * 1000) + 1)}
            if config.send_ratelimit_headers:
                headers.update(lim.headers())
            return _error(429, f"rate limit reached for {name}", "rate_limit_error", headers)
        roll = rng.random()
        if roll < config.timeout_rate:
            stats["timeouts"] += 1
            await asyncio.sleep(config.hang_seconds)
            return _error(504, "upstream timeout", "timeout")
        error_rate = config.model_error_rates.get(name, config.error_rate)
        if roll < config.timeout_rate + error_rate:
            stats["errors"] += 1
            return _error(
                503 if roll < config.timeout_rate + error_rate / 2 else 500,
                "simulated server error",
                "server_error",
            )
        text = answer(model, messages)
        text, cut = truncate(text, max_tokens)
        completion_tokens = count_text(text)
        delay = (model.latency_ms + model.ms_per_token * completion_tokens) * config.latency_scale / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        stats["ok"] += 1
        usage_key = f"{name}:{prompt_tokens}:{completion_tokens}"
        billed[usage_key] = billed.get(usage_key, 0) + 1
        headers = lim.headers() if config.send_ratelimit_headers else {}
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length" if cut else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            },
            headers=headers,
        )

    async def models(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": "llmops-simulator"} for m in MODELS],
            }
        )

    async def health(_request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **stats, "billed": billed})

    app = web.Application(client_max_size=8 * 1024 * 1024)
    app[RECEIVED] = received
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    return app


def serve(config: SimConfig) -> None:
    web.run_app(build_app(config), host=config.host, port=config.port, print=None, access_log=None)


class _Running:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        runner: web.AppRunner,
        thread: threading.Thread,
        port: int,
        received: list[list[dict[str, str]]],
    ) -> None:
        self.loop, self.runner, self.thread, self.port = loop, runner, thread, port
        self._received = received

    @property
    def received(self) -> list[list[dict[str, str]]]:
        """Messages the simulator received (only with ``record_requests=True``)."""
        return list(self._received)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def run_in_thread(config: SimConfig) -> _Running:
    """Start the simulator on a background thread (port 0 picks a free port). For tests and tools."""
    loop = asyncio.new_event_loop()
    ready: dict[str, Any] = {}
    started = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        app = build_app(config)
        ready["received"] = app[RECEIVED]
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, config.host, config.port)
        loop.run_until_complete(site.start())
        ready["runner"] = runner
        ready["port"] = runner.addresses[0][1]
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="llmops-simulator", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("simulator did not start")
    return _Running(loop, ready["runner"], thread, ready["port"], ready["received"])
