"""The call stage: litellm, reached over HTTP exactly as for a real provider.

litellm is imported lazily (it takes ~6 s) with its cost map forced local (no network). Vendor
exceptions are wrapped in :class:`~llmops.errors.ProviderError` with ``retryable`` and
``retry_after`` set; API keys never appear in messages. :meth:`LiteLLMProvider.acomplete` is the
asyncio twin used by the batch engine; it also returns the provider's ``x-ratelimit-*`` headers (on
success and on errors) so the engine can learn the limits.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from llmops.errors import ProviderError
from llmops.policy import ModelEntry

KeyResolver = Callable[[ModelEntry], str | None]


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    finish_reason: str | None
    headers: Mapping[str, str] | None = None  # rate-limit headers of the response (acomplete only)


class ProviderCallError(ProviderError):
    """A failed call, with the response headers (``x-ratelimit-*``, ``retry-after``) when there were any."""

    headers: Mapping[str, str] | None = None


@functools.cache
def litellm_module() -> Any:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import logging

    import litellm

    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.WARNING)
    litellm.suppress_debug_info = True
    litellm.telemetry = False
    litellm.drop_params = True
    return litellm


def _retry_after(exc: Exception) -> float | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        resp = getattr(exc, "response", None)
        headers = getattr(resp, "headers", None)
    if not headers:
        return None
    for name in ("retry-after-ms", "retry-after"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value)
        except ValueError:
            continue
        return seconds / 1000 if name.endswith("-ms") else seconds
    return None


class LiteLLMProvider:
    def __init__(self, simulator_url: str, simulator_key: str, key_resolver: KeyResolver | None = None) -> None:
        self.simulator_url = simulator_url
        self.simulator_key = simulator_key
        self.key_resolver = key_resolver

    def _credentials(self, entry: ModelEntry) -> dict[str, str]:
        if entry.provider == "simulator":
            return {"api_base": entry.api_base or self.simulator_url, "api_key": self.simulator_key}
        creds: dict[str, str] = {}
        if entry.api_base:
            creds["api_base"] = entry.api_base
        key = self.key_resolver(entry) if self.key_resolver else None
        if key is None and entry.api_key_env:
            key = os.environ.get(entry.api_key_env)
        if key is None and (entry.api_key_env or entry.airflow_conn_id):
            where = entry.api_key_env or f"the Airflow connection {entry.airflow_conn_id}"
            raise ProviderError(
                f"model {entry.litellm_model} needs an API key and none was found",
                f"set {where}",
            )
        if key:
            creds["api_key"] = key
        return creds

    def _call_kwargs(
        self, entry: ModelEntry, messages: list[dict[str, str]], params: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        """One litellm call's arguments, the same for the blocking and the async call: retries are ours."""
        return {
            "model": entry.litellm_model,
            "messages": messages,
            "timeout": timeout,
            "num_retries": 0,
            "max_retries": 0,
            **self._credentials(entry),
            **params,
        }

    def complete(
        self, entry: ModelEntry, messages: list[dict[str, str]], params: dict[str, Any], timeout: float
    ) -> Completion:
        litellm = litellm_module()
        kwargs = self._call_kwargs(entry, messages, params, timeout)
        started = time.perf_counter()
        try:
            resp = litellm.completion(**kwargs)
        except Exception as exc:
            raise _wrap(exc, entry) from None
        return _completion(resp, started, None)

    async def acomplete(
        self, entry: ModelEntry, messages: list[dict[str, str]], params: dict[str, Any], timeout: float
    ) -> Completion:
        """One call through ``litellm.acompletion``; the result carries the response's rate-limit headers."""
        litellm = litellm_module()
        kwargs = self._call_kwargs(entry, messages, params, timeout)
        started = time.perf_counter()
        try:
            resp = await litellm.acompletion(**kwargs)
        except Exception as exc:
            err = _wrap(exc, entry)
            err.headers = _headers_of(exc)
            raise err from None
        hidden = getattr(resp, "_hidden_params", None) or {}
        return _completion(resp, started, hidden.get("additional_headers"))


def _completion(resp: Any, started: float, headers: Mapping[str, str] | None) -> Completion:
    latency = int((time.perf_counter() - started) * 1000)
    choice = resp.choices[0]
    usage = getattr(resp, "usage", None)
    return Completion(
        text=choice.message.content or "",
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        latency_ms=latency,
        finish_reason=getattr(choice, "finish_reason", None),
        headers=headers,
    )


def _headers_of(exc: Exception) -> Mapping[str, str] | None:
    headers = getattr(exc, "litellm_response_headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    return dict(headers) if headers else None


def _wrap(exc: Exception, entry: ModelEntry) -> ProviderCallError:
    litellm = litellm_module()
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    retryable_types = tuple(
        t
        for t in (
            getattr(litellm, "RateLimitError", None),
            getattr(litellm, "Timeout", None),
            getattr(litellm, "APIConnectionError", None),
            getattr(litellm, "InternalServerError", None),
            getattr(litellm, "ServiceUnavailableError", None),
        )
        if isinstance(t, type)
    )
    retryable = isinstance(exc, retryable_types) or status in (408, 409, 429, 500, 502, 503, 504)
    if isinstance(exc, getattr(litellm, "BadRequestError", ())) and status == 400:
        retryable = False
    return ProviderCallError(
        f"{entry.litellm_model}: {name}" + (f" (HTTP {status})" if status else ""),
        None if retryable else "check the model entry and request parameters",
        retryable=retryable,
        retry_after=_retry_after(exc),
        status_code=status,
    )
